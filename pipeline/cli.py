"""`lessmore` command line: wiring only.

    lessmore run configs/tiny.yaml [--set stages.sample.k=8]
    lessmore validate configs/tiny.yaml
    lessmore config-reference [--write]
    lessmore audit-verifier tests/data/verifier_labelled.jsonl --verifier math
    lessmore theory phase --out phase/
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Modules that add their own sub-commands through add_cli(subparsers).
COMMAND_MODULES = ("verifiers.audit", "pipeline.theory_cli", "pipeline.sweep_cli")
# Where `lessmore config-reference --write` puts the reference, relative to the repository root.
REFERENCE_PATH = "docs/config.md"


def _sweep_hint(path: str) -> str:
    """A pointer to `lessmore sweep` when the file is a sweep config (it has pool and grid blocks)."""
    from pathlib import Path

    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ""
    if isinstance(data, dict) and "pool" in data and "grid" in data:
        return f"\n  {path} is a sweep config: run `lessmore sweep {path}` (check it with --validate)"
    return ""


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.runner import check_columns

    try:
        cfg = load_config(args.config, args.set)
        check_columns(cfg)
    except ConfigError as e:
        print(f"error: {e}{_sweep_hint(args.config)}", file=sys.stderr)
        return 2
    print(f"{args.config}: valid ({', '.join(name for name, _ in cfg.stages)})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config, with_export_overwrite

    try:
        cfg = load_config(args.config, args.set)
        if args.overwrite:
            cfg = with_export_overwrite(cfg)
        from pipeline.runner import check_columns

        check_columns(cfg)
    except ConfigError as e:
        print(f"error: {e}{_sweep_hint(args.config)}", file=sys.stderr)
        return 2
    from pipeline.session import run_all

    try:
        return run_all(cfg)
    except (ConfigError, FileExistsError) as e:  # FileExistsError: export.path exists and --overwrite was not given
        print(f"error: {e}", file=sys.stderr)
        return 2


def config_reference() -> str:
    """The config reference (``docs/config.md``): the run config's keys and the sweep config's."""
    from pipeline.reference import reference_markdown
    from pipeline.sweep import SweepConfig  # the one place the reference names the sweep's config module

    return reference_markdown(sweep=SweepConfig)


def _cmd_reference(args: argparse.Namespace) -> int:
    text = config_reference()
    out = args.out or (REFERENCE_PATH if args.write else None)
    if out is None:
        sys.stdout.write(text)
        return 0
    from pathlib import Path

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lessmore", description="Curate LLM reasoning data, and measure when less is more.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in (
        ("run", _cmd_run, "run a config: sample, verify, score, curate, export (and fine-tune, evaluate)"),
        ("validate", _cmd_validate, "check a config without running it (exit 2 when invalid)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("config", help="YAML config file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set stages.sample.k=8 (repeatable)")
        p.set_defaults(func=func)
        if name == "run":
            p.add_argument("--overwrite", action="store_true",
                           help="let export replace an existing stages.export.path directory")
    p = sub.add_parser("config-reference", help="print the config reference (every key, type, default)")
    p.add_argument("--write", action="store_true", help=f"write it to {REFERENCE_PATH} (run from the repository root)")
    p.add_argument("--out", metavar="PATH", help="write it to PATH")
    p.set_defaults(func=_cmd_reference)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`lessmore` command line: wiring only.

    lessmore run configs/tiny.yaml [--set stages.sample.k=8]
    lessmore validate configs/tiny.yaml
    lessmore config-reference [--write]
    lessmore audit-verifier tests/data/verifier_labelled.jsonl --verifier math
    lessmore theory phase --out phase/
    lessmore sweep configs/phase_tiny.yaml

Every sub-command is named in ``build_parser``; the command modules (``verifiers.audit``,
``pipeline.theory.commands``, ``pipeline.sweep.commands``) add its arguments and run it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Light modules: their heavy imports (numpy, scipy, matplotlib, Ray, torch) happen when a command runs.
from pipeline.sweep import commands as sweep_commands
from pipeline.theory import commands as theory_commands
from verifiers import audit

# Set once, in main, for every command (no command module sets any): Ray without token auth or usage statistics.
ENVIRONMENT_DEFAULTS = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# The libraries whose version ranges pyproject.toml bounds (their APIs move fast); `lessmore --version` shows them.
PINNED_LIBRARIES = ("ray", "transformers", "trl", "datasets", "torch", "vllm")
# Where `lessmore config-reference --write` puts the reference, relative to the repository root.
REFERENCE_PATH = "docs/config.md"


def _sweep_hint(path: str) -> str:
    """A pointer to `lessmore sweep` when the file is a sweep config (it has pool and grid blocks)."""
    from pathlib import Path

    from pipeline.config import ConfigError, parse_yaml

    try:
        data = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ConfigError):
        return ""
    if isinstance(data, dict) and "pool" in data and "grid" in data:
        return f"\n  {path} is a sweep config: run `lessmore sweep {path}` (check it with --validate)"
    return ""


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.models import ModelError, check_models
    from pipeline.runner import check_columns

    try:
        cfg = load_config(args.config, args.set)
        check_columns(cfg)
        check_models(cfg)
    except (ConfigError, ModelError) as e:
        print(f"error: {e}{_sweep_hint(args.config)}", file=sys.stderr)
        return 2
    print(f"{args.config}: valid ({', '.join(name for name, _ in cfg.stages)})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config, with_export_overwrite
    from pipeline.models import ModelError, check_models

    try:
        cfg = load_config(args.config, args.set)
        if args.overwrite:
            cfg = with_export_overwrite(cfg)
        from pipeline.runner import check_columns

        check_columns(cfg)
        check_models(cfg)  # on the driver, before Ray starts: a model that cannot load fails in seconds
    except (ConfigError, ModelError) as e:
        print(f"error: {e}{_sweep_hint(args.config)}", file=sys.stderr)
        return 2
    from pipeline.session import run_all
    from stages.rules import RuleError

    try:
        return run_all(cfg)
    # FileExistsError: export.path exists and --overwrite was not given; RuleError: the curation cannot run on the
    # pool it got (a budget that keeps nothing, a column the rule needs)
    except (ConfigError, ModelError, FileExistsError, RuleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def config_reference() -> str:
    """The config reference (``docs/config.md``): the run config's keys and the sweep config's."""
    from pipeline.reference import reference_markdown
    from pipeline.sweep.config import SweepConfig  # the one place the reference names the sweep's config module

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


def version_text() -> str:
    """``lessmore 0.1.0 (ray 2.60.0, ...)``: this distribution's version and the installed versions of the libraries
    whose APIs it is pinned to (read from package metadata; nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in PINNED_LIBRARIES)
    return f"lessmore {installed('lessmore')} ({libraries})"


class _Version(argparse.Action):
    """``--version``: argparse's own action would wrap the line (and read the versions for every command)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``lessmore`` parser, every sub-command named here; ``args.func(args)`` runs the chosen one and returns its
    exit code."""
    parser = argparse.ArgumentParser(prog="lessmore", description="Curate LLM reasoning data, and measure when less is more.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    parser.add_argument("--version", action=_Version,
                        help="print the version of lessmore and of the libraries it is pinned to, and exit")
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

    p = sub.add_parser(
        "audit-verifier",
        help="measure a verifier on a labelled JSONL set (accuracy, FP/FN, latency) against raw math-verify",
        description=audit.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_arguments(p)
    p.set_defaults(func=audit.run_cli)

    theory = sub.add_parser(
        "theory",
        help="predictions of the curation theory (phase diagrams, advice, collapse loop)",
        description="Teacher-student theory of data curation: when does keeping less (hard or easy) data win?",
    )
    theory_sub = theory.add_subparsers(dest="theory_command", metavar="{phase,advise,collapse}", required=True)
    p = theory_sub.add_parser(
        "phase",
        help="phase diagrams over (n/d, generator quality): best keep fraction, its gain, winning rule",
        description="Writes phase.csv and PNG heatmaps of the best keep fraction p, E(best p)/E(p=1) per rule, "
        "the keep-hard vs keep-easy winner map, and the infinite-data limit F(q) of Theorem 2.",
    )
    theory_commands.add_phase_arguments(p)
    p.set_defaults(func=theory_commands.run_phase)
    p = theory_sub.add_parser(
        "advise",
        help="recommended rule and keep fraction for a pool, from measured accuracies",
        description="Maps accuracies to cosines by rho = cos(pi * (1 - accuracy)) and picks the rule and keep "
        "fraction with the lowest predicted error.",
    )
    theory_commands.add_advise_arguments(p)
    p.set_defaults(func=theory_commands.run_advise)
    p = theory_sub.add_parser(
        "collapse",
        help="self-training loop: error per round for all data, label-agnostic and label-aware rules",
        description="Each round relabels a fresh pool with the previous round's model, curates it with the fixed "
        "oracle and retrains. Writes collapse.png and collapse.csv.",
    )
    theory_commands.add_collapse_arguments(p)
    p.set_defaults(func=theory_commands.run_collapse)

    p = sub.add_parser(
        "sweep",
        help="measure the size x quality phase transition: shared pool, Ray Tune grid, report with the theory",
        description="Builds one pool per generator, runs the grid of curate -> finetune -> evaluate trials under "
        "Ray Tune (a rerun resumes; finished trials are not computed again) and writes run_dir/report/.",
    )
    sweep_commands.add_arguments(p)
    p.set_defaults(func=sweep_commands.run_sweep_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``lessmore ARGS``: parse, set the environment defaults, run the command; returns its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

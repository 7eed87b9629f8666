"""``lessmore sweep``: the phase-transition sweep and its report. Wiring only; the work is in :mod:`pipeline.sweep`.

    lessmore sweep configs/phase_tiny.yaml                 # pool, trials under Ray Tune, report (resumes)
    lessmore sweep configs/phase_smoke.yaml --set output_root=/tmp/runs
    lessmore sweep configs/phase_gpu.yaml --validate       # check a config without running it
    lessmore sweep configs/phase_tiny.yaml --report-only   # rewrite the report from the trials on disk
"""

from __future__ import annotations

import argparse
import sys


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``sweep`` on an argparse ``subparsers`` object; ``args.func(args)`` runs it and returns the exit
    code (0: every trial finished; 1: some failed, see the report; 2: invalid config)."""
    sweep = subparsers.add_parser(
        "sweep",
        help="measure the size x quality phase transition: shared pool, Ray Tune grid, report with the theory",
        description="Builds one pool per generator, runs the grid of curate -> finetune -> evaluate trials under "
        "Ray Tune (a rerun resumes; finished trials are not computed again) and writes run_dir/report/.",
    )
    sweep.add_argument("config", help="sweep YAML, e.g. configs/phase_tiny.yaml")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set grid.seeds=[0] (repeatable)")
    sweep.add_argument("--validate", action="store_true", help="check the config and list the trials; run nothing")
    sweep.add_argument("--report-only", action="store_true",
                       help="rewrite run_dir/report/ from the trials on disk; run nothing")
    sweep.set_defaults(func=run_sweep_command)
    return sweep


def run_sweep_command(args: argparse.Namespace) -> int:
    """Validate, then run the sweep (or list its trials with --validate)."""
    import os

    from pipeline.config import ConfigError
    from pipeline.sweep import expand_grid, load_sweep_config

    for name in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"):
        os.environ.setdefault(name, "disabled" if name == "RAY_AUTH_MODE" else "0")
    try:
        cfg = load_sweep_config(args.config, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    specs = expand_grid(cfg)
    if args.validate:
        loops = sum(s["kind"] == "loop" for s in specs)
        print(f"{args.config}: valid; {len(specs) - loops} grid trials + {loops} loop chains "
              f"({cfg.loop.rounds} rounds), {len(cfg.pool.generators)} generator pool(s) -> {cfg.resolved_run_dir}")
        return 0
    from pipeline.sweep import rewrite_report, run_sweep

    if args.report_only:
        from rich.console import Console

        try:
            summary = rewrite_report(cfg, console=Console(stderr=True))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        summary = run_sweep(cfg)
    print(f"report: {summary['report']}")
    return 0 if not summary["failed"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.sweep_cli CONFIG [--set ...]``: the same as ``lessmore sweep``."""
    import logging

    parser = argparse.ArgumentParser(prog="lessmore")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

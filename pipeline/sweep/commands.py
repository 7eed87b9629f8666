"""``lessmore sweep``: the phase-transition sweep and its report. Wiring only; the work is in :mod:`pipeline.sweep`
(``run_sweep`` and ``rewrite_report`` in :mod:`pipeline.sweep.run`), and ``pipeline.cli`` names the command.

    lessmore sweep configs/phase_tiny.yaml                 # pool, trials under Ray Tune, report (resumes)
    lessmore sweep configs/phase_smoke.yaml --set output_root=/tmp/runs
    lessmore sweep configs/phase_gpu.yaml --validate       # check a config without running it
    lessmore sweep configs/phase_tiny.yaml --report-only   # rewrite the report from the trials on disk
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(sweep: argparse.ArgumentParser) -> None:
    """The arguments of ``lessmore sweep``."""
    sweep.add_argument("config", help="sweep YAML, e.g. configs/phase_tiny.yaml")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set grid.seeds=[0] (repeatable)")
    sweep.add_argument("--validate", action="store_true", help="check the config and list the trials; run nothing")
    sweep.add_argument("--report-only", action="store_true",
                       help="rewrite run_dir/report/ from the trials on disk; run nothing")


def run_sweep_command(args: argparse.Namespace) -> int:
    """Validate, then run the sweep (or list its trials with --validate). Returns the exit code: 0 every trial
    finished; 1 some failed (see the report); 2 invalid config."""
    from pipeline.config import ConfigError
    from pipeline.models import ModelError, check_models
    from pipeline.sweep.config import expand_grid, load_sweep_config

    try:
        cfg = load_sweep_config(args.config, args.set)
        check_models(cfg)  # every generator and the student, before Ray starts
    except (ConfigError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    specs = expand_grid(cfg)
    if args.validate:
        loops = sum(s["kind"] == "loop" for s in specs)
        print(f"{args.config}: valid; {len(specs) - loops} grid trials + {loops} loop chains "
              f"({cfg.loop.rounds} rounds), {len(cfg.pool.generators)} generator pool(s) -> {cfg.resolved_run_dir}")
        return 0
    from pipeline.sweep.run import rewrite_report, run_sweep

    if args.report_only:
        from rich.console import Console

        try:
            summary = rewrite_report(cfg, console=Console(stderr=True))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        try:
            summary = run_sweep(cfg)
        except ConfigError as e:  # a pool's run directory in use or not a run; a tracker of tune.callbacks that cannot start
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"report: {summary['report']}")
    return 0 if not summary["failed"] else 1

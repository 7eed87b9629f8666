"""The whole sweep: pool -> reference evaluation -> trials under Ray Tune -> results table -> report; and the report
alone, rewritten from the trials on disk."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pipeline.config import ConfigError, redact_secrets
from pipeline.sweep.config import SweepConfig, expand_grid
from pipeline.sweep.layout import CONFIG_FILE, REFERENCE_DIR, REPORT_DIR, TIMING_FILE, TRIALS_FILE
from pipeline.sweep.pool import build_pools, read_manifest, reference_evaluation
from pipeline.sweep.report import write_report
from pipeline.sweep.trials import TrialContext, results_table, run_trials


def run_sweep(cfg: SweepConfig, console=None) -> dict[str, Any]:
    """Pool -> reference evaluation -> trials under Ray Tune -> results table -> report. Returns a summary dict
    with ``run_dir``, ``report`` (the report.md path), ``trials``, ``ok``, ``failed`` and ``seconds``."""
    from rich.console import Console

    from pipeline.sweep.callbacks import tracker_callbacks  # imports Ray Tune

    console = console or Console(stderr=True)
    started = time.perf_counter()
    load_before = os.getloadavg()
    run_dir = cfg.resolved_run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # Only what was set: blocks that refuse a key when it is given (evaluate.heldout.split, a linear sweep's
    # finetune) read back the same config in the trial workers.
    # Credentials never reach the disk (load_sweep_config refuses them; this covers a config built in code).
    saved = redact_secrets(cfg.model_dump(mode="json", exclude_unset=True))
    (run_dir / CONFIG_FILE).write_text(json.dumps(saved, indent=1) + "\n")
    console.print(f"[bold]sweep[/]: {run_dir}")
    trackers = tracker_callbacks(cfg.tune.callbacks, cfg.name, run_dir)  # a tracker that cannot start stops it here
    t0 = time.perf_counter()
    manifest = build_pools(cfg, console=console)
    pool_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = reference_evaluation(cfg, manifest, console=console)
    reference_seconds = time.perf_counter() - t0
    ctx = TrialContext(run_dir)
    specs = expand_grid(cfg)
    for spec in specs:
        spec["fingerprint"] = ctx.fingerprint(spec)
    (run_dir / TRIALS_FILE).write_text(json.dumps(specs, indent=1) + "\n")
    console.print(f"[bold cyan]trials[/]: {len(specs)} ({sum(s['kind'] == 'loop' for s in specs)} loop chains) "
                  f"under Ray Tune, {cfg.tune.cpus_per_trial:g} CPU each")
    t0 = time.perf_counter()
    grid = run_trials(cfg, specs, console=console, trackers=trackers)
    trial_seconds = time.perf_counter() - t0
    table = results_table(specs, grid, run_dir)
    failed = table[table["status"] != "ok"]
    for _, row in failed.iterrows():
        console.print(f"[bold red]trial {row['trial_id']} failed[/]: {row['error']}")
    timing = {"pool_seconds": round(pool_seconds, 1), "reference_seconds": round(reference_seconds, 1),
              "trial_seconds": round(trial_seconds, 1), "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    timing["total_seconds"] = round(time.perf_counter() - started, 1)  # up to the report
    t0 = time.perf_counter()
    report_path = write_report(run_dir, cfg, table, manifest, reference, timing=timing)
    timing["report_seconds"] = round(time.perf_counter() - t0, 1)
    timing["total_seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / TIMING_FILE).write_text(json.dumps(timing, indent=1) + "\n")
    console.print(f"report: {report_path} ({timing['total_seconds']:.0f}s; {len(specs) - len(failed)}/{len(specs)} "
                  f"trials ok)")
    return {"run_dir": str(run_dir), "report": str(report_path), "trials": len(specs),
            "ok": int((table["status"] == "ok").sum()), "failed": failed["trial_id"].tolist(),
            "seconds": timing["total_seconds"]}


def rewrite_report(cfg: SweepConfig, console=None) -> dict[str, Any]:
    """Rewrite ``run_dir/report/`` from the trials on disk, running nothing (e.g. with other report settings, or
    while a sweep still runs: its unfinished trials show as missing). Returns the same summary as ``run_sweep``."""
    import pandas as pd

    run_dir = cfg.resolved_run_dir
    if not (run_dir / TRIALS_FILE).is_file() or not (run_dir / REFERENCE_DIR / "metrics.json").is_file():
        raise ConfigError(f"{run_dir}: no sweep has reached its trials here yet; run `lessmore sweep CONFIG` first")
    specs = json.loads((run_dir / TRIALS_FILE).read_text())
    previous = run_dir / REPORT_DIR / "results.csv"
    errors = {}
    if previous.is_file():
        old = pd.read_csv(previous)
        # The failure text is `failure` since results.csv gained the numeric `error` column (older reports: `error`).
        column = "failure" if "failure" in old else "error"
        errors = {r["trial_id"]: str(r[column]) for r in old[old["status"] == "error"].to_dict("records")}
    table = results_table(specs, None, run_dir, errors=errors)
    timing_path = run_dir / TIMING_FILE
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    reference = json.loads((run_dir / REFERENCE_DIR / "metrics.json").read_text())
    report_path = write_report(run_dir, cfg, table, read_manifest(run_dir), reference, timing=timing)
    failed = table[table["status"] != "ok"]
    if console is not None:
        console.print(f"report: {report_path} ({len(specs) - len(failed)}/{len(specs)} trials ok)")
    return {"run_dir": str(run_dir), "report": str(report_path), "trials": len(specs),
            "ok": int((table["status"] == "ok").sum()), "failed": failed["trial_id"].tolist(),
            "seconds": timing.get("total_seconds") if timing else None}

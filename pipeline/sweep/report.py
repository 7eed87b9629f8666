"""The sweep report: measurements beside the calibrated theory, and a verdict for each prediction of theory.md §5.

``write_report(run_dir, cfg, table, manifest, reference)`` writes ``run_dir/report/``:

- ``report.md`` (the human view): setup, the verdicts, the calibration and regime gate per generator, the
  phase-diagram numbers, the rule-winner map, the theory at two ridge penalties, every grid cell with its measured and
  predicted error, the oracle-noise and collapse-loop results, and every failed trial;
- ``results.csv``: one row per trial: ``rule`` (the YAML rule name), ``n`` (pool size), ``p`` (the theory's keep
  fraction: for label-aware rules the fraction kept by difficulty before the correctness filter), ``seed``,
  ``error`` (the trained student's overall test error; the exact error when the trial carries one),
  ``predicted_error``, a linear world's ``d``, ``rho``, ``rho_star``, ``rho_g``, ``lam``, and the trial's status,
  ``failure`` text and metrics;
- ``cells.csv``: one row per cell, seeds pooled, with intervals and the predicted error;
- ``calibration.json``: per generator rho (and under which map), rho*, rho_g, d_eff, lambda, where each came from,
  the learning-curve fit and the regime gate's outcome with its errors and intervals;
- ``verdicts.json``: per prediction ``i`` ... ``v``: ``verdict`` (consistent / inconsistent / untestable),
  ``evidence`` and the judged ``cells``;
- PNGs: ``error_vs_p.png`` (and ``error_vs_p_<tier>.png``), ``phase_diagram.png``, ``rule_winner.png``,
  ``theory_overlay.png``, ``learning_curve.png``, ``oracle_noise.png``, ``collapse_loop.png``.

The numbers come from :mod:`pipeline.sweep.measure`, :mod:`pipeline.sweep.calibrate`, :mod:`pipeline.sweep.predict`
and :mod:`pipeline.sweep.verdicts`; the figures from :mod:`pipeline.sweep.plots`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.sweep.calibrate import Calibration, calibrate, calibration_json, quality_order
from pipeline.sweep.config import HARD_EASY_PAIRS
from pipeline.sweep.layout import REFERENCE_DIR, REPORT_DIR
from pipeline.sweep.markdown import markdown
from pipeline.sweep.measure import OVERALL, Measurements, loop_rounds, phase_cell, rule_winner, significant_below
from pipeline.sweep.plots import (plot_error_vs_p, plot_learning_curve, plot_loop, plot_oracle_noise, plot_phase,
                                  plot_theory, plot_winner)
from pipeline.sweep.pool import pool_samples, read_scores
from pipeline.sweep.predict import Predictor, overlay
from pipeline.sweep.verdicts import all_verdicts

RESULT_FIELDS = ("d", "rho", "rho_star", "rho_g", "lam")


# -- tables (for the markdown and the figures) ---------------------------------------------------------------------


def phase_tables(meas: Measurements, cal: Calibration, rules: list[str]) -> dict[str, dict[str, Any]]:
    """rule -> {"variants", "sizes", "best_p", "ratio", "significant", "difference"} grids (variants x sizes)."""
    variants = quality_order(meas, cal)
    sizes = meas.sizes()
    out = {}
    for rule in rules:
        best = np.full((len(variants), len(sizes)), np.nan)
        ratio = np.full_like(best, np.nan)
        sig = np.zeros_like(best, dtype=int)
        diff = [[None] * len(sizes) for _ in variants]
        for i, v in enumerate(variants):
            for j, n in enumerate(sizes):
                cell = phase_cell(meas, v, n, rule)
                if cell is None:
                    continue
                best[i, j], ratio[i, j], diff[i][j] = cell.best_p, cell.ratio, cell.difference
                sig[i, j] = -1 if significant_below(cell.difference) else 0
        if np.isfinite(best).any():
            out[rule] = {"variants": variants, "sizes": sizes, "best_p": best, "ratio": ratio, "significant": sig,
                         "difference": diff}
    return out


def winner_table(meas: Measurements, cal: Calibration):
    """(hard, easy, variants, sizes, grid of rule_winner dicts) for each measured hard/easy pair."""
    variants = quality_order(meas, cal)
    sizes = meas.sizes()
    out = []
    for hard, easy in HARD_EASY_PAIRS:
        if hard in meas.rules() and easy in meas.rules():
            grid = [[rule_winner(meas, v, n, hard, easy) for n in sizes] for v in variants]
            if any(w is not None for row in grid for w in row):
                out.append((hard, easy, variants, sizes, grid))
    return out


# -- the report ----------------------------------------------------------------------------------------------------


def _groups(levels: np.ndarray, tiers: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    groups = {OVERALL: np.ones(len(levels), dtype=bool)}
    present = sorted({int(x) for x in levels[~np.isnan(levels)]})
    for name, members in tiers.items():
        mask = np.isin(levels, members)
        if mask.any():
            groups[name] = mask
    for lv in present:
        groups[f"L{lv}"] = levels == lv
    return groups


def cell_rows(meas: Measurements, cal: Calibration, pred: Predictor, group_names: list[str]) -> list[dict[str, Any]]:
    """One dict per cell: its axes, seeds, errors with intervals per group, the difference to its p = 1, and the
    calibrated theory's error there (at the fitted lambda)."""
    rows = []
    for key in sorted(meas.cells, key=lambda k: (-(cal.variants[k[:2]].rho if k[:2] in cal.variants else 0),
                                                 k[2], k[3], k[4], k[5])):
        cell = meas.cells[key]
        base = meas.baseline(key[:2], key[2], key[3])
        row = {"generator": key[0], "generator_noise": key[1], "pool_size": key[2], "rule": key[3],
               "keep_fraction": key[4], "oracle_noise": key[5], "seeds": len(cell.seeds),
               "kept_rows": cell.trial_mean("kept_rows"),
               "kept_trace_accuracy": cell.trial_mean("kept_trace_accuracy"),
               "p_theory": pred.p_theory(key[:2], key[3], key[4], key[5])}
        for g in group_names:
            e = meas.error(key, g)
            row[f"error_{g}"], row[f"error_{g}_low"], row[f"error_{g}_high"] = e
        d = meas.difference(key, base) if key != base else (0.0, 0.0, 0.0)
        row["minus_p1"], row["minus_p1_low"], row["minus_p1_high"] = d
        row["predicted_error"] = pred.key_error(key)
        row["predicted_minus_p1"] = row["predicted_error"] - pred.key_error(base)
        rows.append(row)
    return rows


def results_rows(table, meas: Measurements, pred: Predictor):
    """``results.csv``: the trials table with ``n``, the theory's ``p``, the numeric ``error``, ``predicted_error``
    and a linear world's fields; the failure text moves to ``failure``."""
    from pipeline.sweep.measure import trial_fields

    out = table.rename(columns={"error": "failure"}).copy()
    fields = {}
    for cell in meas.cells.values():
        for t in cell.trials:
            fields[t["trial_id"]] = t
    ns, ps, errors, predicted = [], [], [], []
    extra = {k: [] for k in RESULT_FIELDS}
    for row in out.to_dict("records"):
        f = fields.get(row["trial_id"]) or (trial_fields(meas.run_dir, row) if row.get("status") == "ok" else {})
        variant = (row.get("generator"), float(row.get("generator_noise") or 0.0))
        ns.append(row.get("pool_size"))
        # The trial's own count comes first (a linear world's `p`, else the curation's theory_keep_fraction, taken
        # from the ranks it realised); the calibrated geometry's estimate only where neither was recorded.
        theory_p = f.get("p")
        if theory_p is None and _finite(row.get("theory_keep_fraction")):
            theory_p = float(row["theory_keep_fraction"])
        if theory_p is None and row.get("kind") == "grid":
            theory_p = pred.p_theory(variant, row["rule"], float(row["keep_fraction"]), float(row["oracle_noise"]))
        ps.append(theory_p if theory_p is not None else row.get("keep_fraction"))
        accuracy = row.get("accuracy_overall")
        errors.append(f.get("exact_error", 1.0 - accuracy if accuracy is not None and accuracy == accuracy
                            else float("nan")))
        key = (variant[0], variant[1], row.get("pool_size"), row.get("rule"), row.get("keep_fraction"),
               row.get("oracle_noise"))
        predicted.append(pred.key_error(key) if row.get("kind") == "grid" else float("nan"))
        for k in RESULT_FIELDS:
            extra[k].append(f.get(k, float("nan")))
    # A linear world's trials already bring n, p and its fields as columns: the values here (which read them first)
    # replace them, placed next to the cell's axes.
    out = out.drop(columns=[c for c in ("n", "p", "predicted_error", *RESULT_FIELDS) if c in out.columns])
    out.insert(out.columns.get_loc("rule") + 1, "n", ns)
    out.insert(out.columns.get_loc("n") + 1, "p", ps)
    out.insert(out.columns.get_loc("seed") + 1, "error", errors)
    out.insert(out.columns.get_loc("error") + 1, "predicted_error", predicted)
    for k in RESULT_FIELDS:
        out[k] = extra[k]
    return out


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def write_report(run_dir: str | os.PathLike, cfg, table, manifest: dict[str, Any], reference: dict[str, Any],
                 timing: dict[str, Any] | None = None, figures: bool = True) -> Path:
    """Write ``run_dir/report/`` (see the module docstring); returns the path of report.md.

    Args:
        run_dir: the sweep's run directory (trial scores under ``trials/``, the reference under ``reference/``).
        cfg: the SweepConfig.
        table: the results table (``pipeline.sweep.trials.results_table``), one row per trial.
        manifest: the pool manifest (``pipeline.sweep.pool.build_pools``).
        reference: the reference evaluation's metrics (student and generators before curation).
        timing: seconds per phase and the load average, shown in the report.
        figures: draw the PNGs (off: tables, files and verdicts only).
    """
    import pandas as pd

    run_dir = Path(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    rs = cfg.report
    try:
        student = read_scores(run_dir / REFERENCE_DIR, "student")
    except (FileNotFoundError, OSError):
        student = None  # a linear world has no untouched student: the gate compares with chance
    if student is not None:
        problem_ids = student["problem_id"].tolist()
        levels = pd.to_numeric(student["level"], errors="coerce").to_numpy(dtype=float)
    else:
        problem_ids, levels = [], np.array([])
    groups = _groups(levels, rs.tiers)
    meas = Measurements(run_dir, table, groups, problem_ids, rs.bootstrap, rs.confidence, rs.exact_resolution)
    samples_cache: dict[str, Any] = {}

    def samples_of(gen):
        if gen not in samples_cache:
            try:
                samples_cache[gen] = pool_samples(manifest, gen)
            except (KeyError, FileNotFoundError, OSError):
                samples_cache[gen] = None
        return samples_cache[gen]

    reference_correct = student["correct"].to_numpy(dtype=float) if student is not None else None
    with np.errstate(all="ignore"):  # the theory returns NaN (shown as n/a) where a calibration is degenerate
        cal = calibrate(meas, manifest, cfg, samples_of, reference_correct)
        pred = Predictor(cal)
        group_names = [OVERALL] + [g for g in rs.tiers if g in groups]
        cells = cell_rows(meas, cal, pred, group_names)
        results_rows(table, meas, pred).to_csv(out / "results.csv", index=False)
    pd.DataFrame(cells).to_csv(out / "cells.csv", index=False)
    _write_json(out / "calibration.json", calibration_json(cal, meas))
    student_error = 1.0 - float(np.mean(reference_correct)) if student is not None else None
    hard_mask = groups.get(rs.hard_tier)
    student_hard_error = (1.0 - float(np.mean(reference_correct[hard_mask]))
                          if hard_mask is not None and student is not None else None)

    drawn: dict[str, str] = {}
    if figures and meas.cells:
        plot_error_vs_p(meas, cal, out / "error_vs_p.png", OVERALL, student_error)
        drawn["error_vs_p.png"] = "error against keep fraction, per (generator, n), one line per rule"
        if rs.hard_tier in groups:
            name = f"error_vs_p_{rs.hard_tier}.png"
            plot_error_vs_p(meas, cal, out / name, rs.hard_tier, student_hard_error)
            drawn[name] = f"the same on the '{rs.hard_tier}' tier"
    curated_rules = [r for r in (*(r for pair in HARD_EASY_PAIRS for r in pair), "random") if r in meas.rules()]
    phase = phase_tables(meas, cal, curated_rules)
    if figures and plot_phase(phase, cal, out / "phase_diagram.png"):
        drawn["phase_diagram.png"] = "best p and E(best p)/E(1) over (n, generator quality), per rule"
    winners = winner_table(meas, cal)
    if figures and plot_winner(winners, cal, out / "rule_winner.png"):
        drawn["rule_winner.png"] = "which rule wins: E(keep-hard) - E(keep-easy) at matched p"
    with np.errstate(all="ignore"):
        over = overlay(cal, meas.sizes())
    if figures and plot_theory(over, phase.get("keep_hard"), cal, rs.tolerance, out / "theory_overlay.png"):
        drawn["theory_overlay.png"] = "the calibrated theory's keep-hard ratio and boundary, measured cells on top"
    if figures and plot_learning_curve(cal, out / "learning_curve.png"):
        drawn["learning_curve.png"] = "the random-subset learning curve and the fitted d_eff and lambda"
    if figures and plot_oracle_noise(meas, cal, out / "oracle_noise.png"):
        drawn["oracle_noise.png"] = "curated error against oracle noise eta"
    chains = loop_rounds(run_dir, table)
    if figures and plot_loop(chains, problem_ids, student_error, rs.bootstrap, rs.confidence,
                             out / "collapse_loop.png"):
        drawn["collapse_loop.png"] = "held-out accuracy per round of the collapse loop, per rule"

    with np.errstate(all="ignore"):
        verdicts = all_verdicts(meas, cal, cfg, chains, problem_ids)
    _write_json(out / "verdicts.json", verdicts)

    md = markdown(cfg, table, manifest, reference, timing, meas, cal, pred, cells, group_names, phase, winners,
                   chains, problem_ids, verdicts, drawn)
    path = out / "report.md"
    path.write_text(md)
    return path


def _plain(value):
    """A value for the JSON files: numpy scalars and arrays as Python ones, tuples as lists, NaN and inf as null
    (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(_plain(data), indent=1, allow_nan=False) + "\n")



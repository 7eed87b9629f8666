"""The sweep report: measurements beside the theory, and a verdict for each prediction of theory.md §5.

``write_report(run_dir, cfg, table, manifest, reference)`` writes ``run_dir/report/``:

- ``report.md``: setup, timing, the verdict table, the phase-diagram numbers, the rule-winner map, the theory's
  calibration and its predicted boundary beside the measured one, every grid cell with its interval, the oracle-noise
  and collapse-loop results, and every failed trial;
- ``results.csv`` (one row per trial) and ``cells.csv`` (one row per cell, seeds pooled, with intervals);
- PNGs: ``error_vs_p.png`` (and ``error_vs_p_<tier>.png``), ``phase_diagram.png``, ``rule_winner.png``,
  ``theory_overlay.png``, ``learning_curve.png``, ``oracle_noise.png``, ``collapse_loop.png``.

The numbers come from :mod:`pipeline.sweep.measure` (cells and intervals), :mod:`pipeline.sweep.calibrate` (the
theory beside them) and :mod:`pipeline.sweep.verdicts`; the figures from :mod:`pipeline.sweep.plots`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.sweep.calibrate import Calibration, calibrate, quality_order, theory_prediction, variant_label
from pipeline.sweep.config import LABEL_AWARE_RULES, SCORED_RULES
from pipeline.sweep.layout import REFERENCE_DIR, REPORT_DIR
from pipeline.sweep.measure import (OVERALL, Measurements, bootstrap_mean, fmt, fmt_ci, loop_rounds, named_rng,
                                    phase_cell, round_matrix, rule_winner, significant_below)
from pipeline.sweep.plots import (plot_error_vs_p, plot_learning_curve, plot_loop, plot_oracle_noise, plot_phase,
                                  plot_theory, plot_winner)
from pipeline.sweep.pool import pool_samples, read_scores
from pipeline.sweep.verdicts import (INCONCLUSIVE, verdict_i, verdict_ii, verdict_iii, verdict_iv, verdict_v)


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
    for hard, easy in (("keep_hard", "keep_easy"), ("keep_hard_correct", "keep_easy_correct")):
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


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def cell_rows(meas: Measurements, cal: Calibration, group_names: list[str]) -> list[dict[str, Any]]:
    """One dict per cell: its axes, seeds, errors with intervals per group, and the difference to its p = 1."""
    rows = []
    for key in sorted(meas.cells, key=lambda k: (-cal.trace_accuracy.get(k[:2], 0), k[2], k[3], k[4], k[5])):
        cell = meas.cells[key]
        base = meas.baseline(key[:2], key[2], key[3])
        row = {"generator": key[0], "generator_noise": key[1], "pool_size": key[2], "rule": key[3],
               "keep_fraction": key[4], "oracle_noise": key[5], "seeds": len(cell.seeds),
               "kept_rows": cell.trial_mean("kept_rows"),
               "kept_trace_accuracy": cell.trial_mean("kept_trace_accuracy")}
        for g in group_names:
            e = meas.error(key, g)
            row[f"error_{g}"], row[f"error_{g}_low"], row[f"error_{g}_high"] = e
        d = meas.difference(key, base) if key != base else (0.0, 0.0, 0.0)
        row["minus_p1"], row["minus_p1_low"], row["minus_p1_high"] = d
        rows.append(row)
    return rows


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
        figures: draw the PNGs (off: tables and verdicts only).
    """
    import pandas as pd

    run_dir = Path(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    rs = cfg.report

    student = read_scores(run_dir / REFERENCE_DIR, "student")
    problem_ids = student["problem_id"].tolist()
    levels = pd.to_numeric(student["level"], errors="coerce").to_numpy(dtype=float)
    groups = _groups(levels, rs.tiers)
    meas = Measurements(run_dir, table, groups, problem_ids, rs.bootstrap, rs.confidence)
    samples_cache: dict[str, Any] = {}

    def samples_of(gen):
        if gen not in samples_cache:
            samples_cache[gen] = pool_samples(manifest, gen)
        return samples_cache[gen]

    with np.errstate(all="ignore"):  # the theory returns NaN (shown as n/a) where a calibration is degenerate
        cal = calibrate(meas, table, manifest, cfg, samples_of)
    group_names = [OVERALL] + [g for g in rs.tiers if g in groups]
    cells = cell_rows(meas, cal, group_names)
    pd.DataFrame(cells).to_csv(out / "cells.csv", index=False)
    student_error = 1.0 - float(np.mean(student["correct"]))
    hard_mask = groups.get(rs.hard_tier)
    student_hard_error = 1.0 - float(np.mean(student["correct"].to_numpy()[hard_mask])) if hard_mask is not None else None

    drawn: dict[str, str] = {}
    if figures and meas.cells:
        plot_error_vs_p(meas, cal, out / "error_vs_p.png", OVERALL, student_error)
        drawn["error_vs_p.png"] = "error against keep fraction, per (generator, n), one line per rule"
        if rs.hard_tier in groups:
            name = f"error_vs_p_{rs.hard_tier}.png"
            plot_error_vs_p(meas, cal, out / name, rs.hard_tier, student_hard_error)
            drawn[name] = f"the same on the '{rs.hard_tier}' tier"
    curated_rules = [r for r in ("keep_hard", "keep_easy", "keep_hard_correct", "keep_easy_correct", "random",
                                 "correct_only") if r in meas.rules()]
    phase = phase_tables(meas, cal, [r for r in curated_rules if r != "correct_only"])
    if figures and plot_phase(phase, cal, out / "phase_diagram.png"):
        drawn["phase_diagram.png"] = "best p and E(best p)/E(1) over (n, generator quality), per rule"
    winners = winner_table(meas, cal)
    if figures and plot_winner(winners, cal, out / "rule_winner.png"):
        drawn["rule_winner.png"] = "which rule wins: E(keep-hard) - E(keep-easy) at matched p"
    theory_rule = "keep_hard" if "keep_hard" in phase else ("keep_hard_correct" if "keep_hard_correct" in phase else None)
    pred = None
    if theory_rule is not None:
        with np.errstate(all="ignore"):
            pred = theory_prediction(meas, cal, cfg, theory_rule, theory_rule == "keep_hard_correct")
    if figures and plot_theory(pred, phase.get(theory_rule) if theory_rule else None, cal, rs.tolerance,
                   out / "theory_overlay.png"):
        drawn["theory_overlay.png"] = "the calibrated theory's predicted ratio and boundary, measured cells on top"
    if figures and plot_learning_curve(cal, rs.lam, out / "learning_curve.png"):
        drawn["learning_curve.png"] = "the random-subset learning curve and the fitted effective dimension"
    if figures and plot_oracle_noise(meas, cal, out / "oracle_noise.png"):
        drawn["oracle_noise.png"] = "curated error against oracle noise eta"
    chains = loop_rounds(run_dir, table)
    if figures and plot_loop(chains, problem_ids, student_error, rs.bootstrap, rs.confidence, out / "collapse_loop.png"):
        drawn["collapse_loop.png"] = "held-out accuracy per round of the collapse loop, per rule"

    verdicts = [verdict_i(meas, cal, rs.small_keep_fraction), verdict_ii(meas, cal, rs.hard_tier),
                verdict_iii(meas, cal), verdict_iv(meas, cal),
                verdict_v(chains, problem_ids, rs.bootstrap, rs.confidence)]
    (out / "verdicts.json").write_text(json.dumps(verdicts, indent=1) + "\n")

    md = _markdown(cfg, table, manifest, reference, timing, meas, cal, cells, group_names, phase, winners, pred,
                   chains, problem_ids, verdicts, drawn, student_error)
    path = out / "report.md"
    path.write_text(md)
    return path


def _markdown(cfg, table, manifest, reference, timing, meas, cal, cells, group_names, phase, winners, pred, chains,
              problem_ids, verdicts, figures, student_error) -> str:
    rs = cfg.report
    conf = int(round(100 * rs.confidence))
    ok = int((table["status"] == "ok").sum())
    parts = [f"# Sweep report: {cfg.name}", ""]
    parts.append(
        f"{len(table)} trials ({ok} ok, {len(table) - ok} failed or missing) on one shared pool; student "
        f"`{cfg.finetune.student}`, budget `{cfg.finetune.budget}` "
        + (f"({cfg.finetune.steps} steps x {cfg.finetune.batch_size} rows, compute-matched)"
           if cfg.finetune.budget == "steps" else f"({cfg.finetune.epochs:g} epochs, epoch-matched)")
        + f"; evaluation: {'greedy' if cfg.evaluate.greedy else f'{cfg.evaluate.n} samples'} on "
        f"{len(problem_ids)} held-out problems, the same for every trial; {_seeds_text(cfg)}. "
        f"Intervals: {conf}% bootstrap over seeds and problems; differences are paired. Error = 1 - accuracy.")
    if timing:
        parts += ["", f"Time: {timing.get('total_seconds', '?')} s before this report (pool {timing.get('pool_seconds')} s, "
                  f"reference {timing.get('reference_seconds')} s, trials {timing.get('trial_seconds')} s); "
                  f"load average before/after: {timing.get('load_average_before')} / "
                  f"{timing.get('load_average_after')} on {timing.get('cpus')} CPUs."]
    parts += ["", "## Verdicts (theory.md §5)", ""]
    parts.append(_md_table(["", "prediction", "verdict", "evidence"],
                           [[v["id"], v["prediction"], f"**{v['verdict']}**", v["evidence"]] for v in verdicts]))

    parts += ["", "## Pool and references", ""]
    rows = []
    for name, g in manifest["generators"].items():
        by_level = " ".join(f"L{k}:{v:.2f}" for k, v in g["trace_accuracy_by_level"].items())
        rows.append([name, f"`{g['model']}`", g["problems"], g["samples"], fmt(g["trace_accuracy"]),
                     by_level or "-", fmt(g["solved_any"])])
    parts.append(_md_table(["generator", "model", "problems", "samples", "trace accuracy", "by level",
                            "solved by >= 1 sample"], rows))
    parts += ["", "Held-out accuracy before any curation (greedy unless configured otherwise):", ""]
    ref_rows = []
    for name, model in reference.get("models", {}).items():
        metric = "greedy_accuracy" if "greedy_accuracy" in model["metrics"] else next(iter(model["metrics"]))
        entries = model["metrics"][metric]
        ref_rows.append([name] + [fmt_ci((e["value"], e["ci_low"], e["ci_high"])) for e in entries.values()])
        header = ["model"] + list(entries.keys())
    if ref_rows:
        parts.append(_md_table(header, ref_rows))

    parts += ["", "## Phase diagram (measured)", "",
              "Per rule: best p over the measured keep fractions (p = 1 included) and E(best p)/E(1) at each "
              "(generator, n); `*` marks a best p whose paired difference to p = 1 has an interval below 0.", ""]
    for rule, t in phase.items():
        header = ["generator \\ n"] + [str(n) for n in t["sizes"]]
        rows = []
        for i, v in enumerate(t["variants"]):
            row = [variant_label(v, cal)]
            for j in range(len(t["sizes"])):
                b = t["best_p"][i, j]
                if np.isnan(b):
                    row.append("-")
                else:
                    d = t["difference"][i][j]
                    row.append(f"p*={b:g}, ratio {t['ratio'][i, j]:.3f}{'*' if t['significant'][i, j] else ''}, "
                               f"E-E(1) {fmt_ci(d, True)}")
            rows.append(row)
        parts += [f"**{rule}**", "", _md_table(header, rows), ""]
    if winners:
        parts += ["## Which rule wins", ""]
        for hard, easy, variants, sizes, grid in winners:
            rows = []
            for v, row in zip(variants, grid):
                cells_txt = []
                for w in row:
                    if w is None:
                        cells_txt.append("-")
                        continue
                    name = {1: hard, -1: easy, 0: "neither"}[w["sign"]]
                    detail = ", ".join(f"p={p:g}: {fmt_ci(d, True)}" for p, d in w["differences"].items())
                    cells_txt.append(f"{name} ({detail})")
                rows.append([variant_label(v, cal)] + cells_txt)
            parts += [f"E({hard}) - E({easy}) at matched p (negative: {hard} better):", "",
                      _md_table(["generator \\ n"] + [str(n) for n in sizes], rows), ""]

    parts += ["## Theory beside the measurements", ""]
    cal_rows = [[variant_label(v), fmt(cal.trace_accuracy[v]), fmt(a), fmt(math.cos(math.pi * (1 - a)))]
                for v, a in cal.generator_accuracy.items()]
    parts.append(_md_table(["generator", "trace accuracy", "binary-mapped accuracy", "rho"], cal_rows))
    parts += ["", f"Oracle ({cal.oracle_source}): " + ", ".join(
        f"eta={eta:g}: accuracy {a:.3f}, rho* {math.cos(math.pi * (1 - a)):.3f}" for eta, a in
        sorted(cal.oracle_accuracy.items())) if cal.oracle_accuracy else "Oracle: not measured."]
    if cal.dims:
        parts += ["", "Effective dimension fitted on the random/all learning curve (errors in theory units):", ""]
        parts.append(_md_table(["generator", "d_eff", "points (kept, error)", "rmse"],
                               [[variant_label(v), f"{f['dim']:.1f}",
                                 ", ".join(f"({x:.0f}, {y:.3f})" for x, y in f["points"]), f"{f['rmse']:.4f}"]
                                for v, f in cal.dims.items()]))
    if pred is not None:
        at = pred["at_cells"]
        parts += ["", f"Predicted at the measured cells (keep_hard, best p over {pred['keep']}):", ""]
        rows = []
        for i, v in enumerate(pred["variants"]):
            row = [variant_label(v, cal)]
            for j, n in enumerate(pred["sizes"]):
                measured = phase.get("keep_hard") or phase.get("keep_hard_correct")
                m_txt = ""
                if measured is not None and np.isfinite(measured["ratio"][i, j]):
                    m_txt = f"; measured p*={measured['best_p'][i, j]:g}, {measured['ratio'][i, j]:.3f}"
                row.append(f"p*={at.best_p[i, j]:g}, ratio {at.ratio[i, j]:.3f}, "
                           f"{'hard' if at.hard_beats_easy[i, j] else 'easy'} wins{m_txt}")
            rows.append(row)
        parts.append(_md_table(["generator \\ n"] + [str(n) for n in pred["sizes"]], rows))
        mp = pred["dense"].min_pool_size
        parts += ["", "Predicted smallest pool from which keep-hard pays (beats p = 1 and random by the tolerance): "
                  + ", ".join(f"acc {a:.2f}: {'never on the grid' if np.isnan(m) else f'n >= {m:.0f}'}"
                              for a, m in list(zip(pred["dense"].generator_accuracy, mp))[::6]) + "."]
    for note in cal.notes:
        parts.append(f"- {note}")

    parts += ["", "## Every grid cell", "",
              f"Errors with {conf}% intervals; `E - E(1)` is the paired difference to the family's p = 1 cell "
              "(negative: less is more).", ""]
    header = ["generator", "eps", "n", "rule", "p", "eta", "seeds", "kept rows", "kept trace acc"] + \
             [f"error {g}" for g in group_names] + ["E - E(1)"]
    rows = []
    for c in cells:
        rows.append([c["generator"], f"{c['generator_noise']:g}", c["pool_size"], c["rule"], f"{c['keep_fraction']:g}",
                     f"{c['oracle_noise']:g}", c["seeds"], f"{c['kept_rows']:.0f}", fmt(c["kept_trace_accuracy"], 2)]
                    + [fmt_ci((c[f"error_{g}"], c[f"error_{g}_low"], c[f"error_{g}_high"])) for g in group_names]
                    + [fmt_ci((c["minus_p1"], c["minus_p1_low"], c["minus_p1_high"]), True)])
    parts.append(_md_table(header, rows) if rows else "No grid cell finished.")

    if chains:
        parts += ["", "## Collapse loop", ""]
        rows = []
        for rule, rounds in sorted(chains.items()):
            m = round_matrix(rounds, problem_ids)
            for r, entry in enumerate(rounds):
                acc = bootstrap_mean(m[r][None, :], rs.bootstrap, rs.confidence, named_rng("loop-md", rule, r))
                rows.append([rule, entry["round"], entry["data_source"], fmt(entry["data_trace_accuracy"], 2),
                             entry["curation"]["kept_rows"], fmt(entry["curation"]["kept_trace_accuracy"], 2),
                             fmt_ci(acc)])
        parts.append(_md_table(["rule", "round", "data from", "data trace acc", "kept rows", "kept trace acc",
                                "held-out accuracy"], rows))

    failed = table[table["status"] != "ok"]
    parts += ["", "## Failed or missing trials", ""]
    if failed.empty:
        parts.append("None.")
    else:
        parts.append(_md_table(["trial", "status", "error"],
                               [[r["trial_id"], r["status"], str(r["error"])] for r in failed.to_dict("records")]))

    parts += ["", "## Figures", ""] + [f"- `{name}`: {text}" for name, text in figures.items()]
    parts += ["", "## Reading this report", ""]
    parts += _reading_notes(meas, winners, verdicts)
    return "\n".join(parts) + "\n"


def _seeds_text(cfg) -> str:
    """The seeds of the grid, naming the blocks that set their own (theory.md §5: more seeds at the corners)."""
    own = [f"{b.name} {list(b.seeds)}" for b in cfg.grid.blocks if b.seeds is not None]
    return f"seeds {list(cfg.grid.seeds)}" + (f" ({', '.join(own)})" if own else "")


def _reading_notes(meas: Measurements, winners, verdicts) -> list[str]:
    notes = [
        "- The theory is a linear teacher-student model; its calibration here (binary-mapped accuracies, an "
        "effective dimension fitted on one learning curve, a pretrained student) is an interpretation, so compare "
        "directions and boundaries, not absolute errors.",
        "- Compute-matched training (the default) gives every cell the same optimizer steps: a small kept set is "
        "seen for many epochs. A gain from small p that vanishes under `finetune.budget: epochs` is about "
        "optimization, not data geometry (theory.md §5, 'what refutes it').",
    ]
    separated = any(w is not None and w["sign"] != 0 for _, _, _, _, grid in winners for row in grid for w in row)
    if winners and not separated:
        notes.append(
            "- Keep-hard and keep-easy did not separate beyond the interval anywhere on this grid. What would make "
            "them separate: more held-out problems per level (the interval shrinks as 1/sqrt(problems)), more "
            "seeds, larger pools so that p = 0.1 still holds hundreds of problems, a student whose hard tier "
            "depends only on the curated data (pretrained on the easy levels alone), and a wider generator-quality "
            "gap (a generator near-perfect on the hard tier against one that mostly fails it).")
    label_agnostic_scored = [rule for rule in SCORED_RULES if rule not in LABEL_AWARE_RULES]
    wrong = sorted({(k[0], k[2], k[4]) for k, cell in meas.cells.items()
                    if k[3] in label_agnostic_scored and k[4] < 1 and cell.trial_mean("kept_trace_accuracy") < 0.1})
    if wrong:
        cells = ", ".join(f"{g} n={n} p={p:g}" for g, n, p in wrong[:4]) + (", ..." if len(wrong) > 4 else "")
        notes.append(
            f"- Label-agnostic cells whose kept traces are almost all wrong ({cells}): the rule kept problems that no "
            "sample solved and trains on one of their (wrong) completions, so the cell measures training on wrong "
            "answers as much as difficulty. The label-aware rules (keep_hard_correct, keep_easy_correct) keep "
            "verified traces only; they are the fairer test of keep-hard on such a pool. Oracle noise can then "
            "look like it helps: random scores swap some unsolved problems for solved ones.")
    if all(v["verdict"] == INCONCLUSIVE for v in verdicts):
        notes.append("- Every verdict is inconclusive at this scale: the differences between cells are within the "
                     "intervals. The same grid at larger n, with more seeds and held-out problems, is the next step.")
    return notes

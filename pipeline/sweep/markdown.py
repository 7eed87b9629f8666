"""``report.md``, the human view of the sweep report: the verdicts, the calibration and regime gate per generator,
the measured phase diagram and rule winners, the theory at two ridge penalties, every grid cell measured beside
predicted, the collapse loop, the failed trials and how to read them. The numbers arrive computed
(:mod:`pipeline.sweep.report`); this module only lays them out."""

from __future__ import annotations

import numpy as np

from pipeline.sweep.calibrate import Calibration, quality_order, variant_label
from pipeline.sweep.config import LABEL_AWARE_RULES, SCORED_RULES
from pipeline.sweep.measure import Measurements, bootstrap_mean, fmt, fmt_ci, named_rng, round_matrix
from pipeline.sweep.predict import Predictor
from pipeline.sweep.verdicts import CONSISTENT, UNTESTABLE


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(cfg, table, manifest, reference, timing, meas, cal, pred, cells, group_names, phase, winners, chains,
              problem_ids, verdicts, figures) -> str:
    """The whole ``report.md`` text."""
    rs = cfg.report
    conf = int(round(100 * rs.confidence))
    ok = int((table["status"] == "ok").sum())
    parts = [f"# Sweep report: {cfg.name}", ""]
    evaluation = ("exact test errors (a linear world)" if meas.exact else
                  f"{'greedy' if cfg.evaluate.greedy else f'{cfg.evaluate.n} samples'} on {len(problem_ids)} "
                  "held-out problems, the same for every trial")
    student = getattr(cfg, "student", None)  # a sweep with a linear world names its student kind
    if getattr(student, "kind", "trl") == "linear":
        trained = f"student: ridge regression (lambda {student.lam:g})"
    else:
        trained = (f"student `{cfg.finetune.student}`, budget `{cfg.finetune.budget}` "
                   + (f"({cfg.finetune.steps} steps x {cfg.finetune.batch_size} rows, compute-matched)"
                      if cfg.finetune.budget == "steps" else f"({cfg.finetune.epochs:g} epochs, epoch-matched)"))
    parts.append(
        f"{len(table)} trials ({ok} ok, {len(table) - ok} failed or missing) on one shared pool; {trained}"
        + f"; evaluation: {evaluation}; {_seeds_text(cfg)}. Intervals: {conf}% bootstrap over seeds and problems"
        + (f" (at least +-{meas.resolution:g} over exact errors)" if meas.exact else "")
        + "; differences are paired. Error = 1 - accuracy.")
    if timing:
        parts += ["", f"Time: {timing.get('total_seconds', '?')} s before this report "
                  f"(pool {timing.get('pool_seconds')} s, "
                  f"reference {timing.get('reference_seconds')} s, trials {timing.get('trial_seconds')} s); "
                  f"load average before/after: {timing.get('load_average_before')} / "
                  f"{timing.get('load_average_after')} on {timing.get('cpus')} CPUs."]
    parts += ["", "## Verdicts (theory.md §5)", "",
              "Each prediction is judged only at cells where the calibrated theory predicts its effect by more than "
              "the cell's interval width, on generators that pass the regime gate (docs/sweep.md, \"Verdicts\").", ""]
    parts.append(md_table(["", "prediction", "verdict", "evidence"],
                           [[f"({pid})", v["prediction"], f"**{v['verdict']}**", v["evidence"]]
                            for pid, v in verdicts.items()]))

    parts += ["", "## Calibration and the regime gate", "",
              f"Accuracy map in use: `{cal.task}` (open_ended: rho = cos(pi (1 - a) / 2), errors halved; binary: "
              f"rho = cos(pi (1 - a))). The gate compares `all` at the largest pool with {cal.reference}.", ""]
    rows = []
    for v in quality_order(meas, cal):
        vc = cal.variants.get(v)
        if vc is None:
            continue
        maps = ", ".join(f"{m} {r:.3f}" for m, r in vc.rho_maps.items()) or "-"
        curve = "-" if vc.fit is None else (f"{len(vc.fit['sizes'])} sizes, rmse {vc.fit['rmse']:.4f}"
                                            + ("" if vc.fit["fit_ok"] else ", **rejected**")
                                            + ("" if vc.fit["flattened"] else ", not flattened"))
        rows.append([variant_label(v), fmt(vc.trace_accuracy), f"{vc.rho:.3f} ({vc.rho_source})", maps,
                     f"{vc.rho_star:.3f} ({vc.rho_star_source})", f"{vc.rho_g:.3f} ({vc.rho_g_source})",
                     "-" if vc.dim is None else f"{vc.dim:.1f} ({vc.dim_source})", fmt(vc.lam, 4), curve,
                     f"**{vc.gate.get('outcome')}**: {vc.gate.get('reason', '')}"])
    parts.append(md_table(["generator", "trace acc", "rho", "rho by map", "rho*", "rho_g", "d_eff", "lambda",
                            "learning curve", "gate"], rows))
    for note in cal.notes + [f"{variant_label(v)}: {n}" for v, vc in cal.variants.items() for n in vc.notes]:
        parts.append(f"- {note}")
    parts += _two_lambdas(meas, cal, pred, rs.lam)

    parts += ["", "## Pool and references", ""]
    rows = []
    for name, g in manifest.get("generators", {}).items():
        by_level = " ".join(f"L{k}:{v:.2f}" for k, v in (g.get("trace_accuracy_by_level") or {}).items())
        rows.append([name, f"`{g.get('model')}`", g.get("problems", "-"), g.get("samples", "-"),
                     fmt(g.get("trace_accuracy")),
                     by_level or "-", fmt(g.get("solved_any"))])
    parts.append(md_table(["generator", "model", "problems", "samples", "trace accuracy", "by level",
                            "solved by >= 1 sample"], rows))
    oracle = manifest.get("oracle")
    if oracle:
        by_eta = ", ".join(f"eta {k:g}: {v:.3f}" for k, v in cal.oracle_reference.items()) or "not measured"
        parts += ["", f"Difficulty oracle (not the generator): `{oracle['model']}`, pass rate over k = {oracle['k']} "
                  f"samples of each pool problem (mean {fmt(oracle.get('mean_pass_rate'))}, solved by >= 1 sample "
                  f"{fmt(oracle.get('solved_any'))}). Concordance with its reference difficulty "
                  f"({cal.oracle_audit}): {by_eta}."]
    ref_rows, header = [], ["model"]
    for name, model in (reference or {}).get("models", {}).items():
        metric = "greedy_accuracy" if "greedy_accuracy" in model["metrics"] else next(iter(model["metrics"]))
        entries = model["metrics"][metric]
        ref_rows.append([name] + [fmt_ci((e["value"], e["ci_low"], e["ci_high"])) for e in entries.values()])
        header = ["model"] + list(entries.keys())
    if ref_rows:
        parts += ["", "Held-out accuracy before any curation:", "", md_table(header, ref_rows)]

    parts += ["", "## Phase diagram (measured)", "",
              "Per rule: best p over the measured keep fractions (p = 1 included) and E(best p)/E(1) at each "
              "(generator, n); `*` marks a best p whose paired difference to p = 1 has an interval below 0.", ""]
    for rule, t in phase.items():
        rows = []
        for i, v in enumerate(t["variants"]):
            row = [variant_label(v, cal)]
            for j in range(len(t["sizes"])):
                b = t["best_p"][i, j]
                row.append("-" if np.isnan(b) else f"p*={b:g}, ratio {t['ratio'][i, j]:.3f}"
                           f"{'*' if t['significant'][i, j] else ''}, E-E(1) {fmt_ci(t['difference'][i][j], True)}")
            rows.append(row)
        parts += [f"**{rule}**", "", md_table(["generator \\ n"] + [str(n) for n in t["sizes"]], rows), ""]
    if winners:
        parts += ["## Which rule wins", ""]
        for hard, easy, variants, sizes, grid in winners:
            rows = []
            for v, row in zip(variants, grid):
                texts = []
                for w in row:
                    if w is None:
                        texts.append("-")
                        continue
                    detail = ", ".join(f"p={p:g}: {fmt_ci(d, True)}" for p, d in w["differences"].items())
                    texts.append(f"{ {1: hard, -1: easy, 0: 'neither'}[w['sign']]} ({detail})")
                rows.append([variant_label(v, cal)] + texts)
            parts += [f"E({hard}) - E({easy}) at matched p (negative: {hard} better):", "",
                      md_table(["generator \\ n"] + [str(n) for n in sizes], rows), ""]

    parts += ["## Every grid cell: measured and predicted", "",
              f"Errors with {conf}% intervals; `E - E(1)` is the paired difference to the family's p = 1 cell "
              "(negative: less is more); `p (theory)` is the theory's keep fraction (label-aware rules: before the "
              "correctness filter); `predicted` is the calibrated theory's error in the measured units (n/a: the "
              "generator has no d_eff).", ""]
    header = ["generator", "eps", "n", "rule", "p", "p (theory)", "eta", "seeds", "kept rows", "kept trace acc"] + \
             [f"error {g}" for g in group_names] + ["predicted", "E - E(1)", "predicted E - E(1)"]
    rows = []
    for c in cells:
        rows.append([c["generator"], f"{c['generator_noise']:g}", c["pool_size"], c["rule"], f"{c['keep_fraction']:g}",
                     fmt(c["p_theory"], 2), f"{c['oracle_noise']:g}", c["seeds"], fmt(c["kept_rows"], 0),
                     fmt(c["kept_trace_accuracy"], 2)]
                    + [fmt_ci((c[f"error_{g}"], c[f"error_{g}_low"], c[f"error_{g}_high"])) for g in group_names]
                    + [fmt(c["predicted_error"]), fmt_ci((c["minus_p1"], c["minus_p1_low"], c["minus_p1_high"]), True),
                       fmt(c["predicted_minus_p1"])])
    parts.append(md_table(header, rows) if rows else "No grid cell finished.")

    if chains:
        parts += ["", "## Collapse loop", ""]
        rows = []
        for rule, rounds in sorted(chains.items()):
            m = round_matrix(rounds, problem_ids)
            for r, entry in enumerate(rounds):
                acc = (bootstrap_mean(m[r][None, :], rs.bootstrap, rs.confidence, named_rng("loop-md", rule, r))
                       if entry.get("scores") is not None else (float("nan"),) * 3)
                rows.append([rule, entry["round"], entry.get("data_source"), fmt(entry.get("data_trace_accuracy"), 2),
                             entry["curation"]["kept_rows"], fmt(entry["curation"]["kept_trace_accuracy"], 2),
                             fmt_ci(acc), fmt(entry.get("exact_error", float("nan")))])
        parts.append(md_table(["rule", "round", "data from", "data trace acc", "kept rows", "kept trace acc",
                                "held-out accuracy", "exact error"], rows))

    failed = table[table["status"] != "ok"]
    parts += ["", "## Failed or missing trials", ""]
    failures = [[r["trial_id"], r["status"], str(r["error"])] for r in failed.to_dict("records")]
    parts.append("None." if failed.empty else md_table(["trial", "status", "failure"], failures))
    parts += ["", "## Files and figures", "",
              "- `results.csv` (one row per trial), `cells.csv` (one per cell), `calibration.json`, `verdicts.json`: "
              "the machine-readable report"] + [f"- `{name}`: {text}" for name, text in figures.items()]
    parts += ["", "## Reading this report", ""]
    parts += _reading_notes(meas, winners, verdicts)
    return "\n".join(parts) + "\n"


def _two_lambdas(meas: Measurements, cal: Calibration, pred: Predictor, second: float) -> list[str]:
    """keep_hard's predicted best p and E(best)/E(1) at the measured sizes, at the fitted lambda and at ``second``:
    how much of a predicted gain is the ridge penalty's (instrument.md §2, lambda-sensitivity)."""
    from pipeline.theory import model as theory

    rows = []
    ps = np.array(theory.DEFAULT_KEEP_FRACTIONS)
    for v in quality_order(meas, cal):
        vc = cal.variants.get(v)
        if vc is None or vc.dim is None:
            continue
        row = [variant_label(v)]
        for n in meas.sizes():
            texts = []
            other = second if second != vc.lam else (0.1 if vc.lam != 0.1 else 1e-3)  # always two penalties
            for lam in (vc.lam, other):
                errors = np.array([pred.theory_errors(v, n / vc.dim, "keep_hard", p, 0.0, lam)[0] for p in ps])
                i = int(np.argmin(errors))
                texts.append(f"lambda {lam:g}: p* {ps[i]:.2f}, {errors[i] / errors[-1]:.2f}")
            row.append("; ".join(texts))
        rows.append(row)
    if not rows:
        return []
    return ["", "keep_hard as the calibrated theory predicts it at the measured pool sizes (best p over a dense p grid "
            "and E(best)/E(1)), at the fitted lambda and at a second one (report.lam, or 0.1 when that is the "
            "fitted one):", "",
            md_table(["generator \\ n"] + [str(n) for n in meas.sizes()], rows)]


def _seeds_text(cfg) -> str:
    """The seeds of the grid, naming the blocks that set their own (theory.md §5: more seeds at the corners)."""
    own = [f"{b.name} {list(b.seeds)}" for b in cfg.grid.blocks if b.seeds is not None]
    return f"seeds {list(cfg.grid.seeds)}" + (f" ({', '.join(own)})" if own else "")


def _reading_notes(meas: Measurements, winners, verdicts) -> list[str]:
    notes = [
        "- The theory is a linear teacher-student model; its calibration here (mapped accuracies, an effective "
        "dimension fitted on one learning curve) is an interpretation, so compare directions and boundaries, not "
        "absolute errors.",
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
    if all(v["verdict"] == UNTESTABLE for v in verdicts.values()):
        notes.append("- Every verdict is untestable: on this grid the calibrated theory predicts no effect the "
                     "measurements can resolve, or no generator passes the regime gate. The evidence column says "
                     "which; instrument.md §3 lists what would put a sweep where the theory speaks.")
    elif any(v["verdict"] == CONSISTENT for v in verdicts.values()):
        notes.append("- `consistent` means consistent with the calibrated theory at the judged cells only; the "
                     "theory stays an interpretation of this pipeline (a linear teacher-student model).")
    return notes

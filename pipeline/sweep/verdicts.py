"""A verdict for each prediction of theory.md §5, from the measured cells: confirmed, refuted or inconclusive, with the
evidence as text."""

from __future__ import annotations

from pipeline.sweep.calibrate import Calibration, quality_order
from pipeline.sweep.measure import (OVERALL, Measurements, bootstrap_mean, fmt_ci, named_rng, phase_cell,
                                    round_matrix, rule_winner, significant_above, significant_below)

CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"


PREDICTIONS = {
    "(i)": "At large n with a strong generator, keep-hard (or keep-hard and correct) at p <= {small} beats p = 1 "
           "beyond the 95% interval, and the best p moves down as n grows.",
    "(ii)": "For small n, a weak generator, or the hard tier, error falls monotonically as p rises to 1 "
            "(more is more).",
    "(iii)": "The keep-hard vs keep-easy winner flips across the generator-quality axis (hard for the strong "
             "generator, easy for the weak one).",
    "(iv)": "A noisier oracle shrinks the less-is-more region.",
    "(v)": "In the collapse loop, all-data degrades while the verified curated loop stays flat or improves.",
}


def _verdict(pid: str, verdict: str, evidence: str, small: float = 0.1) -> dict[str, str]:
    return {"id": pid, "prediction": PREDICTIONS[pid].format(small=f"{small:g}"), "verdict": verdict,
            "evidence": evidence}


def verdict_i(meas: Measurements, cal: Calibration, small: float) -> dict[str, str]:
    """Prediction (i): at the strongest generator's largest n, keep-hard at p <= ``small`` against p = 1, and
    whether the best p moves down as n grows."""
    variants = quality_order(meas, cal)
    rules = [r for r in ("keep_hard", "keep_hard_correct") if r in meas.rules()]
    if not variants or not rules:
        return _verdict("(i)", INCONCLUSIVE, "not measured: the grid has no keep_hard / keep_hard_correct cells", small)
    strong = variants[-1]
    sizes = meas.sizes(strong)
    n = sizes[-1]
    tested = []
    for rule in rules:
        for p, key in meas.curve(strong, n, rule):
            if p <= small + 1e-12:
                tested.append((rule, p, meas.difference(key, meas.baseline(strong, n, rule))))
    if not tested:
        return _verdict("(i)", INCONCLUSIVE, f"not measured: no keep-hard cell with p <= {small:g} at "
                        f"{strong[0]}, n = {n}", small)
    better = [t for t in tested if significant_below(t[2])]
    worse = [t for t in tested if significant_above(t[2])]
    listing = "; ".join(f"{r} p={p:g}: E - E(1) = {fmt_ci(d, True)}" for r, p, d in tested)
    trend = ""
    moves_down = None
    rule = rules[0]
    best = [(m, phase_cell(meas, strong, m, rule)) for m in sizes]
    best = [(m, c.best_p) for m, c in best if c is not None]
    if len(best) >= 2:
        ps = [bp for _, bp in best]
        moves_down = all(b <= a for a, b in zip(ps, ps[1:])) and ps[-1] < ps[0]
        trend = f" Best p of {rule} at {strong[0]} by n: " + ", ".join(f"n={m}: {bp:g}" for m, bp in best) + "."
    where = f"{strong[0]} (trace accuracy {cal.trace_accuracy.get(strong, float('nan')):.2f}), n = {n}: "
    if better and moves_down:
        return _verdict("(i)", CONFIRMED, where + listing + "." + trend, small)
    if better:
        why = " p* does not move down with n." if moves_down is False else " Only one pool size has keep-hard cells."
        return _verdict("(i)", INCONCLUSIVE, where + listing + "." + trend + why, small)
    if worse:
        return _verdict("(i)", REFUTED, where + listing + ": small p is significantly worse than p = 1 where the "
                        "theory expects it to win." + trend, small)
    return _verdict("(i)", INCONCLUSIVE, where + listing + ": no difference beyond the interval." + trend, small)


def verdict_ii(meas: Measurements, cal: Calibration, hard_tier: str) -> dict[str, str]:
    """Prediction (ii): at the smallest n, the weakest generator and the hard tier, is p = 1 best?"""
    variants = quality_order(meas, cal)
    if not variants:
        return _verdict("(ii)", INCONCLUSIVE, "no grid cells measured")
    weak, strong = variants[0], variants[-1]
    curves = []
    rules = [r for r in meas.rules() if r not in ("all", "correct_only")]
    for variant in variants:
        sizes = meas.sizes(variant)
        for n in sizes:
            in_region = n == min(meas.sizes()) or variant == weak
            groups = [OVERALL] if in_region else []
            if variant == strong and n == sizes[-1] and hard_tier in meas.groups:
                groups.append(hard_tier)
            for group in groups:
                for rule in rules:
                    curve = meas.curve(variant, n, rule)
                    if len(curve) >= 2 and curve[-1][0] == 1.0:
                        curves.append((variant, n, rule, group, curve))
    if not curves:
        return _verdict("(ii)", INCONCLUSIVE, "not measured: no curve with p < 1 and p = 1 at the smallest n, the "
                        "weakest generator or the hard tier")
    sig_better, sig_worse = [], []
    for variant, n, rule, group, curve in curves:
        base = curve[-1][1]
        diffs = [(p, meas.difference(k, base, group)) for p, k in curve[:-1]]
        label = f"{variant[0]} n={n} {rule} [{group}]"
        if any(significant_below(d) for _, d in diffs):
            p, d = min(diffs, key=lambda t: t[1][0])
            sig_better.append(f"{label}: p={p:g} {fmt_ci(d, True)}")
        if significant_above(diffs[0][1]):
            sig_worse.append(label)
    evidence = (f"{len(curves)} curves (smallest n = {min(meas.sizes())}, weakest generator {weak[0]}, and the "
                f"'{hard_tier}' tier at {strong[0]}, n = {meas.sizes(strong)[-1]}): the smallest p is significantly "
                f"worse than p = 1 in {len(sig_worse)}; some p < 1 is significantly better than p = 1 in "
                f"{len(sig_better)}")
    if sig_better:
        evidence += " (" + "; ".join(sig_better[:4]) + ("; ..." if len(sig_better) > 4 else "") + ")"
    if not sig_better and sig_worse:
        return _verdict("(ii)", CONFIRMED, evidence + ".")
    if sig_better and len(sig_better) >= len(sig_worse):
        return _verdict("(ii)", REFUTED, evidence + ".")
    return _verdict("(ii)", INCONCLUSIVE, evidence + ".")


def verdict_iii(meas: Measurements, cal: Calibration) -> dict[str, str]:
    """Prediction (iii): does the keep-hard vs keep-easy winner flip between the weakest and strongest generator?"""
    variants = quality_order(meas, cal)
    pairs = [(h, e) for h, e in (("keep_hard", "keep_easy"), ("keep_hard_correct", "keep_easy_correct"))
             if h in meas.rules() and e in meas.rules()]
    if len(variants) < 2 or not pairs:
        return _verdict("(iii)", INCONCLUSIVE, "not measured: needs keep-hard and keep-easy cells at two or more "
                        "generator qualities")
    weak, strong = variants[0], variants[-1]
    hard, easy = pairs[0]
    lines, flips, reversed_, same = [], [], [], []
    for n in sorted(set(meas.sizes(weak)) & set(meas.sizes(strong))):
        ws, ww = rule_winner(meas, strong, n, hard, easy), rule_winner(meas, weak, n, hard, easy)
        if ws is None or ww is None:
            continue
        name = {1: hard, -1: easy, 0: "neither"}
        lines.append(f"n={n}: {strong[0]} -> {name[ws['sign']]} (E_hard - E_easy = {ws['mean_difference']:+.3f}), "
                     f"{weak[0]} -> {name[ww['sign']]} ({ww['mean_difference']:+.3f})")
        if ws["sign"] == 1 and ww["sign"] == -1:
            flips.append(n)
        elif ws["sign"] == -1 and ww["sign"] == 1:
            reversed_.append(n)
        elif ws["sign"] == ww["sign"] != 0:
            same.append(n)
    if not lines:
        return _verdict("(iii)", INCONCLUSIVE, f"not measured: no pool size with {hard} and {easy} at matched p for "
                        f"both {strong[0]} and {weak[0]}")
    evidence = f"{hard} vs {easy} at matched p < 1: " + "; ".join(lines) + "."
    if flips:
        return _verdict("(iii)", CONFIRMED, evidence)
    if reversed_ or (same and max(same) == max(meas.sizes())):
        return _verdict("(iii)", REFUTED, evidence + (" The flip goes the other way." if reversed_ else
                                                      " The same rule wins at both ends of the quality axis."))
    return _verdict("(iii)", INCONCLUSIVE, evidence + " No significant winner at one or both ends.")


def verdict_iv(meas: Measurements, cal: Calibration) -> dict[str, str]:
    """Prediction (iv): does oracle noise make curation worse where it paid at eta = 0?"""
    variants = quality_order(meas, cal)
    noisy = [k for k in meas.cells if k[5] > 0]
    if not variants or not noisy:
        return _verdict("(iv)", INCONCLUSIVE, "not measured: no cell with oracle noise eta > 0")
    lines, hurts, helps, regions = [], [], [], []
    for key in sorted(noisy, key=lambda k: (-cal.trace_accuracy.get(k[:2], 0), -k[2])):
        clean = key[:5] + (0.0,)
        if clean not in meas.cells:
            continue
        base = meas.baseline(key[:2], key[2], key[3])
        gain_clean = meas.difference(clean, base)
        gain_noisy = meas.difference(key, base)
        change = meas.difference(key, clean)
        acc0, acc1 = cal.oracle_accuracy.get(0.0, float("nan")), cal.oracle_accuracy.get(key[5], float("nan"))
        lines.append(f"{key[0]} n={key[2]} {key[3]} p={key[4]:g}: E - E(1) at eta=0 {fmt_ci(gain_clean, True)}, "
                     f"at eta={key[5]:g} {fmt_ci(gain_noisy, True)}; E(eta) - E(0) = {fmt_ci(change, True)} "
                     f"(oracle accuracy {acc0:.2f} -> {acc1:.2f})")
        regions.append(significant_below(gain_clean))
        if significant_above(change):
            hurts.append(key)
        if significant_below(change):
            helps.append(key)
    if not lines:
        return _verdict("(iv)", INCONCLUSIVE, "not measured: the noisy cells have no eta = 0 counterpart")
    evidence = "; ".join(lines) + "."
    if helps:
        return _verdict("(iv)", REFUTED, evidence + " The noisier oracle curates significantly better.")
    if hurts and any(regions):
        return _verdict("(iv)", CONFIRMED, evidence)
    if not any(regions):
        return _verdict("(iv)", INCONCLUSIVE, evidence + " There is no less-is-more region at eta = 0 to shrink"
                        + (" (noise still makes curation significantly worse)." if hurts else "."))
    return _verdict("(iv)", INCONCLUSIVE, evidence + " The change with noise is within the interval.")


def verdict_v(chains, problem_ids, resamples: int, confidence: float) -> dict[str, str]:
    """Prediction (v): does all-data degrade over the loop's rounds while a verified rule does not?"""
    if "all" not in chains:
        return _verdict("(v)", INCONCLUSIVE, "not measured: no collapse loop with the all-data rule (loop.rounds)")
    verified = [r for r in ("keep_hard_correct", "correct_only", "keep_easy_correct") if r in chains]
    if not verified or len(chains["all"]) < 2:
        return _verdict("(v)", INCONCLUSIVE, "not measured: needs a verified rule and two or more rounds")

    def change(rule):
        m = round_matrix(chains[rule], problem_ids)
        acc, lo, hi = bootstrap_mean((m[0] - m[-1])[None, :], resamples, confidence, named_rng("loop", rule))
        return acc, lo, hi  # error(last) - error(first)

    all_change = change("all")
    main = verified[0]
    main_change = change(main)
    rounds = len(chains["all"])
    evidence = (f"error change from round 1 to round {rounds}: all {fmt_ci(all_change, True)}, {main} "
                f"{fmt_ci(main_change, True)}" + "".join(f", {r} {fmt_ci(change(r), True)}" for r in verified[1:]))
    if significant_above(all_change) and not significant_above(main_change):
        return _verdict("(v)", CONFIRMED, evidence + ".")
    if significant_above(main_change) or significant_below(all_change):
        return _verdict("(v)", REFUTED, evidence + (" The verified loop degrades." if significant_above(main_change)
                                                    else " All-data improves over the rounds."))
    return _verdict("(v)", INCONCLUSIVE, evidence + (": all-data does not degrade beyond the interval."
                                                    if not significant_above(all_change) else "."))


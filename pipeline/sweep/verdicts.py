"""A verdict for each prediction of theory.md §5, conditioned on the calibrated theory: ``consistent``,
``inconsistent`` or ``untestable``, with the evidence as text and the cells it rests on.

A cell is *judged* only where the calibrated theory predicts the effect at that cell by more than the measurement
resolves: the predicted difference between the two cells compared exceeds the width of their measured paired
interval. Then the measured interval either lies on the predicted side of 0 (agrees) or excludes the predicted value
(disagrees): a judged comparison is always decisive. Cells are left out, with the reason, when their generator
fails the regime gate or its calibration, when the theory does not predict the effect there, or when the `random`
control at the same (n, p) is missing. No judged cell: ``untestable``. Every judged cell agrees: ``consistent``.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.sweep.calibrate import Calibration, from_theory, quality_order, variant_label
from pipeline.sweep.measure import Measurements, bootstrap_mean, fmt_ci, named_rng, round_matrix
from pipeline.sweep.config import HARD_EASY_PAIRS
from pipeline.sweep.predict import THEORY_RULES, Predictor

CONSISTENT, INCONSISTENT, UNTESTABLE = "consistent", "inconsistent", "untestable"
MIN_LOOP_ROUNDS = 4
# The keep-hard rules (i) judges, and the label-agnostic ones (ii) does; stratified forms rank within each level.
HARD_RULES = tuple(h for h, _ in HARD_EASY_PAIRS)
AGNOSTIC_HARD_RULES = ("keep_hard", "keep_hard_stratified")
VERIFIER_RHO_STAR = 0.9999  # the toy loop's verifier checks reference answers: an all-but-perfect oracle

PREDICTIONS = {
    "i": "Where the calibrated theory predicts less is more, the best p < 1 of keep-hard (or keep-hard and correct) "
         "beats p = 1 and `random` at the same p beyond the interval, with best p <= 0.5, not rising with n.",
    "ii": "At small n/d, label-agnostic keep-hard error falls monotonically as p rises to 1 (more is more).",
    "iii": "The keep-hard vs keep-easy winner flips across generator quality: hard for the strong generator, easy "
           "for the weak one.",
    "iv": "Where a less-is-more region exists, a noisier oracle shrinks it.",
    "v": "Over four or more rounds of the collapse loop, all-data degrades while the verified curated loop stays flat "
         "or improves.",
}


def _verdict(pid: str, verdict: str, evidence: str, cells=()) -> dict[str, Any]:
    return {"prediction": PREDICTIONS[pid], "verdict": verdict, "evidence": evidence, "cells": list(cells)}


def _compare(meas: Measurements, pred: Predictor, a: tuple, b: tuple) -> dict[str, Any]:
    """E(a) - E(b): predicted, measured with its paired interval, whether the theory's prediction is resolvable
    (|predicted| > interval width) and whether the measurement agrees with its direction."""
    predicted = pred.key_error(a) - pred.key_error(b)
    measured = meas.difference(a, b)
    width = measured[2] - measured[1]
    testable = bool(math.isfinite(predicted) and math.isfinite(width) and abs(predicted) > width)
    agrees = bool(measured[2] < 0) if predicted < 0 else bool(measured[1] > 0)
    return {"predicted": predicted, "measured": measured, "width": width, "testable": testable, "agrees": agrees}


def _text(c: dict[str, Any]) -> str:
    return f"predicted {c['predicted']:+.3f}, measured {fmt_ci(c['measured'], True)}"


def _cell(variant, n, rule, p, outcome: str, **detail) -> dict[str, Any]:
    return {"generator": variant[0], "generator_noise": variant[1], "n": n, "rule": rule, "p": p,
            "outcome": outcome, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in detail.items()}}


class Judge:
    """What every verdict shares: the measurements, the calibration and the calibrated theory."""

    def __init__(self, meas: Measurements, cal: Calibration, cfg) -> None:
        self.meas, self.cal, self.cfg = meas, cal, cfg
        self.pred = Predictor(cal)

    def usable(self) -> tuple[list, list[str]]:
        """The variants a verdict may rest on (weakest first), and why the others may not."""
        ok, skipped = [], []
        for v in quality_order(self.meas, self.cal):
            vc = self.cal.variants.get(v)
            why = "no calibration (no trace accuracy or rho)" if vc is None else vc.unusable()
            (skipped.append(f"{variant_label(v, self.cal)}: {why}") if why else ok.append(v))
        return ok, skipped

    def control(self, variant, n: int, p: float, rule: str = "keep_hard") -> tuple:
        """The control cell of a rule at (n, p): `random_correct` for a label-aware rule where it was measured (the
        same filter, no ranking), else `random`."""
        if THEORY_RULES.get(rule, ("", False))[1]:
            key = (variant[0], variant[1], n, "random_correct", p, 0.0)
            if key in self.meas.cells:
                return key
        return (variant[0], variant[1], n, "random", p, 0.0)

    def missing_control(self, variant, n: int, ps, rule: str = "keep_hard") -> str | None:
        """The keep fractions without a `random` control at (variant, n), as text (None: all there)."""
        missing = [p for p in ps if p < 1 and self.control(variant, n, p, rule) not in self.meas.cells]
        if not missing:
            return None
        return (f"{variant_label(variant)} n={n}: the `random` control is missing at p = "
                + ", ".join(f"{p:g}" for p in missing))

    def geometry(self, variant) -> str:
        """A variant's calibrated parameters as text, for the evidence."""
        vc = self.cal.variants[variant]
        d = "unknown" if vc.dim is None else f"{vc.dim:.0f}"
        return (f"rho {vc.rho:.3f}, rho* {vc.rho_star:.3f}, rho_g {vc.rho_g:.3f}, d_eff {d}, "
                f"lambda {vc.lam:g}")

    def no_dim_reason(self, variant, rule: str, ps, widths) -> str:
        """Why a cell is untestable without d_eff: the effect is unresolvable at any n/d, or n/d is unknown."""
        gain, nd, p = self.pred.largest_gain(variant, rule, ps)
        label = variant_label(variant, self.cal)
        if math.isnan(gain):
            return f"{label}: the theory has no counterpart of rule {rule}"
        resolution = min(widths) if widths else float("nan")
        if not gain > resolution:
            return (f"{label} ({self.geometry(variant)}): the theory predicts no less-is-more here: at most "
                    f"E(1) - E({rule}, p) = {gain:+.3f} (p = {p:g}, n/d = {nd:.1f}) over n/d in [0.5, 1000], "
                    f"under the {resolution:.3f} these cells resolve")
        notes = self.cal.variants[variant].notes
        return (f"{label}: d_eff is not calibrated ({notes[0] if notes else 'no learning curve'}); the theory "
                f"predicts up to {gain:+.3f} at n/d = {nd:.1f}, so n/d decides")

    def curves(self, variant, rule: str, eta: float = 0.0):
        """(n, curve) with p < 1 and p = 1 measured, n ascending."""
        out = []
        for n in self.meas.sizes(variant):
            curve = self.meas.curve(variant, n, rule, eta)
            if any(p < 1 for p, _ in curve) and curve and curve[-1][0] == 1.0:
                out.append((n, curve))
        return out


def _finish(pid: str, judged: list[dict], failures: list[str], reasons: list[str], extra: str = "") -> dict:
    """The verdict from the judged cells, the failures among them and the reasons others were left out."""
    left = ("Left out: " + "; ".join(dict.fromkeys(reasons)) + ".") if reasons else ""
    if not judged:
        return _verdict(pid, UNTESTABLE, ("No cell where the calibrated theory predicts a resolvable effect. " + left
                                          + extra).strip())
    agree = [c for c in judged if c["outcome"] == "agrees"]
    head = f"{len(agree)} of {len(judged)} judged cell(s) agree with the calibrated prediction"
    if failures:
        return _verdict(pid, INCONSISTENT, f"{head}; " + "; ".join(failures) + ". " + left + extra, judged)
    return _verdict(pid, CONSISTENT, f"{head}: " + "; ".join(c["text"] for c in judged) + ". " + left + extra, judged)


def verdict_i(j: Judge) -> dict[str, Any]:
    """(i): at cells where the theory predicts it, the best p < 1 beats p = 1 and random at that p, p* <= 0.5, and
    p* does not rise with n; with the LIMO/s1-style p <= small_keep_fraction line as a secondary."""
    meas, pred = j.meas, j.pred
    rules = [r for r in HARD_RULES if r in meas.rules()]
    if not rules:
        return _verdict("i", UNTESTABLE, "Not measured: the grid has no keep_hard / keep_hard_correct cells "
                        "(or their stratified forms).")
    variants, reasons = j.usable()
    judged, failures, secondary = [], [], []
    for variant in variants:
        vc = j.cal.variants[variant]
        for rule in rules:
            best_by_n = []
            for n, curve in j.curves(variant, rule):
                ps = [p for p, _ in curve if p < 1]
                keys = dict(curve)
                base = keys[1.0]
                missing = j.missing_control(variant, n, ps, rule)
                if missing:
                    reasons.append(missing)
                    continue
                if vc.dim is None:
                    widths = [meas.difference(keys[p], base)[2] - meas.difference(keys[p], base)[1] for p in ps]
                    reasons.append(j.no_dim_reason(variant, rule, ps, widths))
                    continue
                p_pred = min(ps, key=lambda p: (pred.key_error(keys[p]), -p))
                vs_all = _compare(meas, pred, keys[p_pred], base)
                vs_random = _compare(meas, pred, keys[p_pred], j.control(variant, n, p_pred, rule))
                if not (p_pred <= 0.5 and vs_all["predicted"] < 0 and vs_random["predicted"] < 0
                        and vs_all["testable"] and vs_random["testable"]):
                    reasons.append(
                        f"{variant_label(variant, j.cal)} n={n} {rule} ({j.geometry(variant)}): the theory "
                        "predicts best "
                        f"p {p_pred:g} with E - E(1) {vs_all['predicted']:+.3f} and E - E(random) "
                        f"{vs_random['predicted']:+.3f}, against a resolution of {vs_all['width']:.3f} / "
                        f"{vs_random['width']:.3f}: no resolvable less-is-more here")
                    continue
                p_meas = min(ps, key=lambda p: (meas.error(keys[p])[0], -p))
                m_all = meas.difference(keys[p_meas], base)
                m_random = meas.difference(keys[p_meas], j.control(variant, n, p_meas, rule))
                # The measured best p must not be a cell where the theory predicts a resolvable loss to p = 1:
                # a "win" there contradicts the theory, whatever the predicted best p did.
                at_meas = _compare(meas, pred, keys[p_meas], base)
                contradicted = at_meas["predicted"] > at_meas["width"]
                ok = p_meas <= 0.5 and m_all[2] < 0 and m_random[2] < 0 and not contradicted
                text = (f"{variant[0]} n={n} {rule}: predicted p* {p_pred:g} ({vs_all['predicted']:+.3f} vs p = 1, "
                        f"{vs_random['predicted']:+.3f} vs random); measured p* {p_meas:g}, "
                        f"E - E(1) {fmt_ci(m_all, True)}, "
                        f"E - E(random) {fmt_ci(m_random, True)}"
                        + (f", where the theory predicts {at_meas['predicted']:+.3f} vs p = 1" if contradicted else ""))
                judged.append(_cell(variant, n, rule, p_meas, "agrees" if ok else "disagrees", text=text,
                                    predicted_best_p=p_pred, measured_minus_p1=m_all, measured_minus_random=m_random))
                if not ok:
                    failures.append(text)
                best_by_n.append((n, p_meas, keys))
            # p* rises with n only where the measurement resolves it: at the larger pool, the smaller pool's best p
            # must be significantly worse than the new best. Flat-bottomed curves move their argmin by noise alone.
            rising = [(a, b) for a, b in zip(best_by_n, best_by_n[1:])
                      if b[1] > a[1] and a[1] in b[2] and meas.difference(b[2][a[1]], b[2][b[1]])[1] > 0]
            best_by_n = [(n, p) for n, p, _ in best_by_n]
            if rising:
                failures.append(f"{variant[0]} {rule}: the best p rises with n ("
                                + ", ".join(f"n={n}: {p:g}" for n, p in best_by_n) + ")")
            small = [(n, p, k) for n, c in j.curves(variant, rule) for p, k in c
                     if p <= j.cfg.report.small_keep_fraction]
            for n, p, k in small:
                d = meas.difference(k, meas.baseline(variant, n, rule))
                predicted = pred.key_error(k) - pred.key_error(meas.baseline(variant, n, rule))
                secondary.append((-n, f"{variant[0]} n={n} {rule} p={p:g}: measured E - E(1) {fmt_ci(d, True)}, "
                                      f"predicted {predicted:+.3f}"))
    secondary = [t for _, t in sorted(secondary, key=lambda e: e[0])]  # the largest pools first: the claim is there
    shown = secondary[:4] + ([f"{len(secondary) - 4} more in cells.csv"] if len(secondary) > 4 else [])
    extra = (" Secondary (LIMO/s1-style, p <= " f"{j.cfg.report.small_keep_fraction:g}; not the verdict): "
             + "; ".join(shown) + ".") if secondary else ""
    return _finish("i", judged, failures, reasons, extra)


def verdict_ii(j: Judge) -> dict[str, Any]:
    """(ii): label-agnostic keep-hard curves at n/d_eff <= small_n_over_d, where the theory predicts error falling
    monotonically in p by more than the resolution: no significant rise between neighbouring p, p = 1 significantly
    better than the smallest p, and no p < 1 significantly better than p = 1."""
    meas, pred = j.meas, j.pred
    agnostic = [r for r in AGNOSTIC_HARD_RULES if r in meas.rules()]
    if not agnostic:
        return _verdict("ii", UNTESTABLE, "Not measured: the grid has no label-agnostic keep_hard cells.")
    variants, reasons = j.usable()
    judged, failures = [], []
    limit = j.cfg.report.small_n_over_d
    for variant, rule in ((v, r) for v in variants for r in agnostic):
        vc = j.cal.variants[variant]
        for n, curve in j.curves(variant, rule):
            label = f"{variant_label(variant, j.cal)} n={n}"
            if vc.dim is None:
                reasons.append(f"{label}: n/d unknown (d_eff is not calibrated)")
                continue
            if n / vc.dim > limit:
                continue
            ps = [p for p, _ in curve]
            if len(ps) < 3:
                reasons.append(f"{label}: monotonicity needs two or more p < 1 beside p = 1 (has {ps})")
                continue
            missing = j.missing_control(variant, n, ps)
            if missing:
                reasons.append(missing)
                continue
            keys = [k for _, k in curve]
            predicted = [pred.key_error(k) for k in keys]
            drop = _compare(meas, pred, keys[0], keys[-1])
            monotone = all(a >= b for a, b in zip(predicted, predicted[1:]))
            if not (monotone and drop["predicted"] > 0 and drop["testable"]):
                reasons.append(f"{label} (n/d {n / vc.dim:.2f}): the theory predicts "
                               + ", ".join(f"p={p:g}: {e:.3f}" for p, e in zip(ps, predicted))
                               + f" (resolution {drop['width']:.3f}): not a resolvable monotone fall")
                continue
            rises = [(ps[i], ps[i + 1]) for i in range(len(ps) - 1)
                     if meas.difference(keys[i + 1], keys[i])[1] > 0]
            beats = [p for p, k in zip(ps[:-1], keys[:-1]) if meas.difference(k, keys[-1])[2] < 0]
            ok = not rises and not beats and drop["agrees"]
            text = (f"{variant[0]} n={n} (n/d {n / vc.dim:.2f}): E(p={ps[0]:g}) - E(1) {_text(drop)}"
                    + (f"; error rises from p={rises[0][0]:g} to {rises[0][1]:g}" if rises else "")
                    + (f"; p={beats[0]:g} beats p = 1" if beats else ""))
            judged.append(_cell(variant, n, rule, ps[0], "agrees" if ok else "disagrees", text=text))
            if not ok:
                failures.append(text)
    if not judged and not any("n/d" in r for r in reasons):
        reasons.append(f"no usable keep_hard curve at n/d_eff <= {limit:g}")
    return _finish("ii", judged, failures, reasons)


def verdict_iii(j: Judge) -> dict[str, Any]:
    """(iii): at (n, p) measured for a stronger and a weaker generator, where the theory predicts keep-hard for the
    stronger and keep-easy for the weaker, each by more than the resolution: both measured winners as predicted."""
    meas, pred = j.meas, j.pred
    pairs = [(h, e) for h, e in HARD_EASY_PAIRS if h in meas.rules() and e in meas.rules()]
    variants, reasons = j.usable()
    if not pairs:
        return _verdict("iii", UNTESTABLE, "Not measured: needs keep-hard and keep-easy cells.")
    if len(variants) < 2:
        return _verdict("iii", UNTESTABLE, "Needs two or more generators in regime with a calibration. "
                        + "; ".join(reasons) + ".")
    judged, failures = [], []
    for hard, easy in pairs:
        for i, weak in enumerate(variants):
            for strong in variants[i + 1:]:
                for n in sorted(set(meas.sizes(weak)) & set(meas.sizes(strong))):
                    ps = sorted(p for p, _ in j.meas.curve(strong, n, hard) if p < 1
                                and (weak[0], weak[1], n, hard, p, 0.0) in meas.cells
                                and (strong[0], strong[1], n, easy, p, 0.0) in meas.cells
                                and (weak[0], weak[1], n, easy, p, 0.0) in meas.cells)
                    for p in ps:
                        missing = (j.missing_control(strong, n, [p], hard)
                                   or j.missing_control(weak, n, [p], hard))
                        if missing:
                            reasons.append(missing)
                            continue
                        cs = _compare(meas, pred, (*strong, n, hard, p, 0.0), (*strong, n, easy, p, 0.0))
                        cw = _compare(meas, pred, (*weak, n, hard, p, 0.0), (*weak, n, easy, p, 0.0))
                        where = f"n={n} p={p:g} {hard} - {easy}: {strong[0]} {_text(cs)}, {weak[0]} {_text(cw)}"
                        if not (cs["predicted"] < 0 < cw["predicted"] and cs["testable"] and cw["testable"]):
                            reasons.append(f"{where} (resolution {cs['width']:.3f} / {cw['width']:.3f}): the theory "
                                           "predicts no resolvable flip here")
                            continue
                        ok = cs["agrees"] and cw["agrees"]
                        judged.append(_cell(strong, n, hard, p, "agrees" if ok else "disagrees", text=where,
                                            weaker=weak[0]))
                        if not ok:
                            failures.append(where)
    return _finish("iii", judged, failures, reasons)


def verdict_iv(j: Judge) -> dict[str, Any]:
    """(iv): a noisy-oracle cell whose clean counterpart is a less-is-more region (predicted and measured), where the
    theory predicts the noise costs more than the resolution: the noisy cell is significantly worse."""
    meas, pred = j.meas, j.pred
    noisy = sorted(k for k in meas.cells if k[5] > 0)
    if not noisy:
        return _verdict("iv", UNTESTABLE, "Not measured: no cell with oracle noise eta > 0.")
    variants, reasons = j.usable()
    judged, failures = [], []
    for key in noisy:
        variant, n, rule, p = key[:2], key[2], key[3], key[4]
        clean = key[:5] + (0.0,)
        if variant not in variants or clean not in meas.cells:
            if clean not in meas.cells:
                reasons.append(f"{key[0]} n={n} {rule} p={p:g} eta={key[5]:g}: no eta = 0 counterpart")
            continue
        missing = j.missing_control(variant, n, [p], rule)
        if missing:
            reasons.append(missing)
            continue
        where = f"{key[0]} n={n} {rule} p={p:g} eta={key[5]:g}"
        if j.cal.variants[variant].dim is None:
            reasons.append(f"{where}: d_eff is not calibrated")
            continue
        region = _compare(meas, pred, clean, meas.baseline(variant, n, rule))
        change = _compare(meas, pred, key, clean)
        if not (region["predicted"] < 0 and region["testable"]):
            reasons.append(f"{where}: the theory predicts no resolvable less-is-more at eta = 0 ({_text(region)}): "
                           "no region to shrink")
        elif not region["agrees"]:
            reasons.append(f"{where}: no measured less-is-more region at eta = 0 to shrink ({_text(region)})")
        elif not (change["predicted"] > 0 and change["testable"]):
            reasons.append(f"{where}: the theory predicts the noise changes the error by {change['predicted']:+.3f}, "
                           f"not a resolvable loss (resolution {change['width']:.3f})")
        else:
            text = f"{where}: E(eta) - E(0) {_text(change)} (region at eta = 0: {_text(region)})"
            judged.append(_cell(variant, n, rule, p, "agrees" if change["agrees"] else "disagrees", text=text,
                                eta=key[5]))
            if not change["agrees"]:
                failures.append(text)
    return _finish("iv", judged, failures, reasons)


def _loop_change(rounds, problem_ids, resamples, confidence, resolution, rule):
    """Error of the last round minus the first, with a paired interval (exact errors, preferred when every round
    has one: +-resolution)."""
    if all(r.get("exact_error") is not None for r in rounds):
        d = float(rounds[-1]["exact_error"]) - float(rounds[0]["exact_error"])
        return d, d - resolution, d + resolution
    m = round_matrix(rounds, problem_ids)
    return bootstrap_mean((m[0] - m[-1])[None, :], resamples, confidence, named_rng("loop", rule))


def verdict_v(j: Judge, chains, problem_ids) -> dict[str, Any]:
    """(v): four or more rounds; the theory's loop (verifier as the oracle) at the calibrated point must predict an
    all-data rise beyond the resolution and a flat or improving verified loop; then both are checked."""
    from pipeline.theory import model as theory

    rs = j.cfg.report
    verified = [r for r in ("keep_hard_correct", "correct_only", "keep_easy_correct") if r in chains]
    if "all" not in chains or not verified:
        return _verdict("v", UNTESTABLE, "Not measured: needs a collapse loop with `all` and a verified rule.")
    rounds = len(chains["all"])
    if rounds < MIN_LOOP_ROUNDS:
        return _verdict("v", UNTESTABLE, f"The loop ran {rounds} round(s); the collapse signature needs "
                        f"{MIN_LOOP_ROUNDS} or more (theory.md §2.6: about +0.013 theory units per round).")
    variant = (j.cfg.loop_generator, 0.0)
    vc = j.cal.variants.get(variant)
    why = "no calibration" if vc is None else vc.unusable() or (None if vc.dim else "d_eff is not calibrated")
    if why:
        return _verdict("v", UNTESTABLE, f"The loop's generator {variant[0]}: {why}.")
    main = verified[0]
    label = {"all": "all", "correct_only": "correct_only", "keep_hard_correct": "keep_hard+correct",
             "keep_easy_correct": "keep_easy+correct"}
    rules = [THEORY_RULES[r] for r in ("all", main)]
    # The loop's oracle is what verifies it: the reference answers (all but perfect) in the toy world, the
    # answering oracle in a linear world.
    oracle = (vc.rho_star, vc.rho_g) if vc.verifier == "oracle" else (VERIFIER_RHO_STAR, None)
    loop = theory.collapse_loop(vc.rho, oracle[0], j.cfg.loop.pool_size / vc.dim, vc.lam,
                                j.cfg.loop.keep_fraction, rounds, rho_g=oracle[1], rules=rules)
    def predicted(rule):
        e = loop.errors[label[rule]]
        return float(from_theory(e[rounds] - e[1], j.cal.task))

    change = {r: _loop_change(chains[r], problem_ids, rs.bootstrap, rs.confidence, j.meas.resolution, r)
              for r in ("all", main)}
    p_all, p_main = predicted("all"), predicted(main)
    width = change["all"][2] - change["all"][1]
    evidence = (f"error change from round 1 to {rounds}: all predicted {p_all:+.3f}, measured "
                f"{fmt_ci(change['all'], True)}; {main} predicted {p_main:+.3f}, measured {fmt_ci(change[main], True)}")
    if not (p_all > width and p_main <= width / 2):
        return _verdict("v", UNTESTABLE, evidence + f": the theory predicts no resolvable collapse here (resolution "
                        f"{width:.3f}).")
    ok = change["all"][1] > 0 and not change[main][1] > 0
    cell = _cell(variant, j.cfg.loop.pool_size, main, j.cfg.loop.keep_fraction, "agrees" if ok else "disagrees",
                 text=evidence)
    return _verdict("v", CONSISTENT if ok else INCONSISTENT, evidence + ".", [cell])


def all_verdicts(meas: Measurements, cal: Calibration, cfg, chains, problem_ids) -> dict[str, dict[str, Any]]:
    """``{"i": {...}, ..., "v": {...}}``: each prediction's verdict, evidence and judged cells."""
    j = Judge(meas, cal, cfg)
    return {"i": verdict_i(j), "ii": verdict_ii(j), "iii": verdict_iii(j), "iv": verdict_iv(j),
            "v": verdict_v(j, chains, problem_ids)}

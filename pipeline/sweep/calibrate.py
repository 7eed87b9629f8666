"""The theory's parameters measured on the sweep, and the calibrated theory's predictions at the measured cells.

Theory calibration (theory.md §5). The theory's learner is a binary classifier; an open-ended answer has no chance
level, so a model that answers correctly with probability a is mapped to a classifier that is right with
probability (1 + a) / 2 (a wrong answer counts as a coin flip on the theory's label). Hence generator quality
rho = cos(pi (1 - a_gen) / 2) with a_gen the pool's trace accuracy (times 1 - eps under generator noise), measured
errors map to (1 - accuracy) / 2, the oracle's rho* = cos(pi (1 - A)) with A the concordance of the (noised)
difficulty score with the problems' levels (or ``report.oracle_accuracy``), and the effective dimension is fitted on
the measured learning curve of random subsets (``theory.fit_effective_dim``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.sweep.measure import Measurements


def binary_accuracy(accuracy: float) -> float:
    """An open-ended accuracy mapped onto the theory's binary label: a wrong answer is a coin flip."""
    return 0.5 + 0.5 * float(accuracy)


def level_concordance(scores, levels) -> float:
    """P(score_i > score_j) + P(tie)/2 over problem pairs with level_i < level_j: how well a difficulty score
    (pass rate: high = easy) orders problems by their level. 0.5 is chance, 1 a perfect oracle."""
    scores = np.asarray(scores, dtype=float)
    levels = np.asarray(levels, dtype=float)
    ok = ~np.isnan(scores) & ~np.isnan(levels)
    scores, levels = scores[ok], levels[ok]
    distinct = np.unique(levels)
    wins = pairs = 0.0
    for i, a in enumerate(distinct):
        for b in distinct[i + 1:]:
            x, y = scores[levels == a], scores[levels == b]
            greater = (x[:, None] > y[None, :]).sum()
            ties = (x[:, None] == y[None, :]).sum()
            wins += greater + 0.5 * ties
            pairs += x.size * y.size
    return float(wins / pairs) if pairs else float("nan")


def oracle_accuracy(samples, eta: float, seed: int) -> float:
    """Concordance with the levels of the difficulty score the rules see under oracle noise ``eta``."""
    from pipeline import columns as C
    from stages.curate import CurateConfig, plan

    plan_cfg = CurateConfig(rule="keep_hard", label_aware=False, oracle_noise=eta, seed=seed, report=False)
    decided = plan(samples, plan_cfg, seed)
    frame = samples[[C.PROBLEM_ID, C.LEVEL]].assign(score=decided[C.CURATION_SCORE].to_numpy())
    problems = frame.drop_duplicates(C.PROBLEM_ID)
    return level_concordance(problems["score"], problems[C.LEVEL])


@dataclass
class Calibration:
    """The theory's parameters as measured on the sweep."""

    generator_accuracy: dict[tuple[str, float], float]  # variant -> binary-mapped accuracy
    trace_accuracy: dict[tuple[str, float], float]  # variant -> measured trace accuracy
    oracle_accuracy: dict[float, float]  # eta -> oracle accuracy
    oracle_source: str
    dims: dict[tuple[str, float], dict[str, Any]]  # variant -> fit details
    dim: float | None
    dim_variant: tuple[str, float] | None
    notes: list[str]


def calibrate(meas: Measurements, table, manifest, cfg, samples_of) -> Calibration:
    """rho from the pool's trace accuracy, rho* from oracle agreement, d_eff from the random learning curve."""
    from pipeline.theory import model as theory

    notes: list[str] = []
    trace = {}
    gen_acc = {}
    for variant in meas.variants():
        gen, eps = variant
        a = manifest["generators"][gen]["trace_accuracy"] * (1.0 - eps)
        trace[variant] = a
        gen_acc[variant] = binary_accuracy(a)
    etas = sorted({k[5] for k in meas.cells} | {0.0})
    oracle: dict[float, float] = {}
    source = "report.oracle_accuracy"
    if cfg.report.oracle_accuracy is not None:
        oracle = {eta: 0.5 + (cfg.report.oracle_accuracy - 0.5) * (1 - eta) for eta in etas}
        notes.append("oracle accuracy from the config; under oracle noise eta it shrinks to "
                     "0.5 + (a - 0.5)(1 - eta)")
    else:
        gen = max(gen_acc, key=gen_acc.get)[0] if gen_acc else next(iter(manifest["generators"]))
        samples = samples_of(gen)
        if "level" in samples and samples["level"].notna().any():
            source = f"concordance of the pass rate ({gen}'s samples) with the problems' levels"
            for eta in etas:
                value = oracle_accuracy(samples, eta, cfg.grid.seeds[0])
                oracle[eta] = float(min(max(value, 0.5), 1.0))
        else:
            source = "unavailable"
            notes.append("the pool has no levels and report.oracle_accuracy is unset: no theory overlay")
    dims: dict[tuple[str, float], dict[str, Any]] = {}
    ok = table[(table["status"] == "ok") & (table["kind"] == "grid")]
    for variant in meas.variants():
        sub = ok[(ok["generator"] == variant[0]) & (ok["generator_noise"] == variant[1])
                 & (ok["rule"].isin(["all", "random"])) & (ok["oracle_noise"] == 0)]
        if sub.empty:
            continue
        points = sub.groupby(["pool_size", "rule", "keep_fraction"]).agg(kept=("kept_problems", "mean")).reset_index()
        xs, ys = [], []
        for row in points.to_dict("records"):
            key = (variant[0], variant[1], int(row["pool_size"]), row["rule"], float(row["keep_fraction"]), 0.0)
            err = meas.error(key)[0]
            if not math.isnan(err) and row["kept"] > 0:
                xs.append(float(row["kept"]))
                ys.append((err) / 2.0)  # theory units: (1 - accuracy) / 2
        if len(set(xs)) < 2:
            continue
        a = gen_acc[variant]
        try:
            dim = theory.fit_effective_dim(xs, ys, a, lam=cfg.report.lam)
        except ValueError as e:
            notes.append(f"d_eff fit for {variant[0]} failed: {e}")
            continue
        rho = theory.cosine_from_accuracy(a)
        predicted = [theory.asymptotic_error(dim / x, rho, 0.0, 0.0, "all", 1.0, cfg.report.lam) for x in xs]
        rmse = float(np.sqrt(np.mean((np.array(predicted) - np.array(ys)) ** 2)))
        floor = (1.0 - a)
        dims[variant] = {"dim": dim, "points": sorted(zip(xs, ys)), "rmse": rmse, "floor": floor,
                         "below_floor": int(sum(y < floor for y in ys))}
    dim = dim_variant = None
    if dims:
        dim_variant = max(dims, key=lambda v: (len(dims[v]["points"]), gen_acc[v]))
        dim = dims[dim_variant]["dim"]
        if dims[dim_variant]["below_floor"]:
            notes.append(f"{dims[dim_variant]['below_floor']} point(s) of the learning curve lie below the "
                         f"generator's own error, which the theory's learner cannot reach: the student was "
                         "pretrained (it starts from its own knowledge, not from scratch)")
    else:
        notes.append("no random/all learning curve with two or more sizes: d_eff not fitted, no theory overlay")
    return Calibration(gen_acc, trace, oracle, source, dims, dim, dim_variant, notes)


def quality_order(meas: Measurements, cal: Calibration) -> list[tuple[str, float]]:
    """The measured (generator, eps) variants, weakest first (by the pool's trace accuracy)."""
    return sorted(meas.variants(), key=lambda v: cal.trace_accuracy.get(v, 0.0))


def variant_label(variant, cal: Calibration | None = None) -> str:
    """A (generator, eps) variant as text, with its trace accuracy when ``cal`` is given."""
    gen, eps = variant
    label = gen if not eps else f"{gen} eps={eps:g}"
    if cal is not None and variant in cal.trace_accuracy:
        label += f" (acc {cal.trace_accuracy[variant]:.2f})"
    return label


def theory_prediction(meas: Measurements, cal: Calibration, cfg, rule: str, label_aware: bool):
    """The calibrated theory at the measured cells (best p over the measured p grid) and on a dense grid."""
    from pipeline.theory import model as theory

    if cal.dim is None or 0.0 not in cal.oracle_accuracy:
        return None
    variants = quality_order(meas, cal)
    accs = [cal.generator_accuracy[v] for v in variants]
    ps = sorted({k[4] for k in meas.cells if k[3] == rule} | {1.0})
    keep = [p for p in ps if p < 1] or list(theory.DEFAULT_KEEP_FRACTIONS)
    sizes = meas.sizes()
    at_cells = theory.predicted_boundary(accs, cal.oracle_accuracy[0.0], cal.dim, pool_sizes=sizes, lam=cfg.report.lam,
                                         rule="keep_hard", label_aware=label_aware,
                                         tolerance=cfg.report.tolerance, keep_fractions=keep)
    lo, hi = min(accs), max(accs)
    span = max(hi - lo, 0.05)
    dense_acc = np.linspace(max(0.5, lo - 0.5 * span), min(0.999, hi + 0.5 * span), 30)
    dense_sizes = np.geomspace(min(sizes) / 2, max(sizes) * 2, 30)
    dense = theory.predicted_boundary(dense_acc, cal.oracle_accuracy[0.0], cal.dim, pool_sizes=dense_sizes,
                                      lam=cfg.report.lam, rule="keep_hard", label_aware=label_aware,
                                      tolerance=cfg.report.tolerance)
    return {"variants": variants, "sizes": sizes, "at_cells": at_cells, "dense": dense, "keep": keep}


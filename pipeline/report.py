"""The sweep report: measurements beside the theory, and a verdict for each prediction of theory.md §5.

``write_report(run_dir, cfg, table, manifest, reference)`` writes ``run_dir/report/``:

- ``report.md``: setup, timing, the verdict table, the phase-diagram numbers, the rule-winner map, the theory's
  calibration and its predicted boundary beside the measured one, every grid cell with its interval, the oracle-noise
  and collapse-loop results, and every failed trial;
- ``results.csv`` (one row per trial) and ``cells.csv`` (one row per cell, seeds pooled, with intervals);
- PNGs: ``error_vs_p.png`` (and ``error_vs_p_<tier>.png``), ``phase_diagram.png``, ``rule_winner.png``,
  ``theory_overlay.png``, ``learning_curve.png``, ``oracle_noise.png``, ``collapse_loop.png``.

Statistics. Every trial is scored on the same held-out problems, so a cell is a seeds x problems matrix of verdicts.
Intervals are percentile bootstraps that resample seeds and problems together; a difference between two cells is
bootstrapped on the paired matrix (same seeds, same problems), and "significant" means its interval excludes 0.

Theory calibration (theory.md §5). The theory's learner is a binary classifier; an open-ended answer has no chance
level, so a model that answers correctly with probability a is mapped to a classifier that is right with
probability (1 + a) / 2 (a wrong answer counts as a coin flip on the theory's label). Hence generator quality
rho = cos(pi (1 - a_gen) / 2) with a_gen the pool's trace accuracy (times 1 - eps under generator noise), measured
errors map to (1 - accuracy) / 2, the oracle's rho* = cos(pi (1 - A)) with A the concordance of the (noised)
difficulty score with the problems' levels (or ``report.oracle_accuracy``), and the effective dimension is fitted on
the measured learning curve of random subsets (``theory.fit_effective_dim``).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OVERALL = "overall"
CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"


# -- cells and intervals -------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One grid cell, seeds pooled: verdicts as a seeds x problems matrix (NaN where a trial is missing)."""

    key: tuple  # (generator, generator_noise, pool_size, rule, keep_fraction, oracle_noise)
    seeds: list[int]
    matrix: np.ndarray
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def variant(self) -> tuple[str, float]:
        return self.key[0], self.key[1]

    def trial_mean(self, name: str) -> float:
        """Mean over the cell's trials of a curation figure (``kept_rows``, ``kept_trace_accuracy``)."""
        return float(np.mean([t.get(name, np.nan) for t in self.trials]))


def _rng(*names: object) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(repr(n).encode()) for n in names])


def bootstrap_mean(matrix: np.ndarray, resamples: int, confidence: float, rng: np.random.Generator):
    """Mean of a seeds x problems matrix with a percentile interval that resamples seeds and problems together.

    Returns (mean, low, high). With one seed the interval covers problems only.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.size == 0 or np.isnan(m).all():
        return float("nan"), float("nan"), float("nan")
    m = np.where(np.isnan(m), np.nanmean(m, axis=0, keepdims=True), m)  # a missing seed borrows the others' mean
    s, p = m.shape
    seeds = rng.integers(0, s, size=(resamples, s))
    seed_weights = np.zeros((resamples, s))
    np.add.at(seed_weights, (np.arange(resamples)[:, None], seeds), 1.0 / s)
    per_problem = seed_weights @ m  # each resample's seed mean, per problem
    problems = rng.integers(0, p, size=(resamples, p))
    means = np.take_along_axis(per_problem, problems, axis=1).mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(m.mean()), float(low), float(high)


class Measurements:
    """The sweep's trials as cells over one held-out problem index, with error statistics per group of levels."""

    def __init__(self, run_dir: Path, table, groups: dict[str, np.ndarray], problem_ids: list[str],
                 resamples: int, confidence: float) -> None:
        from pipeline.sweep import SCORES_FILE, TRIALS_DIR

        self.groups = groups
        self.resamples = resamples
        self.confidence = confidence
        index = {pid: i for i, pid in enumerate(problem_ids)}
        ok = table[(table["status"] == "ok") & (table["kind"] == "grid")]
        by_key: dict[tuple, list[dict]] = {}
        for row in ok.to_dict("records"):
            key = (row["generator"], float(row["generator_noise"]), int(row["pool_size"]), row["rule"],
                   float(row["keep_fraction"]), float(row["oracle_noise"]))
            by_key.setdefault(key, []).append(row)
        self.cells: dict[tuple, Cell] = {}
        for key, rows in by_key.items():
            rows.sort(key=lambda r: r["seed"])
            matrix = np.full((len(rows), len(problem_ids)), np.nan)
            for i, row in enumerate(rows):
                scores = _read_scores(run_dir / TRIALS_DIR / row["trial_id"] / SCORES_FILE)
                for pid, correct in zip(scores["problem_id"], scores["correct"]):
                    j = index.get(pid)
                    if j is not None:
                        matrix[i, j] = correct
            self.cells[key] = Cell(key, [int(r["seed"]) for r in rows], matrix, rows)
        self._stats: dict[tuple, tuple[float, float, float]] = {}

    def error(self, key: tuple, group: str = OVERALL) -> tuple[float, float, float]:
        """(error, low, high) of a cell on a group of problems; NaNs when the cell was not measured."""
        if key not in self.cells:
            return (float("nan"),) * 3
        memo = (key, group)
        if memo not in self._stats:
            mask = self.groups[group]
            acc, lo, hi = bootstrap_mean(self.cells[key].matrix[:, mask], self.resamples, self.confidence,
                                         _rng(key, group))
            self._stats[memo] = (1.0 - acc, 1.0 - hi, 1.0 - lo)
        return self._stats[memo]

    def difference(self, a: tuple, b: tuple, group: str = OVERALL) -> tuple[float, float, float]:
        """Error of ``a`` minus error of ``b`` with a paired interval (common seeds, same problems)."""
        if a not in self.cells or b not in self.cells:
            return (float("nan"),) * 3
        ca, cb = self.cells[a], self.cells[b]
        common = [s for s in ca.seeds if s in cb.seeds]
        if common:
            ma = ca.matrix[[ca.seeds.index(s) for s in common]]
            mb = cb.matrix[[cb.seeds.index(s) for s in common]]
        else:  # no shared seed: compare seed means problem by problem
            ma, mb = np.nanmean(ca.matrix, axis=0, keepdims=True), np.nanmean(cb.matrix, axis=0, keepdims=True)
        mask = self.groups[group]
        d, lo, hi = bootstrap_mean((mb - ma)[:, mask], self.resamples, self.confidence, _rng("diff", a, b, group))
        return d, lo, hi

    # -- views -----------------------------------------------------------------------------------------------------

    def variants(self) -> list[tuple[str, float]]:
        """(generator, eps) pairs measured."""
        return sorted({c.variant for c in self.cells.values()})

    def sizes(self, variant=None) -> list[int]:
        return sorted({k[2] for k in self.cells if variant is None or k[:2] == tuple(variant)})

    def rules(self) -> list[str]:
        return sorted({k[3] for k in self.cells})

    def curve(self, variant, n: int, rule: str, eta: float = 0.0) -> list[tuple[float, tuple]]:
        """(p, cell key) of a rule's curve, p ascending, with p = 1 taken from the family's baseline cell."""
        from pipeline.sweep import family_baseline

        points = [(k[4], k) for k in self.cells
                  if k[:3] == (variant[0], variant[1], n) and k[3] == rule and k[4] < 1.0 and k[5] == eta]
        base = (variant[0], variant[1], n, family_baseline(rule), 1.0, 0.0)
        if base in self.cells:
            points.append((1.0, base))
        return sorted(points)

    def baseline(self, variant, n: int, rule: str) -> tuple:
        from pipeline.sweep import family_baseline

        return (variant[0], variant[1], n, family_baseline(rule), 1.0, 0.0)


def _read_scores(path: Path):
    import pandas as pd

    return pd.read_parquet(path, columns=["problem_id", "correct"])


def _significant_below(interval: tuple[float, float, float]) -> bool:
    return bool(interval[2] < 0)


def _significant_above(interval: tuple[float, float, float]) -> bool:
    return bool(interval[1] > 0)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_ci(t: tuple[float, float, float], signed: bool = False) -> str:
    if any(math.isnan(v) for v in t):
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(t[0])} [{f.format(t[1])}, {f.format(t[2])}]"


# -- phase diagram, rule winner --------------------------------------------------------------------------------------


@dataclass
class PhaseCell:
    """Best keep fraction of one rule at one (variant, n), its error ratio to p = 1 and the paired difference."""

    best_p: float
    ratio: float
    difference: tuple[float, float, float]  # E(best) - E(1)
    points: int


def phase_cell(meas: Measurements, variant, n: int, rule: str, eta: float = 0.0,
               group: str = OVERALL) -> PhaseCell | None:
    """The measured phase-diagram entry, or None when the rule has no p < 1 cell there."""
    curve = meas.curve(variant, n, rule, eta)
    if not any(p < 1 for p, _ in curve) or not any(p == 1 for p, _ in curve):
        return None
    errors = [(meas.error(k, group)[0], p, k) for p, k in curve]
    best_err, best_p, best_key = min(errors, key=lambda e: (e[0], -e[1]))
    base_key = meas.baseline(variant, n, rule)
    base_err = meas.error(base_key, group)[0]
    diff = meas.difference(best_key, base_key, group) if best_p < 1 else (0.0, 0.0, 0.0)
    ratio = best_err / base_err if base_err > 0 else float("nan")
    return PhaseCell(best_p, ratio, diff, len(curve))


def rule_winner(meas: Measurements, variant, n: int, hard: str, easy: str, eta: float = 0.0,
                group: str = OVERALL) -> dict[str, Any] | None:
    """Keep-hard against keep-easy at matched p < 1: +1 hard significantly better (and never significantly
    worse), -1 the reverse, 0 neither; with the per-p differences E_hard - E_easy."""
    hard_curve = dict(meas.curve(variant, n, hard, eta))
    easy_curve = dict(meas.curve(variant, n, easy, eta))
    matched = sorted(p for p in hard_curve if p < 1 and p in easy_curve)
    if not matched:
        return None
    diffs = {p: meas.difference(hard_curve[p], easy_curve[p], group) for p in matched}
    hard_better = any(_significant_below(d) for d in diffs.values())
    easy_better = any(_significant_above(d) for d in diffs.values())
    sign = 1 if hard_better and not easy_better else -1 if easy_better and not hard_better else 0
    mean_diff = float(np.mean([d[0] for d in diffs.values()]))
    return {"sign": sign, "differences": diffs, "mean_difference": mean_diff}


# -- theory calibration ------------------------------------------------------------------------------------------


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
    from pipeline import theory

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


# -- verdicts ------------------------------------------------------------------------------------------------------


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


def _quality_order(meas: Measurements, cal: Calibration) -> list[tuple[str, float]]:
    return sorted(meas.variants(), key=lambda v: cal.trace_accuracy.get(v, 0.0))


def verdict_i(meas: Measurements, cal: Calibration, small: float) -> dict[str, str]:
    variants = _quality_order(meas, cal)
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
    better = [t for t in tested if _significant_below(t[2])]
    worse = [t for t in tested if _significant_above(t[2])]
    listing = "; ".join(f"{r} p={p:g}: E - E(1) = {_fmt_ci(d, True)}" for r, p, d in tested)
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
    variants = _quality_order(meas, cal)
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
        if any(_significant_below(d) for _, d in diffs):
            p, d = min(diffs, key=lambda t: t[1][0])
            sig_better.append(f"{label}: p={p:g} {_fmt_ci(d, True)}")
        if _significant_above(diffs[0][1]):
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
    variants = _quality_order(meas, cal)
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
    variants = _quality_order(meas, cal)
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
        lines.append(f"{key[0]} n={key[2]} {key[3]} p={key[4]:g}: E - E(1) at eta=0 {_fmt_ci(gain_clean, True)}, "
                     f"at eta={key[5]:g} {_fmt_ci(gain_noisy, True)}; E(eta) - E(0) = {_fmt_ci(change, True)} "
                     f"(oracle accuracy {acc0:.2f} -> {acc1:.2f})")
        regions.append(_significant_below(gain_clean))
        if _significant_above(change):
            hurts.append(key)
        if _significant_below(change):
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


def loop_rounds(run_dir: Path, table) -> dict[str, list[dict[str, Any]]]:
    """rule -> the loop chain's rounds (round, data accuracy, kept rows, per-problem scores)."""
    import pandas as pd

    from pipeline.sweep import RESULT_FILE, SCORES_FILE, TRIALS_DIR

    chains: dict[str, list[dict[str, Any]]] = {}
    for row in table[(table["kind"] == "loop") & (table["status"] == "ok")].to_dict("records"):
        trial_dir = run_dir / TRIALS_DIR / row["trial_id"]
        result = json.loads((trial_dir / RESULT_FILE).read_text())
        rounds = []
        for entry in result["rounds"]:
            scores = pd.read_parquet(trial_dir / f"round_{entry['round']}" / SCORES_FILE)
            rounds.append({**entry, "scores": scores})
        chains[row["rule"]] = rounds
    return chains


def _round_matrix(rounds, problem_ids: list[str]) -> np.ndarray:
    index = {pid: i for i, pid in enumerate(problem_ids)}
    m = np.full((len(rounds), len(problem_ids)), np.nan)
    for r, entry in enumerate(rounds):
        for pid, c in zip(entry["scores"]["problem_id"], entry["scores"]["correct"]):
            if pid in index:
                m[r, index[pid]] = c
    return m


def verdict_v(chains, problem_ids, resamples: int, confidence: float) -> dict[str, str]:
    if "all" not in chains:
        return _verdict("(v)", INCONCLUSIVE, "not measured: no collapse loop with the all-data rule (loop.rounds)")
    verified = [r for r in ("keep_hard_correct", "correct_only", "keep_easy_correct") if r in chains]
    if not verified or len(chains["all"]) < 2:
        return _verdict("(v)", INCONCLUSIVE, "not measured: needs a verified rule and two or more rounds")

    def change(rule):
        m = _round_matrix(chains[rule], problem_ids)
        acc, lo, hi = bootstrap_mean((m[0] - m[-1])[None, :], resamples, confidence, _rng("loop", rule))
        return acc, lo, hi  # error(last) - error(first)

    all_change = change("all")
    main = verified[0]
    main_change = change(main)
    rounds = len(chains["all"])
    evidence = (f"error change from round 1 to round {rounds}: all {_fmt_ci(all_change, True)}, {main} "
                f"{_fmt_ci(main_change, True)}" + "".join(f", {r} {_fmt_ci(change(r), True)}" for r in verified[1:]))
    if _significant_above(all_change) and not _significant_above(main_change):
        return _verdict("(v)", CONFIRMED, evidence + ".")
    if _significant_above(main_change) or _significant_below(all_change):
        return _verdict("(v)", REFUTED, evidence + (" The verified loop degrades." if _significant_above(main_change)
                                                    else " All-data improves over the rounds."))
    return _verdict("(v)", INCONCLUSIVE, evidence + (": all-data does not degrade beyond the interval."
                                                    if not _significant_above(all_change) else "."))


# -- plots ---------------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _variant_label(variant, cal: Calibration | None = None) -> str:
    gen, eps = variant
    label = gen if not eps else f"{gen} eps={eps:g}"
    if cal is not None and variant in cal.trace_accuracy:
        label += f" (acc {cal.trace_accuracy[variant]:.2f})"
    return label


def plot_error_vs_p(meas: Measurements, cal: Calibration, path: Path, group: str, reference_error: float | None):
    plt = _plt()
    variants = _quality_order(meas, cal)
    sizes = meas.sizes()
    rules = [r for r in meas.rules() if r not in ("all", "correct_only")] or meas.rules()
    fig, axes = plt.subplots(len(variants), len(sizes), figsize=(3.6 * len(sizes), 2.9 * len(variants)),
                             squeeze=False, sharey=True)
    colors = {r: f"C{i}" for i, r in enumerate(sorted(set(rules) | {"all", "correct_only"}))}
    keep = sorted({k[4] for k in meas.cells})
    for i, variant in enumerate(variants):
        for j, n in enumerate(sizes):
            ax = axes[i][j]
            for rule in rules:
                for eta in sorted({k[5] for k in meas.cells if k[3] == rule}):
                    curve = meas.curve(variant, n, rule, eta)
                    if not any(p < 1 for p, _ in curve):
                        continue
                    stats = [meas.error(k, group) for _, k in curve]
                    ps = [math.log10(p) for p, _ in curve]  # a linear axis over log10 p: cheap ticks
                    label = rule if eta == 0 else f"{rule} eta={eta:g}"
                    ax.plot(ps, [s[0] for s in stats], "o-" if eta == 0 else "s--", color=colors[rule],
                            label=label, alpha=1.0 if eta == 0 else 0.6)
                    ax.fill_between(ps, [s[1] for s in stats], [s[2] for s in stats], color=colors[rule], alpha=0.15)
            if reference_error is not None:
                ax.axhline(reference_error, color="gray", ls=":", lw=1, label="student before training")
            ax.set_xticks([math.log10(p) for p in keep], [f"{p:g}" for p in keep], fontsize=7)
            ax.set_title(f"{_variant_label(variant)}, n={n}", fontsize=9)
            if i == len(variants) - 1:
                ax.set_xlabel("keep fraction p (log scale)")
            if j == 0:
                ax.set_ylabel(f"error ({group})")
            ax.grid(alpha=0.3)
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(6, len(handles)),
               fontsize=8)
    fig.suptitle(f"Error against keep fraction ({group}; bands: {int(100 * meas.confidence)}% bootstrap over "
                 "seeds and problems)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _heatmap(ax, values, text, xlabels, ylabels, title, cmap, vmin=None, vmax=None):
    masked = np.ma.masked_invalid(np.asarray(values, dtype=float))
    im = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=8)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    for i in range(len(ylabels)):
        for j in range(len(xlabels)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("pool size n")
    return im


def phase_tables(meas: Measurements, cal: Calibration, rules: list[str]) -> dict[str, dict[str, Any]]:
    """rule -> {"variants", "sizes", "best_p", "ratio", "significant", "difference"} grids (variants x sizes)."""
    variants = _quality_order(meas, cal)
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
                sig[i, j] = -1 if _significant_below(cell.difference) else 0
        if np.isfinite(best).any():
            out[rule] = {"variants": variants, "sizes": sizes, "best_p": best, "ratio": ratio, "significant": sig,
                         "difference": diff}
    return out


def plot_phase(tables, cal: Calibration, path: Path):
    plt = _plt()
    if not tables:
        return False
    fig, axes = plt.subplots(len(tables), 2, figsize=(9, 2.4 + 1.4 * len(tables)), squeeze=False)
    for row, (rule, t) in enumerate(tables.items()):
        ylabels = [_variant_label(v, cal) for v in t["variants"]]
        xlabels = [str(n) for n in t["sizes"]]
        text_p = [[("" if np.isnan(b) else f"{b:g}") for b in r] for r in t["best_p"]]
        text_r = [[("" if np.isnan(x) else f"{x:.2f}" + ("*" if s else "")) for x, s in zip(r, sr)]
                  for r, sr in zip(t["ratio"], t["significant"])]
        im = _heatmap(axes[row][0], np.log10(t["best_p"]), text_p, xlabels, ylabels, f"{rule}: best p", "viridis",
                      vmin=-2, vmax=0)
        fig.colorbar(im, ax=axes[row][0], label="log10 best p")
        im = _heatmap(axes[row][1], t["ratio"], text_r, xlabels, ylabels,
                      f"{rule}: E(best p)/E(1)  (* interval excludes 0)", "RdBu", vmin=0.8, vmax=1.2)
        fig.colorbar(im, ax=axes[row][1], label="ratio (<1: less is more)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def winner_table(meas: Measurements, cal: Calibration):
    """(hard, easy, variants, sizes, grid of rule_winner dicts) for each measured hard/easy pair."""
    variants = _quality_order(meas, cal)
    sizes = meas.sizes()
    out = []
    for hard, easy in (("keep_hard", "keep_easy"), ("keep_hard_correct", "keep_easy_correct")):
        if hard in meas.rules() and easy in meas.rules():
            grid = [[rule_winner(meas, v, n, hard, easy) for n in sizes] for v in variants]
            if any(w is not None for row in grid for w in row):
                out.append((hard, easy, variants, sizes, grid))
    return out


def plot_winner(tables, cal: Calibration, path: Path) -> bool:
    plt = _plt()
    if not tables:
        return False
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.2), squeeze=False)
    for ax, (hard, easy, variants, sizes, grid) in zip(axes[0], tables):
        values = [[np.nan if w is None else w["mean_difference"] for w in row] for row in grid]
        text = [["" if w is None else f"{w['mean_difference']:+.3f}" + {1: " H", -1: " E", 0: ""}[w["sign"]]
                 for w in row] for row in grid]
        lim = max(0.02, np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.02)
        _heatmap(ax, values, text, [str(n) for n in sizes], [_variant_label(v, cal) for v in variants],
                 f"E({hard}) - E({easy})\n(H/E: significant winner at matched p)", "RdBu_r", -lim, lim)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def theory_prediction(meas: Measurements, cal: Calibration, cfg, rule: str, label_aware: bool):
    """The calibrated theory at the measured cells (best p over the measured p grid) and on a dense grid."""
    from pipeline import theory

    if cal.dim is None or 0.0 not in cal.oracle_accuracy:
        return None
    variants = _quality_order(meas, cal)
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


def plot_theory(pred, phase, cal: Calibration, tolerance: float, path: Path) -> bool:
    plt = _plt()
    if pred is None:
        return False
    dense = pred["dense"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x, y = dense.pool_sizes, dense.generator_accuracy
    im = axes[0].pcolormesh(x, y, dense.ratio, cmap="RdBu", vmin=0.6, vmax=1.4, shading="auto")
    if np.nanmin(dense.ratio_vs_baseline) < 1 - tolerance < np.nanmax(dense.ratio_vs_baseline):
        axes[0].contour(x, y, dense.ratio_vs_baseline, levels=[1 - tolerance], colors="k", linewidths=1.5)
    axes[0].set_xscale("log")
    fig.colorbar(im, ax=axes[0], label="E(best p)/E(1)")
    axes[0].set_title(f"theory: {dense.rule}{'+correct' if dense.label_aware else ''}, d_eff={cal.dim:.0f}, "
                      f"oracle acc={cal.oracle_accuracy[0.0]:.2f}\n(black: predicted boundary, where the rule "
                      "beats p = 1 and random; squares: measured,\nthick edge: significant)", fontsize=8)
    axes[0].set_xlabel("pool size n")
    axes[0].set_ylabel("generator accuracy (binary-mapped)")
    if phase is not None:
        for i, v in enumerate(phase["variants"]):
            for j, n in enumerate(phase["sizes"]):
                r = phase["ratio"][i, j]
                if np.isfinite(r):
                    axes[0].scatter([n], [cal.generator_accuracy[v]], c=[r], cmap="RdBu", vmin=0.6, vmax=1.4,
                                    marker="s", s=160, edgecolors="k" if phase["significant"][i, j] else "gray",
                                    linewidths=2 if phase["significant"][i, j] else 0.8)
    im = axes[1].pcolormesh(x, y, np.log10(dense.best_p), cmap="viridis", vmin=-2, vmax=0, shading="auto")
    axes[1].set_xscale("log")
    fig.colorbar(im, ax=axes[1], label="log10 predicted best p")
    axes[1].set_title("theory: best keep fraction", fontsize=9)
    axes[1].set_xlabel("pool size n")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_learning_curve(cal: Calibration, lam: float, path: Path) -> bool:
    from pipeline import theory

    plt = _plt()
    if not cal.dims:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (variant, fit) in enumerate(sorted(cal.dims.items())):
        xs, ys = zip(*fit["points"])
        ax.plot(xs, ys, "o", color=f"C{i}", label=f"{_variant_label(variant, cal)} measured")
        grid = np.geomspace(min(xs) / 2, max(xs) * 2, 60)
        rho = theory.cosine_from_accuracy(cal.generator_accuracy[variant])
        pred = [theory.asymptotic_error(fit["dim"] / g, rho, 0.0, 0.0, "all", 1.0, lam) for g in grid]
        ax.plot(grid, pred, "-", color=f"C{i}", label=f"theory, d_eff={fit['dim']:.0f}")
        ax.axhline(fit["floor"], color=f"C{i}", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training problems (random subsets)")
    ax.set_ylabel("error in theory units, (1 - acc)/2")
    ax.set_title("learning curve and the fitted effective dimension\n(dotted: the generator's own error)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_oracle_noise(meas: Measurements, cal: Calibration, path: Path) -> bool:
    plt = _plt()
    noisy = sorted({k[:5] for k in meas.cells if k[5] > 0})
    if not noisy:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, base in enumerate(noisy):
        etas = sorted({k[5] for k in meas.cells if k[:5] == base})
        stats = [meas.error(base + (eta,)) for eta in etas]
        ax.errorbar(etas, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                    fmt="o-", color=f"C{i}", capsize=3, label=f"{base[0]} n={base[2]} {base[3]} p={base[4]:g}")
        full = meas.error(meas.baseline(base[:2], base[2], base[3]))
        ax.axhline(full[0], color=f"C{i}", ls=":", lw=1)
    ax.set_xlabel("oracle noise eta (fraction of random difficulty scores)")
    ax.set_ylabel("error (overall)")
    ax.set_title("curation under a noisier oracle (dotted: p = 1)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_loop(chains, problem_ids, reference_error, resamples, confidence, path: Path) -> bool:
    plt = _plt()
    if not chains:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (rule, rounds) in enumerate(sorted(chains.items())):
        m = _round_matrix(rounds, problem_ids)
        stats = [bootstrap_mean(m[r][None, :], resamples, confidence, _rng("loop-plot", rule, r)) for r in range(len(m))]
        xs = [e["round"] for e in rounds]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                    fmt="o-", capsize=3, color=f"C{i}", label=rule)
    if reference_error is not None:
        ax.axhline(1 - reference_error, color="gray", ls=":", lw=1, label="student before training")
    ax.set_xlabel("round (1: trained on the generator's data; t > 1: on round t-1's model's data)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("collapse loop", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


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
        table: the results table (``pipeline.sweep.results_table``), one row per trial.
        manifest: the pool manifest (``pipeline.sweep.build_pools``).
        reference: the reference evaluation's metrics (student and generators before curation).
        timing: seconds per phase and the load average, shown in the report.
        figures: draw the PNGs (off: tables and verdicts only).
    """
    import pandas as pd

    from pipeline.sweep import REFERENCE_DIR, pool_samples, read_scores

    run_dir = Path(run_dir)
    out = run_dir / "report"
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
        rows.append([name, f"`{g['model']}`", g["problems"], g["samples"], _fmt(g["trace_accuracy"]),
                     by_level or "-", _fmt(g["solved_any"])])
    parts.append(_md_table(["generator", "model", "problems", "samples", "trace accuracy", "by level",
                            "solved by >= 1 sample"], rows))
    parts += ["", "Held-out accuracy before any curation (greedy unless configured otherwise):", ""]
    ref_rows = []
    for name, model in reference.get("models", {}).items():
        metric = "greedy_accuracy" if "greedy_accuracy" in model["metrics"] else next(iter(model["metrics"]))
        entries = model["metrics"][metric]
        ref_rows.append([name] + [_fmt_ci((e["value"], e["ci_low"], e["ci_high"])) for e in entries.values()])
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
            row = [_variant_label(v, cal)]
            for j in range(len(t["sizes"])):
                b = t["best_p"][i, j]
                if np.isnan(b):
                    row.append("-")
                else:
                    d = t["difference"][i][j]
                    row.append(f"p*={b:g}, ratio {t['ratio'][i, j]:.3f}{'*' if t['significant'][i, j] else ''}, "
                               f"E-E(1) {_fmt_ci(d, True)}")
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
                    detail = ", ".join(f"p={p:g}: {_fmt_ci(d, True)}" for p, d in w["differences"].items())
                    cells_txt.append(f"{name} ({detail})")
                rows.append([_variant_label(v, cal)] + cells_txt)
            parts += [f"E({hard}) - E({easy}) at matched p (negative: {hard} better):", "",
                      _md_table(["generator \\ n"] + [str(n) for n in sizes], rows), ""]

    parts += ["## Theory beside the measurements", ""]
    cal_rows = [[_variant_label(v), _fmt(cal.trace_accuracy[v]), _fmt(a), _fmt(math.cos(math.pi * (1 - a)))]
                for v, a in cal.generator_accuracy.items()]
    parts.append(_md_table(["generator", "trace accuracy", "binary-mapped accuracy", "rho"], cal_rows))
    parts += ["", f"Oracle ({cal.oracle_source}): " + ", ".join(
        f"eta={eta:g}: accuracy {a:.3f}, rho* {math.cos(math.pi * (1 - a)):.3f}" for eta, a in
        sorted(cal.oracle_accuracy.items())) if cal.oracle_accuracy else "Oracle: not measured."]
    if cal.dims:
        parts += ["", "Effective dimension fitted on the random/all learning curve (errors in theory units):", ""]
        parts.append(_md_table(["generator", "d_eff", "points (kept, error)", "rmse"],
                               [[_variant_label(v), f"{f['dim']:.1f}",
                                 ", ".join(f"({x:.0f}, {y:.3f})" for x, y in f["points"]), f"{f['rmse']:.4f}"]
                                for v, f in cal.dims.items()]))
    if pred is not None:
        at = pred["at_cells"]
        parts += ["", f"Predicted at the measured cells (keep_hard, best p over {pred['keep']}):", ""]
        rows = []
        for i, v in enumerate(pred["variants"]):
            row = [_variant_label(v, cal)]
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
                     f"{c['oracle_noise']:g}", c["seeds"], f"{c['kept_rows']:.0f}", _fmt(c["kept_trace_accuracy"], 2)]
                    + [_fmt_ci((c[f"error_{g}"], c[f"error_{g}_low"], c[f"error_{g}_high"])) for g in group_names]
                    + [_fmt_ci((c["minus_p1"], c["minus_p1_low"], c["minus_p1_high"]), True)])
    parts.append(_md_table(header, rows) if rows else "No grid cell finished.")

    if chains:
        parts += ["", "## Collapse loop", ""]
        rows = []
        for rule, rounds in sorted(chains.items()):
            m = _round_matrix(rounds, problem_ids)
            for r, entry in enumerate(rounds):
                acc = bootstrap_mean(m[r][None, :], rs.bootstrap, rs.confidence, _rng("loop-md", rule, r))
                rows.append([rule, entry["round"], entry["data_source"], _fmt(entry["data_trace_accuracy"], 2),
                             entry["curation"]["kept_rows"], _fmt(entry["curation"]["kept_trace_accuracy"], 2),
                             _fmt_ci(acc)])
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
    from pipeline.sweep import LABEL_AWARE_RULES, SCORED_RULES

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

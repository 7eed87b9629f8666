"""The sweep's measurements: trials as cells over one held-out problem index, their errors with intervals, the
phase-diagram entry and rule winner of a cell, and the collapse-loop chains.

Statistics. Every trial is scored on the same held-out problems, so a cell is a seeds x problems matrix of verdicts.
Intervals are percentile bootstraps that resample seeds and problems together; a difference between two cells is
bootstrapped on the paired matrix (same seeds, same problems), and "significant" means its interval excludes 0.

A trial whose result carries ``exact_error`` (a linear teacher-student world, whose test error is computed exactly)
has no problems to resample: its cell is the per-seed exact errors, bootstrapped over seeds, and every interval is at
least +-``resolution`` wide, because the exact error of one pool draw still hides the spread between pool draws. By
default that half-width is 0.15 / sqrt(d) (``SPREAD_AT_UNIT_DIM``): twice the spread measured in a linear world at
d = 100 with one seed (exact errors against the theory: rms 0.007 away from kept = d, up to 0.05 at kept = d).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.sweep.config import family_baseline
from pipeline.sweep.layout import RESULT_FILE, SCORES_FILE, TRIALS_DIR, round_dirname

OVERALL = "overall"
# What a linear world's trial result carries (top level of result.json, or as columns of the results table).
LINEAR_FIELDS = ("d", "rho", "rho_star", "rho_g", "lam", "n", "p", "exact_error")
SPREAD_AT_UNIT_DIM = 0.15  # default half-width of an exact cell's interval: this / sqrt(d)


# -- cells and intervals -------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One grid cell, seeds pooled: verdicts as a seeds x problems matrix (NaN where a trial is missing)."""

    key: tuple  # (generator, generator_noise, pool_size, rule, keep_fraction, oracle_noise)
    seeds: list[int]
    matrix: np.ndarray
    trials: list[dict[str, Any]] = field(default_factory=list)
    exact: np.ndarray | None = None  # per-seed exact test errors (a linear world); None: scored on problems

    @property
    def variant(self) -> tuple[str, float]:
        """(generator, eps) of the cell."""
        return self.key[0], self.key[1]

    def trial_mean(self, name: str) -> float:
        """Mean over the cell's trials of a trial figure (``kept_rows``, ``kept_trace_accuracy``, ``rho``); NaN
        when no trial has it."""
        values = [_number(t.get(name)) for t in self.trials]
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else float("nan")


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def trial_fields(run_dir: Path, row: dict[str, Any]) -> dict[str, float]:
    """The linear-world fields (``LINEAR_FIELDS``) of a trial: from the results table's columns, else from the top
    level of its result.json (or a ``linear`` block in it); the fields it lacks are left out."""
    found = {k: _number(row.get(k)) for k in LINEAR_FIELDS if not math.isnan(_number(row.get(k)))}
    if len(found) < len(LINEAR_FIELDS):
        path = run_dir / TRIALS_DIR / str(row.get("trial_id")) / RESULT_FILE
        result = json.loads(path.read_text()) if path.is_file() else {}
        for source in (result, result.get("linear") or {}):
            for k in LINEAR_FIELDS:
                if k not in found and not math.isnan(_number(source.get(k))):
                    found[k] = _number(source[k])
    return found


def named_rng(*names: object) -> np.random.Generator:
    """A generator seeded by names (a cell key, a group): the same interval on every run of the report."""
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
                 resamples: int, confidence: float, resolution: float | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.groups = groups
        self.resamples = resamples
        self.confidence = confidence
        self._resolution = resolution
        index = {pid: i for i, pid in enumerate(problem_ids)}
        ok = table[(table["status"] == "ok") & (table["kind"] == "grid")]
        by_key: dict[tuple, list[dict]] = {}
        for row in ok.to_dict("records"):
            key = (row["generator"], float(row["generator_noise"]), int(row["pool_size"]), row["rule"],
                   float(row["keep_fraction"]), float(row["oracle_noise"]))
            by_key.setdefault(key, []).append({**row, **trial_fields(run_dir, row)})
        self.cells: dict[tuple, Cell] = {}
        dims: list[float] = []
        for key, rows in by_key.items():
            rows.sort(key=lambda r: r["seed"])
            seeds = [int(r["seed"]) for r in rows]
            if all("exact_error" in r for r in rows):
                exact = np.array([r["exact_error"] for r in rows], dtype=float)
                dims.extend(r["d"] for r in rows if "d" in r)
                self.cells[key] = Cell(key, seeds, np.zeros((len(rows), 0)), rows, exact)
                continue
            matrix = np.full((len(rows), len(problem_ids)), np.nan)
            for i, row in enumerate(rows):
                scores = _read_scores(run_dir / TRIALS_DIR / row["trial_id"] / SCORES_FILE)
                for pid, correct in zip(scores["problem_id"], scores["correct"]):
                    j = index.get(pid)
                    if j is not None:
                        matrix[i, j] = correct
            self.cells[key] = Cell(key, seeds, matrix, rows)
        self._stats: dict[tuple, tuple[float, float, float]] = {}
        self._dim = float(np.median(dims)) if dims else None

    @property
    def resolution(self) -> float:
        """Smallest half-width of an exact cell's interval: the configured one, else 0.15 / sqrt(d)."""
        if self._resolution is not None:
            return self._resolution
        return SPREAD_AT_UNIT_DIM / math.sqrt(self._dim) if self._dim else 0.015

    @property
    def exact(self) -> bool:
        """Whether the cells carry exact test errors (a linear world) rather than held-out verdicts."""
        return any(c.exact is not None for c in self.cells.values())

    def _widen(self, t: tuple[float, float, float]) -> tuple[float, float, float]:
        est, lo, hi = t
        return est, min(lo, est - self.resolution), max(hi, est + self.resolution)

    def _exact_bootstrap(self, values: np.ndarray, memo) -> tuple[float, float, float]:
        """Mean of per-seed values with a seed bootstrap, at least +-resolution wide."""
        est, lo, hi = bootstrap_mean(values[:, None], self.resamples, self.confidence, named_rng(*memo))
        return self._widen((est, lo, hi))

    def error(self, key: tuple, group: str = OVERALL) -> tuple[float, float, float]:
        """(error, low, high) of a cell on a group of problems; NaNs when the cell was not measured."""
        if key not in self.cells:
            return (float("nan"),) * 3
        memo = (key, group)
        cell = self.cells[key]
        if cell.exact is not None:
            return self._exact_bootstrap(cell.exact, memo) if group == OVERALL else (float("nan"),) * 3
        if memo not in self._stats:
            mask = self.groups[group]
            acc, lo, hi = bootstrap_mean(self.cells[key].matrix[:, mask], self.resamples, self.confidence,
                                         named_rng(key, group))
            self._stats[memo] = (1.0 - acc, 1.0 - hi, 1.0 - lo)
        return self._stats[memo]

    def difference(self, a: tuple, b: tuple, group: str = OVERALL) -> tuple[float, float, float]:
        """Error of ``a`` minus error of ``b`` with a paired interval (common seeds, same problems)."""
        if a not in self.cells or b not in self.cells:
            return (float("nan"),) * 3
        ca, cb = self.cells[a], self.cells[b]
        common = [s for s in ca.seeds if s in cb.seeds]
        if ca.exact is not None or cb.exact is not None:
            if ca.exact is None or cb.exact is None or group != OVERALL:
                return (float("nan"),) * 3
            if common:
                diff = ca.exact[[ca.seeds.index(s) for s in common]] - cb.exact[[cb.seeds.index(s) for s in common]]
            else:
                diff = np.array([ca.exact.mean() - cb.exact.mean()])
            return self._exact_bootstrap(diff, ("diff", a, b))
        if common:
            ma = ca.matrix[[ca.seeds.index(s) for s in common]]
            mb = cb.matrix[[cb.seeds.index(s) for s in common]]
        else:  # no shared seed: compare seed means problem by problem
            ma, mb = np.nanmean(ca.matrix, axis=0, keepdims=True), np.nanmean(cb.matrix, axis=0, keepdims=True)
        mask = self.groups[group]
        d, lo, hi = bootstrap_mean((mb - ma)[:, mask], self.resamples, self.confidence, named_rng("diff", a, b, group))
        return d, lo, hi

    def versus(self, key: tuple, correct: np.ndarray, group: str = OVERALL) -> tuple[float, float, float]:
        """Error of a cell minus that of a reference model scored on the same problems (``correct``: its verdict
        per problem of the index), with a paired interval; NaNs for an exact cell or an unmeasured one."""
        if key not in self.cells or self.cells[key].exact is not None:
            return (float("nan"),) * 3
        m = self.cells[key].matrix
        ref = np.broadcast_to(np.asarray(correct, dtype=float), m.shape)
        mask = self.groups[group]
        return bootstrap_mean((ref - m)[:, mask], self.resamples, self.confidence, named_rng("versus", key, group))

    # -- views -----------------------------------------------------------------------------------------------------

    def variants(self) -> list[tuple[str, float]]:
        """(generator, eps) pairs measured."""
        return sorted({c.variant for c in self.cells.values()})

    def sizes(self, variant=None) -> list[int]:
        """Pool sizes measured (for one variant, or any)."""
        return sorted({k[2] for k in self.cells if variant is None or k[:2] == tuple(variant)})

    def rules(self) -> list[str]:
        """Rules measured."""
        return sorted({k[3] for k in self.cells})

    def curve(self, variant, n: int, rule: str, eta: float = 0.0) -> list[tuple[float, tuple]]:
        """(p, cell key) of a rule's curve, p ascending, with p = 1 taken from the family's baseline cell."""
        points = [(k[4], k) for k in self.cells
                  if k[:3] == (variant[0], variant[1], n) and k[3] == rule and k[4] < 1.0 and k[5] == eta]
        base = (variant[0], variant[1], n, family_baseline(rule), 1.0, 0.0)
        if base in self.cells:
            points.append((1.0, base))
        return sorted(points)

    def baseline(self, variant, n: int, rule: str) -> tuple:
        """The key of a rule's p = 1 cell (its family's baseline) at (variant, n)."""
        return (variant[0], variant[1], n, family_baseline(rule), 1.0, 0.0)


def _read_scores(path: Path):
    import pandas as pd

    return pd.read_parquet(path, columns=["problem_id", "correct"])


def significant_below(interval: tuple[float, float, float]) -> bool:
    """Whether an (estimate, low, high) interval lies entirely below 0."""
    return bool(interval[2] < 0)


def significant_above(interval: tuple[float, float, float]) -> bool:
    """Whether an (estimate, low, high) interval lies entirely above 0."""
    return bool(interval[1] > 0)


def fmt(x: float, digits: int = 3) -> str:
    """A number for the report (``n/a`` for None or NaN)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_ci(t: tuple[float, float, float], signed: bool = False) -> str:
    """An (estimate, low, high) interval as ``0.123 [0.100, 0.150]`` (``n/a`` when any is NaN)."""
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
    hard_better = any(significant_below(d) for d in diffs.values())
    easy_better = any(significant_above(d) for d in diffs.values())
    sign = 1 if hard_better and not easy_better else -1 if easy_better and not hard_better else 0
    mean_diff = float(np.mean([d[0] for d in diffs.values()]))
    return {"sign": sign, "differences": diffs, "mean_difference": mean_diff}


# -- collapse loop -------------------------------------------------------------------------------------------------


def loop_rounds(run_dir: Path, table) -> dict[str, list[dict[str, Any]]]:
    """rule -> the loop chain's rounds (round, data accuracy, kept rows, per-problem scores)."""
    import pandas as pd

    chains: dict[str, list[dict[str, Any]]] = {}
    for row in table[(table["kind"] == "loop") & (table["status"] == "ok")].to_dict("records"):
        trial_dir = run_dir / TRIALS_DIR / row["trial_id"]
        result = json.loads((trial_dir / RESULT_FILE).read_text())
        rounds = []
        for entry in result["rounds"]:
            path = trial_dir / round_dirname(entry["round"]) / SCORES_FILE
            # A linear world's round may carry only its exact_error: no per-problem scores to read.
            scores = pd.read_parquet(path) if path.is_file() else None
            rounds.append({**entry, "scores": scores})
        chains[row["rule"]] = rounds
    return chains


def round_matrix(rounds, problem_ids: list[str]) -> np.ndarray:
    """A loop chain's verdicts as a rounds x problems matrix over the held-out problem index."""
    index = {pid: i for i, pid in enumerate(problem_ids)}
    m = np.full((len(rounds), len(problem_ids)), np.nan)
    for r, entry in enumerate(rounds):
        if entry.get("scores") is None:
            continue
        for pid, c in zip(entry["scores"]["problem_id"], entry["scores"]["correct"]):
            if pid in index:
                m[r, index[pid]] = c
    return m


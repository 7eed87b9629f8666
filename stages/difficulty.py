"""difficulty: pass rate per problem with a confidence interval and a tier, per generating model.

Difficulty is model-relative: the tallies are kept per (problem, model) and every row says which model's attempts
its numbers come from (``difficulty_model``). Tiers:

- ``unsolved``: no correct attempt;      ``solved``: every attempt correct;
- ``hard``: pass rate in (0, hard_below); ``medium``: [hard_below, easy_from); ``easy``: [easy_from, 1).

``score: oracle_margin`` (the linear world) takes difficulty from an oracle instead of the generator's own samples:
the margin ``|x . w_o|`` the source wrote into each problem's metadata becomes the ``pass_rate`` column as its
quantile ``2 Phi(margin) - 1`` (uniform in [0, 1], so the curate rules read it unchanged: keep-hard takes the
smallest margins first, and oracle noise's uniform scores draw from the score's own law). ``ci_low`` and ``ci_high``
equal it (an oracle has no sampling error); ``n_samples`` and ``n_correct`` still count the generator's attempts,
and ``difficulty_model`` says ``oracle_margin``. Ranking by the generator's own pass rate instead would make the
oracle the generator (instrument.md §1.1, C2).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline import columns as C
from stages.base import Batch, OnRay, Stage, StageConfig

TIERS = ("unsolved", "hard", "medium", "easy", "solved")
ORACLE_MARGIN = "oracle_margin"  # the metadata key a linear source writes, and the score that reads it


class DifficultyConfig(StageConfig, OnRay):
    """How pass rates, intervals and tiers are computed."""

    interval: Literal["wilson", "jeffreys"] = Field("wilson", description="Binomial confidence interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the interval.")
    hard_below: float = Field(1 / 3, gt=0, lt=1, description="Pass rates in (0, hard_below) are 'hard'.")
    easy_from: float = Field(2 / 3, gt=0, lt=1, description="Pass rates in [easy_from, 1) are 'easy'; between: 'medium'.")
    score: Literal["pass_rate", "oracle_margin"] = Field(
        "pass_rate", description="pass_rate: the generator's pass rate over its samples; oracle_margin: the linear "
        "world's oracle margin |x . w_o| that the source wrote, as its quantile 2 Phi(margin) - 1 in the pass_rate "
        "column (smallest margin = lowest = hardest), independent of the generator."
    )

    @model_validator(mode="after")
    def _order(self) -> "DifficultyConfig":
        if self.hard_below > self.easy_from:
            raise ValueError("hard_below must not exceed easy_from")
        return self


def pass_intervals(n_correct, n, method: str = "wilson", confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided binomial intervals for many pass rates at once (arrays in, arrays out).

    ``wilson``: the Wilson score interval (no continuity correction, as scipy's ``binomtest(...).proportion_ci``);
    ``jeffreys``: the equal-tailed Beta(k + 1/2, n - k + 1/2) interval, with the bound at 0 (1) when k = 0 (k = n).
    Problems with n = 0 get the uninformative [0, 1].
    """
    from scipy.stats import beta, norm

    k = np.asarray(n_correct, dtype=float)
    n = np.asarray(n, dtype=float)
    safe_n = np.where(n > 0, n, 1.0)
    if method == "jeffreys":
        a = (1 - confidence) / 2
        low = np.where(k > 0, beta.ppf(a, k + 0.5, safe_n - k + 0.5), 0.0)
        high = np.where(k < n, beta.ppf(1 - a, k + 0.5, safe_n - k + 0.5), 1.0)
    elif method == "wilson":
        z = norm.ppf(1 - (1 - confidence) / 2)
        denom = safe_n + z * z
        center = (k + z * z / 2) / denom
        half = z * np.sqrt(np.clip(k * (safe_n - k) / safe_n, 0, None) + z * z / 4) / denom
        low, high = center - half, center + half
    else:
        raise ValueError(f"unknown interval {method!r}; use wilson or jeffreys")
    low = np.where(n > 0, np.clip(low, 0.0, 1.0), 0.0)
    high = np.where(n > 0, np.clip(high, 0.0, 1.0), 1.0)
    return low, high


def pass_interval(n_correct: int, n: int, method: str = "wilson", confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided binomial interval for one pass rate (see ``pass_intervals``)."""
    low, high = pass_intervals([n_correct], [n], method, confidence)
    return float(low[0]), float(high[0])


def tier_of(pass_rate: float, cfg: DifficultyConfig) -> str:
    """unsolved / hard / medium / easy / solved."""
    if pass_rate <= 0:
        return "unsolved"
    if pass_rate >= 1:
        return "solved"
    if pass_rate < cfg.hard_below:
        return "hard"
    return "easy" if pass_rate >= cfg.easy_from else "medium"


def tier_codes(n_correct, n, hard_below: float, easy_from: float) -> np.ndarray:
    """Tier of each (n_correct, n) as an index into TIERS (vectorized; n = 0 counts as unsolved)."""
    k = np.asarray(n_correct, dtype=float)
    n = np.asarray(n, dtype=float)
    rate = np.divide(k, n, out=np.zeros_like(k), where=n > 0)
    code = np.where(rate < hard_below, 1, np.where(rate < easy_from, 2, 3))
    code = np.where(k <= 0, 0, code)
    return np.where((k >= n) & (n > 0), 4, code)


def problem_stats(problem_ids, model_ids, correct, finish_reasons, cfg: DifficultyConfig,
                  metadata=None) -> dict[tuple[str, str], dict]:
    """(problem_id, model) -> pass rate, counts, interval and tier. Failed generations are not attempts.

    With ``cfg.score == "oracle_margin"``, ``metadata`` (the rows' metadata JSON) supplies each problem's oracle
    margin, and the difficulty columns hold its quantile (see the module docstring)."""
    if cfg.score == ORACLE_MARGIN:
        if metadata is None:
            raise ValueError("difficulty score oracle_margin needs the problems' metadata column")
        margins = _oracle_margins(problem_ids, metadata)
    tallies: dict[tuple[str, str], list[int]] = {}
    for pid, model, ok, fr in zip(problem_ids, model_ids, correct, finish_reasons):
        t = tallies.setdefault((pid, model), [0, 0])
        if fr != "error":
            t[0] += 1
            t[1] += bool(ok)
    if not tallies:
        return {}
    n = np.array([t[0] for t in tallies.values()])
    k = np.array([t[1] for t in tallies.values()])
    low, high = pass_intervals(k, n, cfg.interval, cfg.confidence)
    rate = np.divide(k, n, out=np.zeros(len(n)), where=n > 0)
    tiers = [TIERS[t] for t in tier_codes(k, n, cfg.hard_below, cfg.easy_from)]
    model_column = [key[1] for key in tallies]
    if cfg.score == ORACLE_MARGIN:
        from pipeline.linearworld import margin_quantile

        rate = low = high = margin_quantile([margins[key[0]] for key in tallies])
        tiers = [tier_of(r, cfg) for r in rate]
        model_column = [ORACLE_MARGIN] * len(tallies)
    stats = {}
    for i, key in enumerate(tallies):
        stats[key] = {C.PASS_RATE: float(rate[i]), C.N_SAMPLES: int(n[i]), C.N_CORRECT: int(k[i]),
                      C.CI_LOW: float(low[i]), C.CI_HIGH: float(high[i]), C.DIFFICULTY_MODEL: model_column[i],
                      C.TIER: tiers[i]}
    return stats


def _oracle_margins(problem_ids, metadata) -> dict[str, float]:
    """problem_id -> the oracle margin in its metadata JSON (a linear source writes it)."""
    import json

    margins = {}
    for pid, meta in zip(problem_ids, metadata):
        if pid in margins:
            continue
        value = json.loads(meta).get(ORACLE_MARGIN) if isinstance(meta, str) else None
        if value is None:
            raise ValueError(f"problem {pid}: no {ORACLE_MARGIN} in its metadata; difficulty score oracle_margin "
                             "needs problems from a `kind: linear` source (or set score: pass_rate)")
        margins[pid] = float(value)
    return margins


class DifficultyStage(Stage):
    """Adds each problem's pass rate, interval and tier to its sample rows.

    The per-problem tallies are computed once from four narrow columns (``prepare``), so no shuffle of the
    completions is needed; without them (a batch in a test), the batch itself must hold whole problems.
    """

    name = "difficulty"
    kind = "map"
    config_model = DifficultyConfig
    requires = (C.PROBLEM_ID, C.CORRECT, C.MODEL_ID, C.FINISH_REASON)
    adds = C.DIFFICULTY_COLUMNS
    input_key = (C.PROBLEM_ID, C.SAMPLE_IDX)
    output_key = (C.PROBLEM_ID, C.SAMPLE_IDX)

    def __init__(self, cfg: DifficultyConfig, stats: dict | None = None, **_: Any) -> None:
        self.cfg = cfg
        self.stats = stats

    @classmethod
    def prepare(cls, cfg: DifficultyConfig, upstream_dir: str, context) -> dict[str, Any]:
        from pipeline.io import read_columns

        names = (C.PROBLEM_ID, C.MODEL_ID, C.CORRECT, C.FINISH_REASON)
        if cfg.score == ORACLE_MARGIN:
            names += (C.METADATA,)
        t = read_columns(upstream_dir, names)
        cols = [t[c].to_pylist() for c in names]
        return {"stats": problem_stats(*cols[:4], cfg, metadata=cols[4] if len(cols) > 4 else None)}

    def __call__(self, batch: Batch) -> Batch:
        stats = self.stats
        if stats is None:
            stats = problem_stats(batch[C.PROBLEM_ID], batch[C.MODEL_ID], batch[C.CORRECT], batch[C.FINISH_REASON],
                                  self.cfg, metadata=batch.get(C.METADATA))
        out: dict[str, list[Any]] = dict(batch)
        rows = [stats[(p, m)] for p, m in zip(batch[C.PROBLEM_ID], batch[C.MODEL_ID])]
        for c in C.DIFFICULTY_COLUMNS:
            out[c] = [r[c] for r in rows]
        return out

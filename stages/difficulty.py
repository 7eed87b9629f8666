"""difficulty: pass rate per problem with a confidence interval and a tier, per generating model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline import columns as C
from stages.base import Batch, Stage, StageConfig


class DifficultyConfig(StageConfig):
    """How pass rates, intervals and tiers are computed."""

    interval: Literal["wilson", "jeffreys"] = Field("wilson", description="Binomial confidence interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the interval.")
    hard_below: float = Field(1 / 3, gt=0, lt=1, description="Pass rates in (0, hard_below) are 'hard'.")
    easy_from: float = Field(2 / 3, gt=0, lt=1, description="Pass rates in [easy_from, 1) are 'easy'; between: 'medium'.")

    @model_validator(mode="after")
    def _order(self) -> "DifficultyConfig":
        if self.hard_below > self.easy_from:
            raise ValueError("hard_below must not exceed easy_from")
        return self


def pass_interval(n_correct: int, n: int, method: str = "wilson", confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided binomial interval for a pass rate (scipy's Wilson, or the Jeffreys beta interval)."""
    if n == 0:
        return 0.0, 1.0
    if method == "jeffreys":
        from scipy.stats import beta

        a = (1 - confidence) / 2
        low = 0.0 if n_correct == 0 else float(beta.ppf(a, n_correct + 0.5, n - n_correct + 0.5))
        high = 1.0 if n_correct == n else float(beta.ppf(1 - a, n_correct + 0.5, n - n_correct + 0.5))
        return low, high
    from scipy.stats import binomtest

    ci = binomtest(n_correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def tier_of(pass_rate: float, cfg: DifficultyConfig) -> str:
    """unsolved / hard / medium / easy / solved."""
    if pass_rate <= 0:
        return "unsolved"
    if pass_rate >= 1:
        return "solved"
    if pass_rate < cfg.hard_below:
        return "hard"
    return "easy" if pass_rate >= cfg.easy_from else "medium"


def problem_stats(problem_ids, model_ids, correct, finish_reasons, cfg: DifficultyConfig) -> dict[tuple[str, str], dict]:
    """(problem_id, model) -> pass rate, counts, interval and tier. Failed generations are not attempts."""
    tallies: dict[tuple[str, str], list[int]] = {}
    for pid, model, ok, fr in zip(problem_ids, model_ids, correct, finish_reasons):
        t = tallies.setdefault((pid, model), [0, 0])
        if fr != "error":
            t[0] += 1
            t[1] += bool(ok)
    stats = {}
    for key, (n, k) in tallies.items():
        rate = k / n if n else 0.0
        low, high = pass_interval(k, n, cfg.interval, cfg.confidence)
        stats[key] = {C.PASS_RATE: rate, C.N_SAMPLES: n, C.N_CORRECT: k, C.CI_LOW: low, C.CI_HIGH: high,
                      C.DIFFICULTY_MODEL: key[1], C.TIER: tier_of(rate, cfg) if n else "unsolved"}
    return stats


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

    def __init__(self, cfg: DifficultyConfig, stats: dict | None = None, **_: Any) -> None:
        self.cfg = cfg
        self.stats = stats

    @classmethod
    def prepare(cls, cfg: DifficultyConfig, upstream_dir: str, context) -> dict[str, Any]:
        from pipeline.io import read_columns

        t = read_columns(upstream_dir, (C.PROBLEM_ID, C.MODEL_ID, C.CORRECT, C.FINISH_REASON))
        cols = [t[c].to_pylist() for c in (C.PROBLEM_ID, C.MODEL_ID, C.CORRECT, C.FINISH_REASON)]
        return {"stats": problem_stats(*cols, cfg)}

    def __call__(self, batch: Batch) -> Batch:
        stats = self.stats
        if stats is None:
            stats = problem_stats(batch[C.PROBLEM_ID], batch[C.MODEL_ID], batch[C.CORRECT], batch[C.FINISH_REASON], self.cfg)
        out: dict[str, list[Any]] = dict(batch)
        rows = [stats[(p, m)] for p, m in zip(batch[C.PROBLEM_ID], batch[C.MODEL_ID])]
        for c in C.DIFFICULTY_COLUMNS:
            out[c] = [r[c] for r in rows]
        return out

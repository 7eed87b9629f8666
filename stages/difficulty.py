"""difficulty: pass rate per problem with a confidence interval and a tier, per generating model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline import columns as C
from stages.base import Batch, Stage, StageConfig, batch_len


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


class DifficultyStage(Stage):
    """Called on all sample rows of one problem; adds the problem's difficulty to each row."""

    name = "difficulty"
    kind = "group"
    group_key = C.PROBLEM_ID
    config_model = DifficultyConfig
    requires = (C.PROBLEM_ID, C.CORRECT, C.MODEL_ID, C.FINISH_REASON)
    adds = C.DIFFICULTY_COLUMNS

    def __call__(self, batch: Batch) -> Batch:
        n_rows = batch_len(batch)
        out: dict[str, list[Any]] = dict(batch)
        for c in C.DIFFICULTY_COLUMNS:
            out[c] = [None] * n_rows
        groups: dict[tuple[str, str], list[int]] = {}
        for i in range(n_rows):
            groups.setdefault((batch[C.PROBLEM_ID][i], batch[C.MODEL_ID][i]), []).append(i)
        for (_, model), idx in groups.items():
            # Failed generations say nothing about the problem: they do not count as attempts.
            attempts = [i for i in idx if batch[C.FINISH_REASON][i] != "error"]
            n = len(attempts)
            k = sum(bool(batch[C.CORRECT][i]) for i in attempts)
            rate = k / n if n else 0.0
            low, high = pass_interval(k, n, self.cfg.interval, self.cfg.confidence)
            for i in idx:
                out[C.PASS_RATE][i] = rate
                out[C.N_SAMPLES][i] = n
                out[C.N_CORRECT][i] = k
                out[C.CI_LOW][i] = low
                out[C.CI_HIGH][i] = high
                out[C.DIFFICULTY_MODEL][i] = model
                out[C.TIER][i] = tier_of(rate, self.cfg) if n else "unsolved"
        return out

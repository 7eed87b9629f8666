"""Adaptive k: sample in rounds, verify between rounds, and stop each problem once its difficulty is decided.

With ``rounds: [4, 8, 16, 32]`` in the sample stage, every problem first gets samples 0-3; they are verified, and a
problem whose tier (or band membership) is already decided stops there. The others get samples 4-7, and so on up to
the last round. Sample ``j`` of a problem always has the seed ``row_seed(seed, problem_id, j)``, so an adaptive run
draws exactly the first samples a fixed-k run would draw: it only draws fewer of them.

When is a problem decided (``decide.method``)?

- ``predictive`` (default): the tier that the full budget K = rounds[-1] would give is predicted from the samples so
  far. With a Beta(a, b) prior on the pass rate (Jeffreys by default) and k correct out of n, the correct count among
  the K - n samples not drawn is beta-binomial; the problem stops when the probability that the tier at K equals the
  tier now is at least ``confidence``. This targets exactly "what fixed k = K would say".
- ``interval``: the binomial interval of the pass rate (Wilson or Jeffreys, at ``confidence``) lies inside the current
  tier's range of pass rates. The tiers ``unsolved`` (exactly 0) and ``solved`` (exactly 1) have no width, so
  problems with no (or only) correct samples always run to the last round under this method, unless
  ``exact_ends: false`` folds them into hard and easy.

``decide.by: band`` decides membership of [lo, hi] instead (below / inside / above), for ``pass_rate_band`` rules.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from stages.base import Batch, Frozen, batch_len


class DecideConfig(Frozen):
    """When an adaptively sampled problem has enough samples (see stages/sample/adaptive.py)."""

    by: Literal["tiers", "band"] = Field(
        "tiers", description="tiers: decide the difficulty tier (unsolved/hard/medium/easy/solved); band: decide "
        "whether the pass rate is below, inside or above `band`."
    )
    hard_below: float = Field(1 / 3, gt=0, lt=1, description="Tier cut: pass rates in (0, hard_below) are 'hard' "
                              "(keep equal to the difficulty stage's).")
    easy_from: float = Field(2 / 3, gt=0, lt=1, description="Tier cut: pass rates in [easy_from, 1) are 'easy' "
                             "(keep equal to the difficulty stage's).")
    exact_ends: bool = Field(
        True, description="by: tiers: tell unsolved from hard and solved from easy (false: decide three tiers, "
        "hard/medium/easy, which needs far fewer samples for problems near pass rate 0 or 1)."
    )
    band: tuple[float, float] = Field((0.2, 0.8), description="by: band: the inclusive pass-rate band [lo, hi].")
    method: Literal["predictive", "interval"] = Field(
        "predictive", description="predictive: stop when the tier at the full budget is predicted with probability "
        ">= confidence; interval: stop when the pass-rate interval lies inside one tier."
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence of a decision.")
    interval: Literal["wilson", "jeffreys"] = Field("wilson", description="method: interval: which interval.")
    prior: tuple[float, float] = Field(
        (0.5, 0.5), description="method: predictive: Beta(a, b) prior of a pass rate ((0.5, 0.5): Jeffreys; "
        "(1, 1): uniform). A prior fitted on an earlier pool's pass rates decides sooner."
    )
    verifier: str = Field("math", description="Verifier that judges samples between rounds (as in the verify stage).")
    verifier_options: dict[str, Any] = Field(default_factory=dict, description="Options of that verifier.")

    @field_validator("verifier_options")
    @classmethod
    def _valid_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Checked when the config loads, like the verify stage's options.
        from verifiers import VERIFIERS
        from verifiers.base import check_options

        name = info.data.get("verifier")
        if name in VERIFIERS:
            check_options(name, VERIFIERS[name].Options, options)
        return options

    @model_validator(mode="after")
    def _check(self) -> "DecideConfig":
        if self.hard_below > self.easy_from:
            raise ValueError("decide: hard_below must not exceed easy_from")
        if not 0 <= self.band[0] <= self.band[1] <= 1:
            raise ValueError("decide.band: need 0 <= lo <= hi <= 1")
        if min(self.prior) <= 0:
            raise ValueError("decide.prior: both Beta parameters must be > 0, e.g. [0.5, 0.5]")
        from verifiers import VERIFIERS

        if self.verifier not in VERIFIERS:
            raise ValueError(f"decide.verifier: unknown verifier {self.verifier!r}; valid: {', '.join(VERIFIERS)}")
        return self


def check_rounds(rounds: tuple[int, ...] | None, k: int) -> None:
    """Rounds are cumulative sample counts, strictly increasing, ending at k (the most samples a problem gets)."""
    if rounds is None:
        return
    if not rounds or rounds[0] < 1 or any(b <= a for a, b in zip(rounds, rounds[1:])):
        raise ValueError(f"rounds: need strictly increasing sample counts >= 1, e.g. [4, 8, 16, 32]; got {list(rounds)}")
    if rounds[-1] != k:
        raise ValueError(f"rounds: the last round ({rounds[-1]}) is the most samples a problem gets; set k: {rounds[-1]}")


def classes(n_correct, n, decide: DecideConfig) -> np.ndarray:
    """The class of each empirical pass rate k/n: a tier index (by: tiers) or 0/1/2 = below/inside/above (by: band)."""
    from stages.difficulty import tier_codes

    k = np.asarray(n_correct, dtype=float)
    n = np.asarray(n, dtype=float)
    if decide.by == "tiers":
        codes = tier_codes(k, n, decide.hard_below, decide.easy_from)
        return codes if decide.exact_ends else np.clip(codes, 1, 3)
    rate = np.divide(k, n, out=np.zeros_like(k), where=n > 0)
    lo, hi = decide.band
    return np.where(rate < lo, 0, np.where(rate > hi, 2, 1))


def decided(n_correct, n, budget: int, decide: DecideConfig) -> np.ndarray:
    """Whether each problem (k correct of n attempts; ``budget`` = the most samples it could get) may stop now."""
    k = np.asarray(n_correct, dtype=int)
    n = np.asarray(n, dtype=int)
    if k.size == 0:
        return np.zeros(0, dtype=bool)
    now = classes(k, n, decide)
    if decide.method == "interval":
        return _interval_decided(k, n, now, decide) | (n >= budget)
    return (agreement_probability(k, n, budget, decide) >= decide.confidence) | (n >= budget)


def agreement_probability(n_correct, n, budget: int, decide: DecideConfig) -> np.ndarray:
    """P(class at the full budget == class now), under a Beta prior and a beta-binomial for the samples not drawn."""
    from scipy.stats import betabinom

    k = np.asarray(n_correct, dtype=int)
    n = np.asarray(n, dtype=int)
    out = np.ones(k.size)
    now = classes(k, n, decide)
    a0, b0 = decide.prior
    for remaining in np.unique(budget - n):
        rows = np.flatnonzero(budget - n == remaining)
        if remaining <= 0:
            continue
        extra = np.arange(remaining + 1)
        pmf = betabinom.pmf(extra[None, :], remaining, a0 + k[rows, None], b0 + (n[rows] - k[rows])[:, None])
        final = classes(k[rows, None] + extra[None, :], np.full((1, remaining + 1), budget), decide)
        out[rows] = (pmf * (final == now[rows, None])).sum(axis=1)
    return out


def _interval_decided(k: np.ndarray, n: np.ndarray, now: np.ndarray, decide: DecideConfig) -> np.ndarray:
    from stages.difficulty import pass_intervals

    low, high = pass_intervals(k, n, decide.interval, decide.confidence)
    if decide.by == "band":
        lo, hi = decide.band
        return np.select([now == 0, now == 1], [high < lo, (low >= lo) & (high <= hi)], default=low > hi)
    hb, ef = decide.hard_below, decide.easy_from
    if not decide.exact_ends:  # hard = [0, hb), easy = [ef, 1]
        return np.select([now == 1, now == 2], [high < hb, (low >= hb) & (high < ef)], default=low >= ef)
    return np.select(
        [now == 1, now == 2, now == 3],
        [(low > 0) & (high < hb), (low >= hb) & (high < ef), (low >= ef) & (high < 1)],
        default=False,  # unsolved / solved: a point, never contains an interval
    )


def sample_in_rounds(stage, batch: Batch) -> Batch:
    """Adaptive sampling of one batch of problems with a SampleStage whose config has ``rounds``.

    Returns the same columns a fixed-k call returns; a problem contributes rows 0..n-1 for the n it needed.
    """
    from pipeline import columns as C
    from stages.verify import VerifySettings, VerifyStage

    cfg = stage.cfg
    decide = cfg.decide or DecideConfig()
    verify = getattr(stage, "_round_verify", None)
    if verify is None:  # built once per worker, on first use
        verify = VerifyStage(VerifySettings(verifier=decide.verifier, options=decide.verifier_options))
        stage._round_verify = verify
    n_problems = batch_len(batch)
    attempts = np.zeros(n_problems, dtype=int)
    hits = np.zeros(n_problems, dtype=int)
    active = np.arange(n_problems)
    per_problem: list[list[dict[str, Any]]] = [[] for _ in range(n_problems)]
    drawn = 0
    columns: list[str] | None = None
    for target in cfg.rounds:
        if active.size == 0:
            break
        sub = {c: [batch[c][i] for i in active] for c in batch if c != C.SAMPLE_IDX}
        sub[C.SAMPLE_IDX] = [list(range(drawn, target)) for _ in active]
        out = stage(sub)
        columns = list(out)
        judged = verify(out)
        per_round = target - drawn
        for r in range(batch_len(out)):
            p = active[r // per_round]  # the sample stage emits each problem's rows together, in order
            per_problem[p].append({c: out[c][r] for c in columns})
            if out[C.FINISH_REASON][r] != "error":
                attempts[p] += 1
                hits[p] += bool(judged[C.CORRECT][r])
        drawn = target
        stop = decided(hits[active], attempts[active], cfg.rounds[-1], decide) if drawn < cfg.rounds[-1] else None
        active = active[~stop] if stop is not None else active[:0]
    names = columns or [c for c in batch if c != C.SAMPLE_IDX] + list(C.SAMPLE_COLUMNS)
    rows = [row for group in per_problem for row in group]
    return {c: [row[c] for row in rows] for c in names}

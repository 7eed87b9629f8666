"""Pass rates, intervals and tiers (plain dict batches, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import columns as C
from stages.difficulty import (
    TIERS, DifficultyConfig, DifficultyStage, pass_interval, pass_intervals, problem_stats, tier_codes, tier_of,
)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_matches_scipy_on_a_grid(confidence):
    from scipy.stats import binomtest

    for n in (1, 2, 4, 7, 16, 32, 100):
        ks = np.arange(n + 1)
        low, high = pass_intervals(ks, np.full(n + 1, n), "wilson", confidence)
        for k in ks:
            ci = binomtest(int(k), n).proportion_ci(confidence_level=confidence, method="wilson")
            assert low[k] == pytest.approx(ci.low, abs=1e-9) and high[k] == pytest.approx(ci.high, abs=1e-9)


def test_jeffreys_is_the_beta_quantile_with_closed_ends():
    from scipy.stats import beta

    low, high = pass_intervals([0, 3, 8], [8, 8, 8], "jeffreys", 0.9)
    assert low[0] == 0.0 and high[2] == 1.0
    assert low[1] == pytest.approx(beta.ppf(0.05, 3.5, 5.5)) and high[1] == pytest.approx(beta.ppf(0.95, 3.5, 5.5))
    assert high[0] == pytest.approx(beta.ppf(0.95, 0.5, 8.5))


def test_intervals_shrink_with_more_samples_and_contain_the_rate():
    for method in ("wilson", "jeffreys"):
        widths = []
        for n in (4, 16, 64, 256):
            lo, hi = pass_interval(n // 4, n, method)
            assert lo < 0.25 < hi
            widths.append(hi - lo)
        assert widths == sorted(widths, reverse=True)
    assert pass_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="wilson or jeffreys"):
        pass_intervals([1], [2], "exact")


def test_tiers_are_configurable_and_exact_at_the_ends():
    cfg = DifficultyConfig(hard_below=0.2, easy_from=0.9)
    assert [tier_of(r, cfg) for r in (0.0, 0.1, 0.2, 0.5, 0.89, 0.9, 1.0)] == [
        "unsolved", "hard", "medium", "medium", "medium", "easy", "solved"]
    codes = tier_codes([0, 1, 4, 7, 8, 0], [8, 8, 8, 8, 8, 0], 0.2, 0.9)
    assert [TIERS[c] for c in codes] == ["unsolved", "hard", "medium", "medium", "solved", "unsolved"]
    with pytest.raises(ValueError, match="hard_below must not exceed easy_from"):
        DifficultyConfig(hard_below=0.8, easy_from=0.5)


def test_difficulty_is_per_model_and_errors_are_not_attempts():
    batch = {
        C.PROBLEM_ID: ["p", "p", "p", "p", "p", "p"],
        C.SAMPLE_IDX: [0, 1, 2, 0, 1, 2],
        C.MODEL_ID: ["big", "big", "big", "small", "small", "small"],
        C.CORRECT: [True, True, False, False, False, True],
        C.FINISH_REASON: ["stop", "stop", "stop", "stop", "error", "stop"],
    }
    out = DifficultyStage(DifficultyConfig())(batch)
    by_model = {m: (r, n, k, dm) for m, r, n, k, dm in zip(out[C.MODEL_ID], out[C.PASS_RATE], out[C.N_SAMPLES],
                                                          out[C.N_CORRECT], out[C.DIFFICULTY_MODEL])}
    assert by_model["big"] == (pytest.approx(2 / 3), 3, 2, "big")
    assert by_model["small"] == (0.5, 2, 1, "small")  # the errored generation is not an attempt
    stats = problem_stats(batch[C.PROBLEM_ID], batch[C.MODEL_ID], batch[C.CORRECT], batch[C.FINISH_REASON],
                          DifficultyConfig(interval="jeffreys"))
    assert stats[("p", "small")][C.TIER] == "medium" and stats[("p", "big")][C.TIER] == "easy"
    assert 0 < stats[("p", "big")][C.CI_LOW] < 2 / 3 < stats[("p", "big")][C.CI_HIGH] < 1

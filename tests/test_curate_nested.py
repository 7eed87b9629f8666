"""Property tests: selection is nested (a smaller budget keeps a subset), for every rule, seed and noise level."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import columns as C
from stages.curate import CurateConfig, plan
from stages.difficulty import DifficultyConfig, problem_stats

RULES = [
    "all", "random", "keep_hard", "keep_easy", "correct_only", "keep_hard_correct", "keep_easy_correct",
    {"pass_rate_band": {"lo": 0.1, "hi": 0.9}}, "screen_unsolved", "quality", "diversity",
    {"limo": {"max_pass_rate": 0.6}}, "s1",
]


def table(n_problems: int, k: int, data_seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(data_seed)
    rates = rng.random(n_problems)
    rows = []
    for i in range(n_problems):
        for j in range(k):
            ok = bool(rng.random() < rates[i])
            finish = "error" if rng.random() < 0.05 else ("length" if rng.random() < 0.05 else "stop")
            rows.append({C.PROBLEM_ID: f"id{data_seed}-{i}", C.SAMPLE_IDX: j, C.LEVEL: int(rng.integers(1, 4)),
                         C.MODEL_ID: "m", C.CORRECT: ok and finish != "error", C.FINISH_REASON: finish,
                         C.SCREEN_PASS_RATE: float(rng.random() < 0.3),
                         C.COMPLETION: "step = " * int(rng.integers(1, 6)) + ("verify " if ok else "maybe ")})
    frame = pd.DataFrame(rows)
    stats = problem_stats(frame[C.PROBLEM_ID], frame[C.MODEL_ID], frame[C.CORRECT], frame[C.FINISH_REASON],
                          DifficultyConfig())
    for col in (C.PASS_RATE, C.N_SAMPLES, C.N_CORRECT, C.CI_LOW, C.CI_HIGH):
        frame[col] = [stats[(p, "m")][col] for p in frame[C.PROBLEM_ID]]
    return frame


def kept_sets(frame, decisions):
    kept = decisions[C.KEPT].to_numpy()
    return set(frame.loc[kept, C.PROBLEM_ID]), set(zip(frame.loc[kept, C.PROBLEM_ID], frame.loc[kept, C.SAMPLE_IDX]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(RULES),
    n_problems=st.integers(1, 30), k=st.integers(1, 5), data_seed=st.integers(0, 10_000),
    seed=st.integers(0, 2**31), small=st.integers(1, 30), extra=st.integers(0, 30),
    eta=st.sampled_from([0.0, 0.3, 1.0]), eps=st.sampled_from([0.0, 0.4]),
)
def test_smaller_budget_keeps_a_subset(rule, n_problems, k, data_seed, seed, small, extra, eta, eps):
    frame = table(n_problems, k, data_seed)
    cfg = dict(rule=rule, oracle_noise=eta, generator_noise=eps)
    little = plan(frame, CurateConfig(n=small, **cfg), seed)
    large = plan(frame, CurateConfig(n=small + extra, **cfg), seed)
    unlimited = plan(frame, CurateConfig(**cfg), seed)
    problems_s, rows_s = kept_sets(frame, little)
    problems_l, rows_l = kept_sets(frame, large)
    problems_u, rows_u = kept_sets(frame, unlimited)
    assert problems_s <= problems_l <= problems_u and rows_s <= rows_l <= rows_u
    assert len(problems_s) == min(small, len(problems_u))
    # rank says it all: the budget-n selection is exactly the problems ranked below n
    ranked = set(frame.loc[(unlimited["rank"] >= 0) & (unlimited["rank"] < small), C.PROBLEM_ID])
    assert ranked == problems_s
    # fraction budgets nest the same way
    quarter = kept_sets(frame, plan(frame, CurateConfig(p=0.25, **cfg), seed))[0]
    half = kept_sets(frame, plan(frame, CurateConfig(p=0.5, **cfg), seed))[0]
    assert quarter <= half <= problems_u


@settings(max_examples=40, deadline=None)
@given(
    rule=st.sampled_from(["random", "keep_hard", "keep_easy", "keep_hard_correct", "keep_easy_correct"]),
    n_problems=st.integers(2, 30), k=st.integers(1, 4), data_seed=st.integers(0, 10_000), seed=st.integers(0, 99),
    keep_fraction=st.floats(0.1, 0.9),
)
def test_order_does_not_depend_on_the_rest_of_the_pool(rule, n_problems, k, data_seed, seed, keep_fraction):
    """For the hash-ordered rules a problem's place among others is the same in a sub-pool (nested pool sizes)."""
    frame = table(n_problems, k, data_seed)
    ids = sorted(frame[C.PROBLEM_ID].unique())
    rng = np.random.default_rng(data_seed)
    sub_ids = set(rng.choice(ids, size=max(1, int(keep_fraction * len(ids))), replace=False))
    sub = frame[frame[C.PROBLEM_ID].isin(sub_ids)]
    rank_of = lambda f, d: d.groupby(f[C.PROBLEM_ID])["rank"].first()  # noqa: E731
    full_rank = rank_of(frame, plan(frame, CurateConfig(rule=rule), seed))
    sub_rank = rank_of(sub, plan(sub, CurateConfig(rule=rule), seed))
    in_both = [p for p in full_rank.index if p in sub_ids and full_rank[p] >= 0]
    assert sorted(in_both, key=lambda p: full_rank[p]) == sorted(in_both, key=lambda p: sub_rank[p])

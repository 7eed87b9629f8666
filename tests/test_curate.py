"""Curation rules, budgets, traces, noise knobs and the report, on in-memory tables and plain dict batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import columns as C
from stages.rules import RULES, RuleError, quality_scores
from stages.curate import CurateConfig, CurateStage, corrupt_answer, plan, training_rows
from stages.difficulty import DifficultyConfig, problem_stats

ALL_RULES = [
    "all", "random", "keep_hard", "keep_easy", "correct_only", ["correct_only", "keep_hard"],
    ["correct_only", "keep_easy"], "keep_hard_correct", "keep_easy_correct", {"pass_rate_band": {"lo": 0.2, "hi": 0.8}},
    "screen_unsolved", "quality", {"diversity": {"domain": "level"}}, {"limo": {"max_pass_rate": 0.5}}, "s1",
    "keep_hard_stratified", "keep_easy_stratified", "keep_hard_stratified_correct",
    {"keep_easy_stratified_correct": {"by": "level"}},
]


def make_samples(n_problems: int = 60, k: int = 8, seed: int = 0, errors: bool = True, screen: bool = True):
    """A sample table as the difficulty stage leaves it (with completion text)."""
    rng = np.random.default_rng(seed)
    rates = rng.beta(0.8, 0.7, n_problems)
    rows = []
    for i in range(n_problems):
        for j in range(k):
            ok = bool(rng.random() < rates[i])
            finish = "error" if errors and rng.random() < 0.03 else "stop"
            steps = " ".join(f"{j}+{s}={j + s}." for s in range(1 + (i + j) % 4))
            rows.append({
                C.PROBLEM_ID: f"p{i:03d}", C.SAMPLE_IDX: j, C.LEVEL: i % 6 + 1, C.SOURCE: "toy", C.MODEL_ID: "m",
                C.CORRECT: ok and finish != "error", C.FINISH_REASON: finish, C.ANSWER: "2",
                C.COMPLETION: "" if finish == "error" else f"{steps} Answer: \\boxed{{{2 if ok else 3}}}",
            })
    frame = pd.DataFrame(rows)
    stats = problem_stats(frame[C.PROBLEM_ID], frame[C.MODEL_ID], frame[C.CORRECT], frame[C.FINISH_REASON],
                          DifficultyConfig())
    for col in C.DIFFICULTY_COLUMNS:
        frame[col] = [stats[(p, "m")][col] for p in frame[C.PROBLEM_ID]]
    if screen:
        frame[C.SCREEN_PASS_RATE] = [float(int(p[1:]) % 3 == 0) for p in frame[C.PROBLEM_ID]]
    return frame


@pytest.fixture(scope="module")
def samples():
    return make_samples()


@pytest.mark.parametrize("rule", ALL_RULES, ids=str)
@pytest.mark.parametrize("budget", [{}, {"n": 10}, {"p": 0.25}], ids=["no_budget", "n10", "p25"])
def test_every_row_is_kept_or_dropped_with_a_reason(samples, rule, budget):
    cfg = CurateConfig(rule=rule, **budget)
    d = plan(samples, cfg, seed=1)
    assert len(d) == len(samples) and (d.index == samples.index).all()
    kept, dropped = d[C.KEPT], ~d[C.KEPT]
    counts = d.loc[dropped, C.DROP_REASON].value_counts()
    assert int(kept.sum()) + int(counts.sum()) == len(samples)  # rows in = kept + dropped by reason
    assert d.loc[dropped, C.DROP_REASON].notna().all() and d.loc[kept, C.DROP_REASON].isna().all()
    assert d.loc[kept, C.KEEP_REASON].notna().all()
    kept_problems = samples.loc[kept, C.PROBLEM_ID].nunique()
    if "n" in budget:
        assert kept_problems <= budget["n"]
    if "p" in budget:
        assert kept_problems <= round(budget["p"] * samples[C.PROBLEM_ID].nunique())
    if cfg.effective_label_aware:
        assert samples.loc[kept, C.CORRECT].all()
    assert (samples.loc[kept, C.FINISH_REASON] != "error").all()


def test_every_registered_rule_is_covered():
    named = {r if isinstance(r, str) else next(iter(r)) for r in ALL_RULES if not isinstance(r, list)}
    assert named == set(RULES)


def test_keep_hard_and_keep_easy_order_by_pass_rate(samples):
    hard = plan(samples, CurateConfig(rule="keep_hard", n=15), 0)
    easy = plan(samples, CurateConfig(rule="keep_easy", n=15), 0)
    rate = lambda d: samples.loc[d[C.KEPT], C.PASS_RATE]  # noqa: E731
    assert rate(hard).max() <= rate(easy).min()
    # label-agnostic: one completion per problem, correct or not, unsolved problems included
    assert samples.loc[hard[C.KEPT], C.PROBLEM_ID].is_unique and (rate(hard) == 0).any()
    assert (~samples.loc[hard[C.KEPT], C.CORRECT]).any()
    aware = plan(samples, CurateConfig(rule="keep_hard_correct", n=15), 0)
    assert rate(aware).min() > 0 and samples.loc[aware[C.KEPT], C.CORRECT].all()
    assert aware[C.RULE].iloc[0] == "keep_hard_correct"
    assert plan(samples, CurateConfig(rule="keep_hard", trace="shortest_correct", n=15), 0)[C.RULE].iloc[0] == \
        "correct_only+keep_hard"  # a correct trace makes the rule label-aware (configs/tiny.yaml)


def test_stratified_rules_rank_within_levels_and_keep_the_mix():
    # Levels 1-2 are easy, 5-6 hard, so keep_hard takes only high levels; its stratified form keeps every level in
    # the pool's proportions (after the correctness filter: among the eligible problems) and the hardest of each.
    rng = np.random.default_rng(3)
    n = 600
    level = rng.choice(np.arange(1, 7), size=n, p=[0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
    rate = np.clip(1 - level / 7 + rng.normal(0, 0.1, n), 0, 1)
    table = pd.DataFrame({C.PROBLEM_ID: [f"p{i}" for i in range(n)], C.SAMPLE_IDX: 0, C.LEVEL: level,
                          C.CORRECT: rng.random(n) < np.where(level > 3, 0.5, 0.9), C.FINISH_REASON: "stop",
                          C.PASS_RATE: rate})

    def kept(rule, p, seed=0):
        return table[plan(table, CurateConfig(rule=rule, p=p, report=False), seed)[C.KEPT].to_numpy()]

    plain = kept("keep_hard", 0.2)
    assert not set(plain[C.LEVEL]) & {1, 2}
    for rule, label_aware in (("keep_hard_stratified", False), ("keep_hard_stratified_correct", True)):
        eligible = table[table[C.CORRECT]] if label_aware else table
        share = eligible[C.LEVEL].value_counts(normalize=True)
        picked = kept(rule, 0.2)
        assert len(picked) == 120
        got = picked[C.LEVEL].value_counts(normalize=True)
        assert all(abs(got.get(lv, 0.0) - share[lv]) <= 0.02 for lv in share.index), (rule, got, share)
        for lv, group in picked.groupby(C.LEVEL):  # the hardest of each level: nothing easier left out
            pool = eligible[eligible[C.LEVEL] == lv]
            assert group[C.PASS_RATE].max() <= pool[C.PASS_RATE].quantile(0.3), (rule, lv)
        if label_aware:
            assert picked[C.CORRECT].all()
    easy = kept("keep_easy_stratified", 0.2)
    hard = kept("keep_hard_stratified", 0.2)
    assert easy[C.PASS_RATE].mean() > hard[C.PASS_RATE].mean() + 0.2
    # Nested: a smaller budget is a prefix of a larger one.
    assert set(kept("keep_hard_stratified", 0.1)[C.PROBLEM_ID]) <= set(hard[C.PROBLEM_ID])
    with pytest.raises(RuleError, match="no column 'domain'"):
        plan(table, CurateConfig(rule={"keep_hard_stratified": {"by": "domain"}}, p=0.2, report=False), 0)


def test_pass_rate_band_and_score_choice(samples):
    d = plan(samples, CurateConfig(rule={"pass_rate_band": {"lo": 0.25, "hi": 0.5}}), 0)
    rates = samples.loc[d[C.KEPT], C.PASS_RATE]
    assert rates.between(0.25, 0.5).all() and len(rates) > 0
    assert (d[C.DROP_REASON] == "outside_pass_rate_band").any()
    by_low = plan(samples, CurateConfig(rule="keep_hard", score="ci_low", n=5), 0)
    assert (by_low[C.CURATION_SCORE] == samples[C.CI_LOW]).all()


def test_trace_choices(samples):
    one = samples[samples[C.PROBLEM_ID] == "p001"]
    correct = one[one[C.CORRECT]]
    assert len(correct) >= 2
    pick = lambda trace: one.loc[plan(one, CurateConfig(rule="all", trace=trace), 0)[C.KEPT], C.SAMPLE_IDX].tolist()  # noqa: E731
    chars = correct[C.COMPLETION].str.len()
    assert pick("shortest_correct") == [correct.loc[chars.idxmin(), C.SAMPLE_IDX]]
    assert pick("longest_correct") == [correct.loc[chars == chars.max(), C.SAMPLE_IDX].min()]  # ties: lowest index
    assert pick("all_correct") == correct[C.SAMPLE_IDX].tolist()
    assert len(pick("random_correct")) == 1 and pick("random_correct")[0] in correct[C.SAMPLE_IDX].tolist()
    best = pick("best_quality")[0]
    q = quality_scores(correct[C.COMPLETION].tolist())
    assert q[correct[C.SAMPLE_IDX].tolist().index(best)] == q.max()
    random_traces = {tuple(pick("random_correct")) for _ in range(3)}
    assert len(random_traces) == 1  # seeded: the same choice every time


def test_oracle_noise_replaces_scores_for_a_seeded_fraction(samples):
    base = plan(samples, CurateConfig(rule="keep_hard", n=20), 0)
    noisy = plan(samples, CurateConfig(rule="keep_hard", n=20, oracle_noise=0.5), 0)
    again = plan(samples, CurateConfig(rule="keep_hard", n=20, oracle_noise=0.5), 0)
    pd.testing.assert_frame_equal(noisy, again)
    problems = noisy.groupby(samples[C.PROBLEM_ID])[C.ORACLE_NOISE].first()
    assert 0.3 < problems.mean() < 0.7
    hit = noisy[C.ORACLE_NOISE].to_numpy()
    assert (noisy.loc[~hit, C.CURATION_SCORE] == samples.loc[~hit, C.PASS_RATE]).all()
    assert (noisy.loc[hit, C.CURATION_SCORE] != samples.loc[hit, C.PASS_RATE]).any()
    assert not base[C.ORACLE_NOISE].any() and (base[C.KEPT] != noisy[C.KEPT]).any()
    everything = plan(samples, CurateConfig(rule="keep_hard", oracle_noise=1.0), 0)
    assert everything[C.ORACLE_NOISE].all()


def test_generator_noise_swaps_in_wrong_completions(samples):
    clean = plan(samples, CurateConfig(rule="all"), 0)
    noisy = plan(samples, CurateConfig(rule="all", generator_noise=0.3), 0)
    swapped = noisy[C.GENERATOR_NOISE] == "swapped_in"
    corrupted = noisy[C.GENERATOR_NOISE] == "corrupted_answer"
    assert swapped.any() and corrupted.any()
    assert not samples.loc[swapped, C.CORRECT].any() and noisy.loc[swapped, C.KEPT].all()
    assert (noisy[C.DROP_REASON] == "generator_noise_swapped_out").sum() == swapped.sum()
    assert noisy[C.KEPT].sum() == clean[C.KEPT].sum()  # as many training rows, a fraction of them wrong
    flipped = (swapped | corrupted).sum() / clean[C.KEPT].sum()
    assert 0.15 < flipped < 0.45
    train = training_rows(samples, noisy)
    wrong = train[train[C.GENERATOR_NOISE] == "corrupted_answer"]
    assert len(wrong) == corrupted.sum() and not wrong[C.CORRECT].any()
    assert not wrong[C.COMPLETION].str.contains(r"\\boxed\{2\}").any()


def test_corrupt_answer():
    assert corrupt_answer("1+1=2. Answer: \\boxed{2}", "2", "k") != "1+1=2. Answer: \\boxed{2}"
    assert corrupt_answer("x \\boxed{2} y", "2", "k").startswith("x \\boxed{") and "y" in corrupt_answer("x \\boxed{2} y", "2", "k")
    assert "\\boxed{" in corrupt_answer("no answer here", "5", "k")
    assert corrupt_answer("\\boxed{\\frac12}", None, "k") != "\\boxed{\\frac12}"


def test_limo_screen_quality_and_errors(samples):
    d = plan(samples, CurateConfig(rule={"limo": {"max_pass_rate": 0.5}}, n=8), 0)
    kept = samples[d[C.KEPT]]
    assert (kept[C.SCREEN_PASS_RATE] == 0).all() and (kept[C.PASS_RATE] <= 0.5).all() and kept[C.CORRECT].all()
    assert (d[C.DROP_REASON] == "solved_by_screen_model").any()
    assert kept[C.PROBLEM_ID].is_unique and len(kept) <= 8
    q = d.loc[d[C.KEPT], C.QUALITY_SCORE]
    over = d[C.DROP_REASON] == "over_budget"
    assert over.any()  # kept problems are the top 8 by best trace quality
    best_dropped = d.loc[over & samples[C.CORRECT], C.QUALITY_SCORE].max()
    assert q.min() >= best_dropped - 1e-12
    with pytest.raises(RuleError, match="screen stage"):
        plan(samples.drop(columns=[C.SCREEN_PASS_RATE]), CurateConfig(rule="limo"), 0)
    no_screen = plan(samples.drop(columns=[C.SCREEN_PASS_RATE]), CurateConfig(rule={"limo": {"screen": False, "max_pass_rate": 0.5}}), 0)
    assert no_screen[C.KEPT].any()
    with pytest.raises(RuleError, match="completion"):
        plan(samples.drop(columns=[C.COMPLETION]), CurateConfig(rule={"limo": {"screen": False}}), 0)


def test_s1_balances_domains(samples):
    big = make_samples(n_problems=240, k=4, seed=3)
    d = plan(big, CurateConfig(rule="s1", n=60), 0)
    levels = big.loc[d[C.KEPT], C.LEVEL].value_counts()
    assert levels.sum() == 60 and levels.max() - levels.min() <= 8  # uniform over the six levels
    assert (big.loc[d[C.KEPT], C.PASS_RATE] < 1).all()
    with pytest.raises(RuleError, match="domain"):
        plan(big, CurateConfig(rule={"s1": {"domain": "topic"}}), 0)


def test_config_errors_say_what_to_change():
    with pytest.raises(ValueError, match="valid rules: all, random"):
        CurateConfig(rule="keep_harder")
    with pytest.raises(ValueError, match="one budget"):
        CurateConfig(n=5, p=0.5)
    with pytest.raises(ValueError, match="label_aware: true"):
        CurateConfig(rule="keep_hard", label_aware=False, trace="shortest_correct")
    with pytest.raises(ValueError, match="contradicts"):
        CurateConfig(rule="limo", label_aware=False)
    with pytest.raises(ValueError, match="correct trace"):
        CurateConfig(rule="correct_only", trace="any")
    with pytest.raises(ValueError, match="lo"):
        CurateConfig(rule={"pass_rate_band": {"lo": 0.9, "hi": 0.1}})


def test_stage_marks_batches_like_plan_and_corrupts_text(samples):
    cfg = CurateConfig(rule="keep_easy_correct", n=12, generator_noise=0.5, trace="all_correct")
    batch = {c: samples[c].tolist() for c in samples.columns}
    out = CurateStage(cfg, seed=4)(batch)
    ref = plan(samples, cfg, 4)
    assert out[C.KEPT] == ref[C.KEPT].tolist()
    assert out[C.DROP_REASON] == [None if k else r for k, r in zip(ref[C.KEPT], ref[C.DROP_REASON])]
    corrupted = [i for i, g in enumerate(out[C.GENERATOR_NOISE]) if g == "corrupted_answer"]
    for i in corrupted:
        assert out[C.COMPLETION][i] != batch[C.COMPLETION][i] and out[C.CORRECT][i] is False


def test_plan_is_fast_on_a_sweep_sized_table():
    import time

    big = make_samples(n_problems=2000, k=8, seed=5).drop(columns=[C.COMPLETION])
    plan(big, CurateConfig(rule="keep_hard", n=500), 0)  # warm the per-id hash cache
    start = time.perf_counter()
    d = plan(big, CurateConfig(rule="keep_hard", n=500, oracle_noise=0.25, generator_noise=0.1), 0)
    elapsed = time.perf_counter() - start
    assert d[C.KEPT].sum() == 500
    print(f"plan on {len(big)} rows: {elapsed * 1000:.0f} ms")


def test_report_writes_plots_and_counts(samples, tmp_path):
    import json

    from stages.curation_report import write_report

    cfg = CurateConfig(rule="keep_hard_correct", n=10)
    d = plan(samples, cfg, 0)
    out = write_report(samples, d, cfg, tmp_path / "report")
    for name in ("pass_rate.png", "kept.png", "report.json", "report.md"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["kept_problems"] == 10 and summary["problems"] == samples[C.PROBLEM_ID].nunique()
    assert summary["kept_rows"] + sum(summary["dropped_rows_by_reason"].values()) == len(samples)
    assert sum(v["kept_problems"] for v in summary["kept_by_level"].values()) == 10
    over_budget = samples.loc[d[C.DROP_REASON] == "over_budget", C.PASS_RATE]
    assert len(summary["pass_rate_after"]) == 10 and max(summary["pass_rate_after"]) <= over_budget.min()


def test_noise_functions_are_pure_and_per_problem():
    from stages.curate import generator_noise, oracle_noise

    ids = [f"q{i}" for i in range(400)]
    scores, hit = oracle_noise(ids, np.zeros(400), 0.25, seed=9)
    sub_scores, sub_hit = oracle_noise(ids[::3], np.zeros(len(ids[::3])), 0.25, seed=9)
    assert (sub_hit == hit[::3]).all() and (sub_scores == scores[::3]).all()  # the same problem, hit the same way
    assert 0.18 < hit.mean() < 0.32 and (scores[~hit] == 0).all() and (scores[hit] > 0).all()
    assert not oracle_noise(ids, np.zeros(400), 0.25, seed=10)[1].tolist() == hit.tolist()
    chosen, noise, out = generator_noise(["a", "a", "b"], [0, 1, 0], [True, False, True], [True] * 3,
                                         [True, False, True], eps=1.0, seed=0)
    assert chosen.tolist() == [False, True, True] and noise.tolist() == [None, "swapped_in", "corrupted_answer"]
    assert out.tolist() == [True, False, False]

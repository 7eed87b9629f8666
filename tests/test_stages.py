"""Each stage on plain dict batches, without Ray."""

from __future__ import annotations

import json

import pytest

from pipeline import columns as C
from stages.base import batch_len
from stages.curate import CurateConfig, CurateStage
from stages.difficulty import DifficultyConfig, DifficultyStage, pass_interval
from stages.source import SourceConfig, SourceStage
from stages.verify import VerifyConfig, VerifyStage


def _read_all(stage: SourceStage) -> dict:
    out: dict = {}
    for b in stage.read(batch_size=7):
        for k, v in b.items():
            out.setdefault(k, []).extend(v)
    return out


def test_toyworld_source_is_deterministic_and_well_formed():
    cfg = SourceConfig(kind="toyworld", n=30, levels=(1, 2, 3))
    a, b = _read_all(SourceStage(cfg, seed=1)), _read_all(SourceStage(cfg, seed=1))
    assert a == b and batch_len(a) == 30
    assert set(a[C.LEVEL]) <= {1, 2, 3}
    assert all(r is None for r in a[C.REJECT_REASON])
    assert len(set(a[C.PROBLEM_ID])) == 30
    assert _read_all(SourceStage(cfg, seed=2))[C.PROBLEM_ID] != a[C.PROBLEM_ID]


def test_jsonl_source_quarantines_bad_rows(tmp_path):
    lines = [
        {"problem": "1+1?", "answer": "2"},
        {"problem": "2+2?", "answer": 4},  # numbers are accepted as answers
        {"problem": "no answer"},
        {"answer": "3"},
        {"problem": ["not", "text"], "answer": "1"},
        {"problem": "   ", "answer": "1"},
        {"problem": "1+1?", "answer": "2"},  # duplicate
        {"problem": "bool answer", "answer": True},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    rows = _read_all(SourceStage(SourceConfig(kind="jsonl", path=str(path))))
    reasons = rows[C.REJECT_REASON]
    assert batch_len(rows) == len(lines) + 1  # nothing lost
    assert reasons[0] is None and reasons[1] is None and rows[C.ANSWER][1] == "4"
    assert "missing field 'answer'" in reasons[2]
    assert "missing field 'problem'" in reasons[3]
    assert "expected a string" in reasons[4]
    assert "empty" in reasons[5]
    assert "duplicate" in reasons[6]
    assert "bool" in reasons[7]
    assert "not valid JSON" in reasons[8]


def test_gsm8k_answer_format():
    from stages.source import normalize_row

    cfg = SourceConfig(kind="jsonl", path="x", answer_field="solution", answer_format="gsm8k")
    row = normalize_row({"problem": "q", "solution": "48/2 = 24\n#### 1,024"}, cfg, "gsm")
    assert row[C.ANSWER] == "1024" and row[C.REJECT_REASON] is None


def test_reasoning_gym_source():
    rows = _read_all(SourceStage(SourceConfig(kind="reasoning_gym", task="basic_arithmetic", n=5), seed=3))
    assert batch_len(rows) == 5 and all(r is None for r in rows[C.REJECT_REASON])
    meta = json.loads(rows[C.METADATA][0])
    assert meta["task"] == "basic_arithmetic" and meta["entry"]["answer"] == rows[C.ANSWER][0]


def _sample_batch(pass_pattern: dict[str, list[bool]]) -> dict:
    rows = []
    for pid, oks in pass_pattern.items():
        for j, ok in enumerate(oks):
            rows.append({
                C.PROBLEM_ID: pid, C.SAMPLE_IDX: j, C.LEVEL: int(pid[1:]) % 6 + 1, C.MODEL_ID: "m",
                C.CORRECT: ok, C.FINISH_REASON: "stop", C.COMPLETION: "x" * (10 + j) + f" \\boxed{{{int(ok)}}}",
            })
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_difficulty_adds_pass_rate_interval_and_tier():
    batch = _sample_batch({"p1": [True] * 4, "p2": [True, False, False, False], "p3": [False] * 4})
    out = DifficultyStage(DifficultyConfig())(batch)
    by = {p: (r, t, lo, hi) for p, r, t, lo, hi in zip(out[C.PROBLEM_ID], out[C.PASS_RATE], out[C.TIER], out[C.CI_LOW], out[C.CI_HIGH])}
    assert by["p1"][:2] == (1.0, "solved") and by["p2"][:2] == (0.25, "hard") and by["p3"][:2] == (0.0, "unsolved")
    assert by["p2"][2] < 0.25 < by["p2"][3]
    assert set(out[C.DIFFICULTY_MODEL]) == {"m"} and set(out[C.N_SAMPLES]) == {4}


def test_wilson_and_jeffreys_intervals():
    lo, hi = pass_interval(5, 10, "wilson")
    assert 0.23 < lo < 0.24 and 0.76 < hi < 0.77  # textbook Wilson 95% for 5/10: (0.237, 0.763)
    lo, hi = pass_interval(0, 8, "jeffreys")
    assert lo == 0.0 and 0 < hi < 0.3


def _difficulty(batch: dict) -> dict:
    return DifficultyStage(DifficultyConfig())(batch)


def test_curate_keep_hard_and_keep_easy_and_counts():
    pattern = {f"p{i}": [j < i % 5 for j in range(4)] for i in range(20)}
    batch = _difficulty(_sample_batch(pattern))
    for rule in ("keep_hard", "keep_easy", "random", "all"):
        for label_aware in (True, False):
            cfg = CurateConfig(rule=rule, label_aware=label_aware, n=None if rule == "all" else 5)
            out = CurateStage(cfg, seed=0)(batch)
            kept = sum(out[C.KEPT])
            dropped = sum(1 for k in out[C.KEPT] if not k)
            assert kept + dropped == batch_len(batch)
            assert all((r is None) == k for k, r in zip(out[C.KEPT], out[C.DROP_REASON]))
            if label_aware:
                assert all(c for c, k in zip(out[C.CORRECT], out[C.KEPT]) if k)
    hard = CurateStage(CurateConfig(rule="keep_hard", label_aware=False, n=4), seed=0)(batch)
    easy = CurateStage(CurateConfig(rule="keep_easy", label_aware=False, n=4), seed=0)(batch)
    rate = lambda out: [r for r, k in zip(out[C.PASS_RATE], out[C.KEPT]) if k]
    assert max(rate(hard)) <= min(rate(easy))
    assert len(rate(hard)) == 4  # trace 'any': one completion per kept problem


def test_curate_trace_choice():
    batch = _difficulty(_sample_batch({"p1": [True, True, False, True]}))
    short = CurateStage(CurateConfig(rule="all", trace="shortest_correct"))(batch)
    long = CurateStage(CurateConfig(rule="all", trace="longest_correct"))(batch)
    every = CurateStage(CurateConfig(rule="all"))(batch)
    pick = lambda out: [i for i, k in zip(out[C.SAMPLE_IDX], out[C.KEPT]) if k]
    assert pick(short) == [0] and pick(long) == [3] and pick(every) == [0, 1, 3]
    assert [r for r in every[C.DROP_REASON] if r] == ["incorrect_completion"]


def test_verify_stage_marks_errors_and_truncation():
    batch = {
        C.COMPLETION: ["1+1=2. Answer: \\boxed{2}", "Answer: \\boxed{3}", "", "1+1=2. Answer: \\boxed{2}"],
        C.ANSWER: ["2", "2", "2", "2"],
        C.FINISH_REASON: ["stop", "stop", "error", "length"],
    }
    out = VerifyStage(VerifyConfig(verifier="math", options={"timeout_s": 5}))(batch)
    assert out[C.CORRECT] == [True, False, False, False]
    assert out[C.VERDICT_REASON][:3] == ["ok", "mismatch", "error"]
    assert out[C.VERDICT_REASON][3] == "no_answer"  # truncated at max_tokens: no answer by default


def test_sample_stage_rows_and_batch_invariance(toy_test_model):
    from stages.sample import SampleConfig, SampleStage

    from pipeline.toyworld import make_problems

    probs = make_problems(6, levels=(1, 2), seed=5)
    batch = {C.PROBLEM_ID: [f"id{i}" for i in range(6)], C.PROBLEM: [p["problem"] for p in probs],
             C.ANSWER: [p["answer"] for p in probs], C.LEVEL: [p["level"] for p in probs]}
    cfg = SampleConfig(model=toy_test_model, k=3, max_tokens=48, temperature=0.8, generate_batch_size=5)
    stage = SampleStage(cfg, seed=11)
    out = stage(batch)
    assert batch_len(out) == 18
    assert out[C.SAMPLE_IDX][:3] == [0, 1, 2] and out[C.PROBLEM_ID][:3] == ["id0"] * 3
    assert set(out[C.FINISH_REASON]) <= {"stop", "length"}
    assert all(isinstance(s, int) for s in out[C.SEED]) and len(set(out[C.SEED])) == 18
    assert all(n > 0 for n in out[C.NUM_PROMPT_TOKENS])
    # A row's completion depends on its seed, not on which rows share its batch.
    alone = SampleStage(cfg.model_copy(update={"generate_batch_size": 1}), seed=11)(
        {k: v[2:3] for k, v in batch.items()})
    assert alone[C.COMPLETION] == out[C.COMPLETION][6:9]

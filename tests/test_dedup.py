"""Exact and MinHash near-duplicates, and n-gram overlap with evaluation problems (plain dict batches, no Ray)."""

from __future__ import annotations

import json

import pytest

from pipeline import columns as C
from stages.base import batch_len
from stages.dedup import DedupConfig, DedupStage, find_duplicates, word_ngrams
from stages.source import SourceConfig

LONG = ("A farmer has 17 sheep and buys 5 more each week for 6 weeks, then sells half of the flock at the market; "
        "how many sheep does the farmer have left at the end")


def _batch(texts: list[str], ids: list[str] | None = None) -> dict:
    ids = ids or [f"p{i}" for i in range(len(texts))]
    return {C.PROBLEM_ID: ids, C.PROBLEM: texts, C.ANSWER: ["1"] * len(texts)}


def test_exact_and_near_duplicates_keep_the_smallest_id():
    texts = [LONG, LONG.upper().replace(" ", "  "), LONG.replace("at the end", "at the very end"),
             "Compute 72+10-75+50-11.\n", "Compute 72+10-75+50-12.\n", "What is the area of a unit circle?"]
    out = DedupStage(DedupConfig())(_batch(texts, ["b", "a", "c", "d", "e", "f"]))
    reasons = dict(zip(out[C.PROBLEM_ID], out[C.REJECT_REASON]))
    assert reasons["a"] is None  # the smallest id of the exact pair is kept
    assert reasons["b"] == "exact_duplicate: of a"
    assert reasons["c"].startswith("near_duplicate: of a")
    # arithmetic problems that differ in one number are different problems, not near duplicates
    assert reasons["d"] is None and reasons["e"] is None and reasons["f"] is None
    assert batch_len(out) == len(texts)  # nothing removed: the runner quarantines rows with a reason


def test_thresholds_and_switches():
    texts = [LONG, LONG.replace("at the end", "at the very end")]
    assert find_duplicates(["x", "y"], texts, DedupConfig(near=False)) == {}
    assert find_duplicates(["x", "y"], texts, DedupConfig(threshold=0.95)) == {}
    assert set(find_duplicates(["x", "y"], texts, DedupConfig(threshold=0.5))) == {"y"}
    assert find_duplicates(["x", "y"], [LONG, LONG], DedupConfig(exact=False, near=False)) == {}


def test_ngrams():
    assert word_ngrams("a b c", 8) == {"a b c"}  # shorter than n: the whole text is one n-gram
    assert word_ngrams("A  b C d", 2) == {"a b", "b c", "c d"}
    assert word_ngrams("   ", 3) == set()


def test_decontamination_against_evaluation_files(tmp_path):
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text("\n".join(json.dumps(r) for r in [
        {"problem": "Unrelated: " + LONG[:60] + " and then some more words follow here", "answer": "3"},
        {"problem": "Compute 1+2.", "answer": "3"},
    ]) + "\n")
    cfg = DedupConfig(evaluation=(SourceConfig(kind="jsonl", path=str(evaluation)),), ngram=8)
    texts = [LONG, "compute 1+2.", "Compute 1+3.", "The unit circle has area pi, what is its circumference?"]
    out = DedupStage(cfg)(_batch(texts))
    reasons = out[C.REJECT_REASON]
    assert reasons[0].startswith("eval_overlap") and "8-gram" in reasons[0]
    assert reasons[1].startswith("eval_overlap")  # a short exact copy, caught as one n-gram
    assert reasons[2] is None and reasons[3] is None
    with pytest.raises(ValueError):
        DedupConfig(ngram=0)


def test_toyworld_heldout_decontamination():
    from stages.source import SourceStage

    pool = SourceStage(SourceConfig(kind="toyworld", n=200, levels=(1,)), seed=5)
    heldout = SourceConfig(kind="toyworld", n=200, levels=(1,), seed=5)  # the same draw: every problem overlaps
    batch = next(iter(pool.read()))
    out = DedupStage(DedupConfig(evaluation=(heldout,)))({k: v for k, v in batch.items() if k != C.REJECT_REASON})
    assert all(r and r.startswith("eval_overlap") for r in out[C.REJECT_REASON])

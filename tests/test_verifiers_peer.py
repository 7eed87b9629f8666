"""math-verify's own public test cases, run against the ``math`` verifier as a peer suite.

``tests/data/mathverify_peer_cases.jsonl`` holds the (gold, pred, expected) rows of the ``pytest.mark.parametrize``
tables in huggingface/Math-Verify's ``tests/`` (test_all.py, test_boxed.py, test_numina_cases.py,
test_open_thoughts.py, test_strict.py, test_yujianll.py; MIT licence, copyright The HuggingFace Team), read as data
from the repository snapshot named in each row's ``source`` (repository, commit, path, test name, line). Only the
cases are taken, never the library's code. Each row also keeps the settings its test passes to math-verify
(``match_types``, ``precision``, ``strict``, ``allow_set_relation_comp``), so math-verify is scored the way its own
suite calls it; the verifier is scored as a pipeline runs it, ``pred`` as the response and ``gold`` as the
reference, with its default options.

The cases are math-verify's regression tests, written for its own extraction (a bare ``pred`` such as
``"the number is not 10 which is 1,000.99€"`` has no answer anchor, which the verifier does not guess at), so the
floor below is what the verifier passes today; the README states both counts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from verifiers import build_verifier

CASES = Path(__file__).parent / "data" / "mathverify_peer_cases.jsonl"
#: Cases the verifier passes today (of 268; the others expect a test-specific option); math-verify 0.9.0 itself passes ``MATH_VERIFY_PASSES``.
VERIFIER_FLOOR = 264
MATH_VERIFY_PASSES = 268


def load_cases() -> list[dict]:
    """The peer cases, one dict per row."""
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]


def math_verify_as_its_suite_calls_it(case: dict) -> bool:
    """math-verify's verdict on one case, with the extraction targets and options its own test passes."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if case["match_types"] is None:  # the test calls verify(parse(gold), parse(pred)) with the defaults
        return bool(verify(parse(case["gold"]), parse(case["pred"])))
    targets = [LatexExtractionConfig(boxed_match_priority=0) if kind == "latex" else ExprExtractionConfig()
               for kind in case["match_types"]]
    return bool(verify(parse(case["gold"], targets), parse(case["pred"], targets), float_rounding=case["precision"],
                       strict=case["strict"], allow_set_relation_comp=case["allow_set_relation_comp"]))


def test_peer_cases_are_attributed():
    cases = load_cases()
    assert len(cases) >= 250
    for case in cases:
        source = case["source"]
        assert source["repository"] == "huggingface/Math-Verify" and len(source["commit"]) == 40
        assert source["path"].startswith("tests/") and source["test"].startswith("test_")
        assert isinstance(case["expected"], bool)


@pytest.fixture(scope="module")
def peer_results():
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    cases = load_cases()
    with build_verifier("math", workers=2, timeout_s=5) as verifier:
        verdicts = verifier.batch([c["pred"] for c in cases], [c["gold"] for c in cases])
    ours = [v.correct == c["expected"] for v, c in zip(verdicts, cases, strict=True)]
    theirs = [math_verify_as_its_suite_calls_it(c) == c["expected"] for c in cases]
    return cases, ours, theirs


def test_math_verifier_on_math_verify_suite(peer_results):
    cases, ours, theirs = peer_results
    failed = [f"{c['source']['test']}:{c['source']['line']} gold={c['gold'][:40]!r} pred={c['pred'][-60:]!r} "
              f"expected={c['expected']}" for c, ok in zip(cases, ours, strict=True) if not ok]
    print(f"\npeer suite: math verifier {sum(ours)}/{len(cases)}, math-verify {sum(theirs)}/{len(cases)}")
    print("\n".join(failed))
    assert sum(theirs) == MATH_VERIFY_PASSES
    assert sum(ours) >= VERIFIER_FLOOR


def _default_options(case: dict) -> bool:
    """Whether the case's test calls math-verify with its default comparison options. The others expect what an
    option gives (``allow_set_relation_comp=False`` rejects "-2 <= x <= 7" for "x in [-2, 7]", which is
    mathematically the same set and which the verifier accepts)."""
    return case["precision"] == 6 and case["strict"] and not case["allow_set_relation_comp"] and (
        case["source"]["test"] != "test_set_rel_assymetry")


def test_no_peer_false_positive_that_math_verify_avoids(peer_results):
    """A case math-verify rejects correctly is never accepted by the verifier: recall is not bought with FPs."""
    cases, ours, theirs = peer_results
    fps = [c for c, ok, mv_ok in zip(cases, ours, theirs, strict=True)
           if not c["expected"] and not ok and mv_ok and _default_options(c)]
    assert not fps, [(c["gold"], c["pred"]) for c in fps]

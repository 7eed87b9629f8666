"""Adversarial inputs never hang or crash a verifier: each gets a verdict within its deadline plus one second."""

from __future__ import annotations

import os
import time

import pytest

from verifiers import Verdict, Verifier, build_verifier

DEADLINE_S = 1.0
GRACE_S = 1.0
_DEEP = 5000

ADVERSARIAL = {
    "exponent_tower": (r"\boxed{10^{10^{10^{10^{10}}}}}", "3"),
    "tower_in_reference": (r"\boxed{3}", "9^{9^{9^{9^{9}}}}"),
    "huge_factorial": (r"\boxed{(10^{9})!}", "5"),
    "braces_5000_deep": (r"\boxed{" + "{" * _DEEP + "1" + "}" * _DEEP + "}", "1"),
    "braces_5000_deep_unboxed": ("The answer is $" + "{" * _DEEP + "1" + "}" * _DEEP + "$", "1"),
    "parentheses_900_deep": (r"\boxed{" + "(" * 900 + "1" + ")" * 900 + "}", "1"),
    "braces_deep_reference": (r"\boxed{1}", "{" * _DEEP + "1" + "}" * _DEEP),
    "multi_mb_prose": ("lorem ipsum " * 400_000 + r"\boxed{7}", "7"),
    "multi_mb_braces": ("{" * 3_000_000, "7"),
    "multi_mb_unclosed_boxes": (r"\boxed{" * 500_000, "7"),
    "multi_mb_digits": ("The answer is " + "9" * 2_000_000, "7"),
    "unclosed_boxed": (r"so the answer is \boxed{42", "42"),
    "invalid_unicode_and_nul": ("\ud800\x00 the answer is \\boxed{4\x00}\udfff", "4"),
    "nul_in_reference": (r"\boxed{4}", "4\x00\x00"),
    "latex_macro_definitions": (r"\def\x{\x\x}\newcommand{\y}{\y\y}\boxed{\x\y}", "1"),
    "huge_power_equation": (r"\boxed{(x+1)^{1000000000} = 0}", "x + 1 = 0"),
    "huge_integer": (r"\boxed{" + "9" * 50_000 + "}", "1"),
    "many_anchors": ("the answer is 1. " * 200_000, "1"),
}
VERIFIERS = ["math", "numeric", "exact", "choice", "reasoning_gym"]


@pytest.fixture(scope="module", params=VERIFIERS)
def verifier(request):
    options = {"timeout_s": DEADLINE_S}
    if request.param == "reasoning_gym":
        options["task"] = "basic_arithmetic"
    with build_verifier(request.param, **options) as v:
        v("warm up: \\boxed{1}", "1")  # worker start-up is not part of any item's deadline
        yield v


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_adversarial_input_gets_a_verdict_in_time(verifier, case):
    response, reference = ADVERSARIAL[case]
    started = time.monotonic()
    verdict = verifier(response, reference)
    elapsed = time.monotonic() - started
    assert elapsed <= DEADLINE_S + GRACE_S, f"{verifier.name} took {elapsed:.2f}s on {case}"
    assert verdict.reason in ("ok", "mismatch", "no_answer", "timeout", "error")
    assert verdict.verifier == verifier.name


def test_adversarial_batch_and_recovery():
    """A batch mixing stuck items with normal ones: the stuck ones time out, the rest are verified correctly,
    and the replaced workers serve the next batch."""
    with build_verifier("math", timeout_s=DEADLINE_S, workers=2) as verifier:
        verifier(r"\boxed{1}", "1")
        towers = [ADVERSARIAL["exponent_tower"]] * 3
        normal = [(r"\boxed{\frac{1}{2}}", "0.5"), ("#### 8", "7")] * 3
        items = towers + normal
        started = time.monotonic()
        verdicts = verifier.batch([r for r, _ in items], [g for _, g in items])
        elapsed = time.monotonic() - started
        assert [v.reason for v in verdicts[:3]] == ["timeout"] * 3
        assert [v.correct for v in verdicts[3:]] == [True, False] * 3
        # 3 stuck items on 2 workers: at most two deadlines back to back, plus the quick items
        assert elapsed <= 2 * DEADLINE_S + GRACE_S + 1.0
        assert verifier(r"\boxed{2}", "2").correct


def test_large_items_behind_a_stuck_item_do_not_block_the_deadline():
    """Items queued behind a stuck one are re-sent to the replacement worker; a multi-megabyte item is never
    queued at a busy worker, so the parent never blocks on a full socket and enforces the deadline on time."""
    with build_verifier("math", timeout_s=DEADLINE_S, workers=1) as verifier:
        verifier(r"\boxed{1}", "1")
        big = "lorem ipsum " * 200_000 + r"\boxed{2}"
        items = [ADVERSARIAL["exponent_tower"], (big, "2"), (r"\boxed{3}", "3"), (r"\boxed{4}", "5")]
        started = time.monotonic()
        verdicts = verifier.batch([r for r, _ in items], [g for _, g in items])
        elapsed = time.monotonic() - started
        assert [v.reason for v in verdicts] == ["timeout", "ok", "ok", "mismatch"]
        assert elapsed <= DEADLINE_S + GRACE_S + 1.0


class _GreedyVerifier(Verifier):
    """Allocates what the reference asks for (in MiB), or kills its own process on "crash"."""

    name = "greedy"

    def check(self, response: str, reference: str) -> Verdict:
        if reference == "crash":
            os._exit(3)
        block = bytearray(int(reference) * 1024 * 1024)
        return self._verdict(len(block) > 0, response, "ok")


def test_memory_cap_and_crashes_become_errors_and_workers_recover():
    with _GreedyVerifier(workers=1, timeout_s=10, memory_mb=300) as verifier:
        assert verifier("small", "16").reason == "ok"
        assert verifier("big", "2048").reason == "error"  # 2 GiB under a 300 MiB cap: MemoryError
        assert verifier("dies", "crash").reason == "error"  # the worker process died: replaced
        verdicts = verifier.batch(["a", "b", "c"], ["crash", "8", "4096"])
        assert [v.reason for v in verdicts] == ["error", "ok", "error"]
        assert verifier("after", "8").reason == "ok"

"""Verifiers: extraction, each verifier's table, options and registry errors, pickling, threads, Ray, audit."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import pytest

from verifiers import VERIFIERS, Verdict, VerifierConfig, build_verifier
from verifiers.audit import TRAP_CATEGORIES, audit, read_labelled
from verifiers.extract import Extraction, extract_answer, last_boxed
from verifiers.pool import _AffinityQueue

LABELLED = Path(__file__).parent / "data" / "verifier_labelled.jsonl"


@pytest.fixture(scope="module")
def math_verifier():
    with build_verifier("math", timeout_s=5, workers=2) as verifier:
        yield verifier


# -- extraction ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, answer, source",
    [
        (r"so \boxed{\frac{1}{2}} is it", r"\frac{1}{2}", "boxed"),
        (r"first \boxed{1}, then \boxed{\{1, 2\}}", r"\{1, 2\}", "boxed"),
        (r"\fbox{7}", "7", "boxed"),
        (r"\boxed{3} and later \boxed{4", "3", "boxed"),  # unclosed last box is skipped
        ("<answer> 42 </answer>", "42", "tag"),
        ("9 * 2 = 18\n#### 18", "18", "hash"),
        ("#### 3 The answer is: 4", "4", "answer_is"),  # the later anchor wins
        ("The answer is 3.5 apples. Then 4.", "3.5 apples", "answer_is"),
        ("The final answer is **73**.", "73", "answer_is"),
        ("**Answer:** 12", "12", "answer_is"),
        ("Final Answer:\n\n$x = 2$", "$x = 2$", "answer_is"),
        ("lots of work\nso the total is **73**.", "73", "bold"),
        ("  72  ", "72", "bare"),
        ("(B)", "(B)", "bare"),
    ],
)
def test_extract_answer_sources(text, answer, source):
    extraction = extract_answer(text)
    assert extraction is not None
    assert (extraction.text, extraction.source) == (answer, source)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "We add 3 and 4 to get 7, then multiply by 2 which gives fourteen overall.",
        r"The answer is \boxed{",
        "**Step 2:**\n**Step 3:**",
        "The answer is",
    ],
)
def test_extract_answer_none(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Therefore, the total number of apples is 42.", "42"),
        ("So, the ordered pair is $(7, 6)$. <|im_start|>user", "(7, 6)"),
        ("Donc, il reste 7 pommes.", "7"),
        ("She sold 48 + 24 = 72 clips altogether.", "72 clips altogether"),
        ("Thus the matrix is\n\\[\n\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}\n\\]", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    ],
)
def test_prose_conclusions_are_opt_in(text, answer):
    assert extract_answer(text, prose=True) == Extraction(answer, "prose")
    assert extract_answer(text) is None or extract_answer(text).source == "bare"


@pytest.mark.parametrize(
    "text",
    [
        "We still have to take away the 4 broken ones, so",  # stops mid-thought
        "So we have 3 apples and 5 pears and then we need more work to finish",  # no statement, no end
        "First 3 * 4 = 12. Then we divide the rest among the 5 friends and",
    ],
)
def test_prose_needs_a_stated_value(text):
    assert extract_answer(text, prose=True) is None


def test_a_later_final_answer_overrides_an_earlier_box():
    text = r"so \boxed{255} in interest. Final Answer: The final answer is $10,455$. I hope it is correct."
    assert extract_answer(text) == Extraction("$10,455$", "answer_is")
    assert extract_answer(r"\boxed{5}. The answer is correct because it checks out.").text == "5"


def test_boxed_run_reads_the_final_boxes_only():
    from verifiers.extract import boxed_run

    assert boxed_run(r"(a) $\boxed{3}$ (b) $\boxed{5}$") == ["3", "5"]
    assert boxed_run(r"First \boxed{5}. That is wrong; correcting, the answer is \boxed{7}.") == ["7"]


def test_other_languages_answer_anchors():
    assert extract_answer("Antwort:\n\nAntwort: C").text == "C"
    assert extract_answer("La réponse finale est 12 euros.").text == "12 euros"


def test_last_number_fallback_is_opt_in():
    text = "We add 3 and 4 to get 7, then multiply by 2 which gives 1,400 overall after scaling."
    assert extract_answer(text) is None
    assert extract_answer(text, last_number_fallback=True).text == "1400"


def test_last_boxed_nested_and_escaped_braces():
    assert last_boxed(r"\boxed{\frac{a}{b^{2}}}") == r"\frac{a}{b^{2}}"
    assert last_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"
    assert last_boxed(r"\boxed{") is None


# -- math ---------------------------------------------------------------------------------------------------
MATH_CASES = [
    (r"so $\boxed{\frac{1}{2}}$", "0.5", True),
    ("72+10=82. 82-75=7. Answer: \\boxed{7}", "7", True),
    ("72+10=82. 82-75=8. Answer: \\boxed{8}", "7", False),
    ("The answer is **73**.", "73", True),
    (r"\boxed{\frac{1}{2^{98}}}", r"\frac{1}{2^{99}}", False),  # tiny values
    (r"\boxed{0.333333}", r"\frac{1}{3}", True),
    (r"\boxed{3}", "2, 3", False),  # equation list: one solution missing
    (r"\boxed{3, 2}", "2, 3", True),
    ("The answer is 3x + 4y + 14 = 0", "3x - y + 13 = 0", False),  # un-delimited equations
    (r"\boxed{(x+1)^2}", "x^2+2x+1", True),
    (r"\boxed{\text{Monday}}", r"\text{Monday}", True),
    ("The answer is 12.5%", "12.5", True),
    (r"\boxed{[2,5]}", "[2,5)", False),
    ("She makes $18 a day. The answer is 18 dollars.", "18", True),
]


@pytest.mark.parametrize("response, reference, expected", MATH_CASES)
def test_math_verifier_table(math_verifier, response, reference, expected):
    verdict = math_verifier(response, reference)
    assert verdict.correct is expected
    assert verdict.reason == ("ok" if expected else "mismatch")
    assert verdict.verifier == "math" and verdict.ms > 0


# The recall issue's forms, in variations: matrices, inequalities for intervals, several boxes, mixed numbers,
# choice letters in a sentence, conclusions in prose (other languages too), currency; and the false-positive controls
# (units that differ, a sequence for one of its terms, an intermediate number).
RECALL_FORMS = [
    ('Therefore,\n\\[\n\\mathbf{M} = \\begin{pmatrix}\n1 & 2 \\\\\n3 & 4\n\\end{pmatrix}\n\\]', '\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}', True),
    ('Thus the matrix is\n$$\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}$$', '\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}', False),
    ('**Final Answer**\nThe smallest value is $5$.', '5', True),
    ('The answer is (-∞, 3).', '(-\\infty, 3)', True),
    ('The answer is x ≤ 3.', '(-\\infty, 3]', True),
    ('\\boxed{-3 < x < 2}', '(-3, 2)', True),
    ('So $x = \\boxed{2}$ and $y = \\boxed{3}$.', '(2, 3)', True),
    ('So $x = \\boxed{2}$ and $y = \\boxed{3}$.', '(3, 2)', False),
    ('(a) $\\boxed{3}$\n(b) $\\boxed{5}$', '3, 5', True),
    ('\\boxed{x=2}, \\boxed{y=3}', 'x=2, y=3', True),
    ('\\boxed{4\\frac49}', '40/9', True),
    ('\\boxed{-2 \\frac{1}{3}}', '-7/3', True),
    ('The answer is 4 4/9 hours.', '40/9', True),
    ('The correct answer is: **(C) 12**', 'C', True),
    ('Option (B) is correct.', 'B', True),
    ('Hence, (D).', 'D', True),
    ('I believe B is the correct answer.', 'B', True),
    ('I believe B is the correct answer.', 'C', False),
    ('A total of 12 apples, so the answer is D.', 'A', False),
    ('The final result is 42.', '42', True),
    ('So, Natalia sold 72 clips altogether in April and May.', '72', True),
    ('Hence the required sum equals $\\frac{3}{4}$.', '3/4', True),
    ('Donc, il reste 7 pommes.', '7', True),
    ('La respuesta correcta es 15.', '15', True),
    ('The total cost is USD 1,250.', '1250', True),
    ('She pays Rs. 500 in total, so the answer is Rs. 500.', '500', True),
    ('\\boxed{5\\,\\mathrm{m}}', '5\\,\\mathrm{cm}', False),
    ('\\boxed{5 \\text{ m}^2}', '5 \\text{ m}', False),
    ('The answer is 18 ft.', '18 \\text{ feet}', True),
    ('The sequence is 1, 2, 3.', '3', False),
    ('The first term is 3, and the sum is 18.', '3', False),
    ('The first term is 3, and the sum is 18.', '18', True),
    ('\\boxed{3, 6, 9}', '3', False),
    ('We get 5 + 3 = 8, then 8 * 2 = 16. Therefore the answer is 16 dollars.', '8', False),
    ('The area is 12 square meters.', '12 \\text{ m}^2', True),
    ('The answer is 12 square meters.', '12 \\text{ m}', False),
    ('Thus\n\\[\n\\boxed{\\begin{pmatrix}\n1 \\\\\n2\n\\end{pmatrix}}\n\\]', '\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}', True),
    ('The answer is $\\boxed{\\left[\\begin{matrix} 0 & 1 \\\\ 1 & 0 \\end{matrix}\\right]}$', '\\begin{pmatrix} 0 & 1 \\\\ 1 & 0 \\end{pmatrix}', True),
    ('The matrix is $\\begin{pmatrix} 2 & 0 \\\\ 0 & 2 \\end{pmatrix}$.', '\\begin{pmatrix} 2 & 0 \\\\ 0 & 2 \\end{pmatrix}', True),
    ('The matrix is $\\begin{pmatrix} 2 & 0 \\\\ 0 & 2 \\end{pmatrix}$.', '\\begin{pmatrix} 2 & 0 \\\\ 0 & 3 \\end{pmatrix}', False),
    ('So x ∈ (−∞, 3).', '(-\\infty, 3)', True),
    ('Therefore $x < 3$.', '(-\\infty, 3)', True),
    ('Therefore $x \\leq 3$.', '(-\\infty, 3)', False),
    ('\\boxed{[2, \\infty)}', 'x \\geq 2', True),
    ('\\boxed{(2, \\infty)}', 'x \\geq 2', False),
    ('The two solutions are $\\boxed{-2}$ and $\\boxed{3}$.', '-2, 3', True),
    ('The two solutions are $\\boxed{-2}$ and $\\boxed{3}$.', '3, -2', True),
    ('The two solutions are $\\boxed{-2}$ and $\\boxed{3}$.', 'x = -2 \\text{ or } x = 3', True),
    ('The two solutions are $\\boxed{-2}$ and $\\boxed{4}$.', '-2, 3', False),
    ('\\boxed{2\\tfrac{1}{2}}', '\\frac{5}{2}', True),
    ('You need 2 1/2 cups.\n\nThe answer is 2 1/2 cups.', '\\frac{5}{2}', True),
    ('The answer is 1 3/4.', '1.75', True),
    ('The answer is 1 3/4.', '0.75', False),
    ('**(B)**', 'B', True),
    ('Answer: (B) 1/2', 'B', True),
    ('The answer is option B.', 'B', True),
    ('The correct answer is $\\boxed{\\text{B}}$', 'B', True),
    ('The correct answer is $\\boxed{\\text{B}}$', '(D)', False),
    ('In conclusion, the value of $x$ is $\\frac{1}{2}$.', '1/2', True),
    ('The value of x is 1/2, so we are done.', '1/2', True),
    ('La réponse est donc 42.', '42', True),
    ('Réponse finale : 42', '42', True),
    ('The total is $\\$1{,}250.00$.', '1250', True),
    ('The wage is $12.50 per hour.', '12.5', True),
    ('\\boxed{12 \\text{ feet}}', '12 \\text{ inches}', False),
    ('\\boxed{3 \\text{ hours}}', '3 \\text{ minutes}', False),
    ('The answer is 5 centimeters.', '5 cm', True),
    ('\\boxed{30}', '30^\\circ', True),
    ('The terms are 1, 2, and 3.', '3', False),
    ('\\boxed{5, 10, 15}', '5', False),
    ('\\boxed{3}', '1, 2, 3', False),
    ('$x = 1, 2, 3$. So $\\boxed{x = 1, 2, 3}$', '3', False),
    ('We computed 3 * 4 = 12 and 12 + 6 = 18, then we divide by 2.', '18', False),
    ('First, 3 * 4 = 12. Then 12 + 6 = 18.', '18', True),
    ('First, 3 * 4 = 12. Then 12 + 6 = 18.', '12', False),
    ('\\boxed{x \\le -1 \\text{ or } x \\ge 2}', '(-\\infty,-1] \\cup [2,\\infty)', True),
    ('\\boxed{x < 1 \\text{ or } x > 3}', '(-\\infty, 1) \\cup (3, \\infty)', True),
    ('\\boxed{x < 1 \\text{ or } x > 3}', '(-\\infty, 1] \\cup (3, \\infty)', False),
    ('The answer is x < 1 or x > 3.', '(-\\infty, 1) \\cup (3, \\infty)', True),
    ('\\boxed{x < 1 \\text{ or } y > 3}', '(-\\infty, 1) \\cup (3, \\infty)', False),
    ('\\boxed{2 \\text{ or } 3}', '2', False),
    ("Let's check each option: A gives 5, B gives 6, C gives 7.", 'A', False),
    ('Options (A), (B), (C) remain.', 'C', False),
    ('**A**: 5\n**B**: 6', 'B', False),
    ('I choose C.', 'C', True),
    ('The final answer is $\\boxed{\\begin{pmatrix} 3 \\\\ -1 \\\\ 2 \\end{pmatrix}}$.', '\\begin{pmatrix} 3 \\\\ -1 \\\\ 2 \\end{pmatrix}', True),
    ('The final answer is $\\boxed{\\begin{pmatrix} 3 \\\\ -1 \\\\ 2 \\end{pmatrix}}$.', '\\begin{pmatrix} 3 \\\\ 1 \\\\ 2 \\end{pmatrix}', False),
    ('Thus $\\mathbf{A}^{-1} = \\boxed{\\begin{pmatrix} 2 & -1 \\\\ -5 & 3 \\end{pmatrix}}.$', '\\begin{pmatrix} 2 & -1 \\\\ -5 & 3 \\end{pmatrix}', True),
    ('so the answer is $\\begin{pmatrix} 1/2 \\\\ 3/4 \\end{pmatrix}$', '\\begin{pmatrix} \\frac{1}{2} \\\\ \\frac{3}{4} \\end{pmatrix}', True),
    ('The domain is $\\boxed{x \\ge 2}$.', '[2,\\infty)', True),
    ('The domain is $\\boxed{x > 2}$.', '[2,\\infty)', False),
    ('Hence $k \\in \\boxed{(-\\infty, -2) \\cup (2, \\infty)}$', '(-\\infty,-2)\\cup(2,\\infty)', True),
    ('Hence \\boxed{|k| > 2}', '(-\\infty,-2)\\cup(2,\\infty)', True),
    ('The solutions are $x = \\boxed{1}$ and $x = \\boxed{-3}$.', '1, -3', True),
    ('The solutions are $x = \\boxed{1}$ and $x = \\boxed{-3}$.', '-3', False),
    ('(a) The speed is $\\boxed{12}$ km/h. (b) The time is $\\boxed{3}$ hours.', '12, 3', True),
    ('$\\boxed{3}$ and $\\boxed{5}$', '\\{3, 5\\}', True),
    ('$\\boxed{3}$, $\\boxed{5}$, and $\\boxed{7}$', '3, 5, 7', True),
    ('The answer is $\\boxed{3\\frac{1}{2}}$ hours.', '7/2', True),
    ('The answer is 3 1/2.', '3.5', True),
    ('The answer is 3 1/2.', '1.5', False),
    ('So the answer is **C**.', 'C', True),
    ('The correct choice is (E).', 'E', True),
    ('Therefore, choice B is correct.', 'B', True),
    ('Therefore, choice B is correct.', 'D', False),
    ('$\\boxed{A}$', 'A', True),
    ('$\\boxed{A}$', 'B', False),
    ('Donc, la réponse est $\\frac{3}{4}$.', '3/4', True),
    ('Par conséquent, x = 5.', '5', True),
    ('Respuesta: 12', '12', True),
    ('Die Antwort ist 8.', '8', True),
    ('Thus, the number of students is 24.', '24', True),
    ('Thus, the number of students is 24.', '42', False),
    ('Therefore, she earned $\\$1,080$ in total.', '1080', True),
    ('The total cost is \\$2,500.00.', '2500', True),
    ('The price is 3.50 dollars.', '3.5', True),
    ('\\boxed{\\$2.5 \\text{ million}}', '2500000', False),
    ('\\boxed{10 \\text{ km}}', '10 \\text{ m}', False),
    ('\\boxed{10\\,\\text{km}}', '10', True),
    ('\\boxed{10 \\text{ kg}}', '10 \\text{ g}', False),
    ('The answer is 2, 4, 6, 8.', '8', False),
    ('\\boxed{2, 4, 6, 8}', '2, 4, 6, 8', True),
    ('The sequence continues $1, 4, 9, 16, \\boxed{25}$', '25', True),
]


@pytest.mark.parametrize("response, reference, expected", RECALL_FORMS)
def test_math_recall_forms(math_verifier, response, reference, expected):
    assert math_verifier(response, reference).correct is expected


def test_math_batch_keeps_order_and_flags_truncation(math_verifier):
    responses = [c[0] for c in MATH_CASES]
    references = [c[1] for c in MATH_CASES]
    truncated = [i == 1 for i in range(len(MATH_CASES))]
    verdicts = math_verifier.batch(responses, references, truncated)
    assert [v.correct for v in verdicts] == [expected and i != 1 for i, (_, _, expected) in enumerate(MATH_CASES)]
    assert verdicts[1].reason == "no_answer" and verdicts[1].extracted is None


def test_accept_truncated_verifies_cut_completions():
    verifier = build_verifier("numeric", accept_truncated=True)
    assert verifier("Answer: \\boxed{7}", "7", truncated=True).correct
    assert build_verifier("numeric")("Answer: \\boxed{7}", "7", truncated=True).reason == "no_answer"


def test_math_parses_each_reference_once_per_worker(monkeypatch):
    import math_verify

    verifier = build_verifier("math")
    verifier.prepare()
    seen: list[str] = []
    real_parse = math_verify.parse

    def counting_parse(text, *args, **kwargs):
        seen.append(text)
        return real_parse(text, *args, **kwargs)

    monkeypatch.setattr(math_verify, "parse", counting_parse)
    for answer in ("1", "2", "3"):
        verifier.check(f"\\boxed{{{answer}}}", r"\frac{6}{2}")
    assert sum(r"\frac{6}{2}" in text for text in seen) == 1
    assert len(seen) == 4


def test_math_compares_each_reference_and_answer_once_per_worker(monkeypatch):
    import math_verify

    verifier = build_verifier("math")
    verifier.prepare()
    compared: list[int] = []
    real_verify = math_verify.verify

    def counting_verify(*args, **kwargs):
        compared.append(1)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(math_verify, "verify", counting_verify)
    first = verifier.check(r"Sample 1. So $\boxed{1,000.5}$.", "1000.5")
    second = verifier.check("Sample 2. The answer is 1000.5.", "1000.5")  # another text, the same answer
    assert len(compared) == 1
    assert (first.correct, first.reason, first.extracted) == (True, "ok", "1,000.5")
    assert (second.correct, second.reason, second.extracted) == (True, "ok", "1000.5")  # its own extraction
    assert verifier.check(r"\boxed{999.5}", "1000.5").reason == "mismatch"
    assert verifier.check(r"Sample 3: \boxed{999.5}", "1000.5").reason == "mismatch"
    assert len(compared) == 2


def test_math_bare_integers_are_compared_without_a_latex_parse(monkeypatch):
    """Integer against integer is decided by value, as math-verify decides it, without its parser."""
    import math_verify

    verifier = build_verifier("math")
    verifier.prepare()
    parsed: list[str] = []
    real_parse = math_verify.parse
    monkeypatch.setattr(math_verify, "parse", lambda text, *a, **k: parsed.append(text) or real_parse(text, *a, **k))
    big = "9" * 40
    cases = [(r"So \boxed{42}.", "42", True), (r"\boxed{-7}", "-7", True), ("The answer is 042.", "42", True),
             (r"\boxed{41}", "42", False), (rf"\boxed{{{big}}}", big, True), (rf"\boxed{{{big}8}}", big, False)]
    for response, reference, expected in cases:
        verdict = verifier.check(response, reference)
        assert verdict.correct is expected, response
        assert verdict.reason == ("ok" if expected else "mismatch")
    assert parsed == []
    # Anything else still goes through math-verify: "1,000" has a separator, "42.0" a decimal point.
    assert verifier.check(r"\boxed{1,000}", "1000").correct and verifier.check(r"\boxed{42.0}", "42").correct
    assert parsed


def test_math_repeated_items_get_the_verdict_of_a_fresh_check(math_verifier):
    """Two equal items go to one worker, which answers the second from its cache: the verdict must not change."""
    rows, _ = read_labelled(LABELLED)
    responses = [r["response"] for r in rows for _ in range(2)]
    references = [r["reference"] for r in rows for _ in range(2)]
    verdicts = math_verifier.batch(responses, references)
    assert not any(v.reason == "timeout" for v in verdicts)
    for first, second in zip(verdicts[::2], verdicts[1::2], strict=True):
        assert (first.correct, first.reason, first.extracted) == (second.correct, second.reason, second.extracted)


EQUATION_PAIRS = [  # (reference, answer, whether the fast path must decide it)
    ("y = 2x + 1", "2x - y + 1 = 0", True),
    ("y = 2x + 1", "y = 2x + 3", True),
    ("x = 5", "5 = x", True),
    ("x = 5", "y = 5", True),
    ("x = 5", "x = 6", True),
    ("2x + 3y = 6", "4x + 6y = 12", True),
    ("2x + 3y = 6", "4x + 6y = 13", True),
    ("y = \\frac{x}{2}", "2y = x", True),  # rational and integer coefficients
    ("y = \\frac{x}{2}", "2y = x + 1", True),
    ("3x - y + 13 = 0", "3x + 4y + 14 = 0", True),
    ("a - b = 0", "a + c = 0", True),
    ("x^2 + y^2 = 4", "y^2 + x^2 - 4 = 0", True),
    ("x^2 = 1", "x = 1", True),
    ("4x^2 - 9 = 0", "x^2 = \\frac{9}{4}", True),  # one variable: math-verify matches only equal sides
    ("(x-1)^2 = 0", "x = 1", True),
    ("x^2 = -1", "x^2 = -2", False),  # no real root on either side: math-verify's solve calls them equal
    ("x^2 + y^2 = 4", "x^2 + y^2 = 9", False),  # quadratic in two variables: math-verify decides
    ("x^2 + y^2 = 4", "2x^2 + 2y^2 = 8", False),
    ("y = 0.5x + 1", "2y = x + 2", False),  # a float
    ("y = \\pi x", "y = 3.14159 x", False),  # a constant
    ("y = 2x + 1", "y = 2x + 1 + 10^{-30}", False),  # beyond the coefficient bound (math-verify's tolerance)
    ("(x+1)^{1000000000} = 0", "x = -1", False),  # huge power: never expanded
    ("n = 2, 3, 4", "n = 1, 2, 3", False),  # a set on the right
]


@pytest.mark.parametrize("reference, answer, decided", EQUATION_PAIRS)
def test_equation_fast_path_agrees_with_math_verify(reference, answer, decided):
    """The polynomial fast path decides only where its verdict is math-verify's own."""
    from math_verify import parse, verify

    from verifiers.math import equations_equal, reference_latex

    gold = parse(reference_latex(reference), parsing_timeout=None)
    target = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    fast = equations_equal(gold, target)
    assert (fast is not None) is decided
    if fast is not None:
        assert fast == verify(gold, target, timeout_seconds=None)


def test_clear_caches_keeps_workers_and_recomputes(monkeypatch):
    import math_verify

    verifier = build_verifier("math")
    verifier.prepare()
    compared: list[int] = []
    real_verify = math_verify.verify
    monkeypatch.setattr(math_verify, "verify", lambda *a, **k: compared.append(1) or real_verify(*a, **k))
    verifier.check(r"\boxed{2.5}", "2.5")
    verifier.check(r"\boxed{2.5}", "2.5")
    verifier.clear_caches()
    verifier.check(r"\boxed{2.5}", "2.5")
    assert len(compared) == 2
    with build_verifier("math", workers=2) as pooled:
        assert pooled.batch([r"\boxed{2}"] * 4, ["2"] * 4)[0].correct
        pids = [w.pid for w in pooled._pool._state.workers]
        pooled.clear_caches()
        assert [w.pid for w in pooled._pool._state.workers] == pids  # the same warm workers
        pooled._pool.call_in_workers("no_such_method")  # a worker that fails is replaced, not left broken
        assert not {w.pid for w in pooled._pool._state.workers} & set(pids)
        assert [v.correct for v in pooled.batch([r"\boxed{2}", r"\boxed{3}"], ["2", "2"])] == [True, False]


def test_affinity_queue_gives_each_worker_whole_problems():
    references = ["a", "b", "a", "c", "b", "a"]
    queue = _AffinityQueue(references)
    taken = {1: [queue.take(1)], 2: [queue.take(2)]}
    taken[1] += [queue.take(1), queue.take(1)]  # worker 1 drains problem "a"
    assert [references[i] for i in taken[1]] == ["a", "a", "a"]
    taken[2].append(queue.take(2))
    assert [references[i] for i in taken[2]] == ["b", "b"]
    queue.release(2)  # a replaced worker holds nothing more; "c" is still waiting
    assert references[queue.take(3)] == "c"
    assert not queue


def test_affinity_queue_shares_the_last_big_problem():
    queue = _AffinityQueue(["a"] * 6)
    first = queue.take(1)
    stolen = queue.take(2)  # nothing waits: worker 2 takes the back half of worker 1's group
    assert first == 0 and stolen == 3
    assert sorted([queue.take(1), queue.take(1), queue.take(2), queue.take(2)]) == [1, 2, 4, 5]
    assert not queue


# -- numeric, exact, choice -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "response, reference, expected, reason",
    [
        ("#### 1,000", "1000", True, "ok"),
        ("The answer is $18.00.", "18", True, "ok"),
        ("The answer is 75%", "75", True, "ok"),
        ("So 9 * 2 = 18 dollars.\n#### 9 * 2 = 18", "18", True, "ok"),
        (r"\boxed{\frac{3}{4}}", "0.75", True, "ok"),
        ("The answer is -3", "3", False, "mismatch"),
        ("The answer is seven", "7", False, "mismatch"),
        ("no idea at all, sorry about this one friend", "7", False, "no_answer"),
        ("#### 5", "five", False, "error"),
        ("The answer is 15%.", "0.15", True, "ok"),  # a percentage reads as its number or its fraction
        (r"\boxed{3x + 4y + 14 = 0}", "3x - y + 13 = 0", False, "error"),  # an equation is not a number
        ("The answer is x = 5", "5", True, "ok"),
    ],
)
def test_numeric_verifier(response, reference, expected, reason):
    verdict = build_verifier("numeric")(response, reference)
    assert (verdict.correct, verdict.reason) == (expected, reason)


def test_numeric_tolerance_option():
    assert not build_verifier("numeric")("#### 3.14", "3.14159").correct
    assert build_verifier("numeric", rel_tol=1e-3)("#### 3.14", "3.14159").correct
    assert build_verifier("numeric", abs_tol=0.01)("#### 3.14", "3.14159").correct


@pytest.mark.parametrize(
    "response, reference, expected",
    [
        (r"The capital is $\boxed{\text{Paris}}$.", "paris", True),
        ("Answer: **Paris**.", "Paris", True),
        ("Answer: Lyon", "Paris", False),
    ],
)
def test_exact_verifier(response, reference, expected):
    assert build_verifier("exact")(response, reference).correct is expected
    assert build_verifier("exact", case_sensitive=True)("Answer: paris", "Paris").correct is False


@pytest.mark.parametrize(
    "response, reference, expected",
    [
        ("The answer is (C).", "C", True),
        (r"\boxed{\text{(B)}}", "(B)", True),
        ("Answer: B) 42", "B", True),
        ("Answer: I think it is D", "D", True),
        ("The answer is E", "A", False),
    ],
)
def test_choice_verifier(response, reference, expected):
    assert build_verifier("choice")(response, reference).correct is expected


# -- reasoning_gym ------------------------------------------------------------------------------------------
def test_reasoning_gym_verifier_uses_the_task_scorer():
    import reasoning_gym

    from verifiers.reasoning_gym import reference_for

    entries = list(reasoning_gym.create_dataset("basic_arithmetic", seed=3, size=3))
    references = [reference_for("basic_arithmetic", e) for e in entries]
    responses = [f"<answer>{e['answer']}</answer>" for e in entries[:2]] + ["<answer>123456789</answer>"]
    with build_verifier("reasoning_gym", task="basic_arithmetic", timeout_s=10) as verifier:
        verdicts = verifier.batch(responses, references)
        assert [v.correct for v in verdicts] == [True, True, False]
        assert [v.reason for v in verdicts] == ["ok", "ok", "mismatch"]
        # the entry alone (its metadata names the same task); the answer from the usual extraction
        assert verifier(rf"\boxed{{{entries[0]['answer']}}}", json.dumps(entries[0])).correct
        assert verifier("no answer here at all, just talking for a while", references[0]).reason == "no_answer"
    # a plain answer, scored by the configured task (checked in-process: check() is pure)
    with_task = build_verifier("reasoning_gym", task="basic_arithmetic")
    assert with_task.check(f"<answer>{entries[1]['answer']}</answer>", entries[1]["answer"]).correct
    assert not with_task.check("<answer>0.5</answer>", entries[1]["answer"]).correct
    # several tasks: a plain answer names none of them, so it cannot be scored
    assert build_verifier("reasoning_gym", tasks=["basic_arithmetic", "gcd"]).check("<answer>1</answer>", "1").reason == "error"


def test_reasoning_gym_unknown_task_lists_valid_tasks():
    with pytest.raises(ValueError, match="'no_such_task' is not an allowed reasoning-gym task.*basic_arithmetic"):
        build_verifier("reasoning_gym", task="no_such_task")
    with pytest.raises(ValueError, match="set either task .* or tasks"):
        build_verifier("reasoning_gym")


# -- ensemble -----------------------------------------------------------------------------------------------
def test_ensemble_keeps_member_verdicts_and_applies_policies():
    response, reference = r"\boxed{18 \text{ dollars}}", "18"  # numeric: yes; exact: no
    members = ["numeric", "exact", {"name": "numeric", "rel_tol": 0.1}]
    by_policy = {p: build_verifier("ensemble", members=members, policy=p)(response, reference) for p in ("all", "any", "majority")}
    assert (by_policy["all"].correct, by_policy["any"].correct, by_policy["majority"].correct) == (False, True, True)
    verdict = by_policy["all"]
    assert [m.verifier for m in verdict.members] == ["numeric", "exact", "numeric"]
    assert [m.correct for m in verdict.members] == [True, False, True]
    assert verdict.reason == "mismatch" and verdict.verifier == "ensemble"


def test_ensemble_member_errors():
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_verifier("ensemble", members=[{"rel_tol": 0.1}])
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        build_verifier("ensemble", members=["nope"])


# -- registry and options -------------------------------------------------------------------------------------
def test_unknown_verifier_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_verifier("sympy")
    for name in VERIFIERS:
        assert name in str(info.value)


def test_unknown_option_names_it_and_valid_ones():
    with pytest.raises(ValueError, match=r"'tolerance'.*valid options: abs_tol, accept_truncated.*rel_tol"):
        build_verifier("numeric", tolerance=0.1)


def test_bad_option_value_is_explained():
    with pytest.raises(ValueError, match="timeout_s"):
        build_verifier("math", timeout_s=-1)
    with pytest.raises(ValueError, match="workers >= 1|workers"):
        build_verifier("math", workers=0)
    with pytest.raises(ValueError, match="letters"):
        build_verifier("choice", letters="abc")


def test_verifier_config_validates_without_starting_anything():
    config = VerifierConfig(name="numeric", options={"rel_tol": 0.01})
    assert config.build()("#### 100.5", "100").correct
    with pytest.raises(ValueError, match="unknown verifier"):
        VerifierConfig(name="nope")
    with pytest.raises(ValueError, match="'timeout'"):
        VerifierConfig(name="math", options={"timeout": 3})


def test_batch_argument_errors():
    verifier = build_verifier("exact")
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        verifier.batch(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="truncated flags"):
        verifier.batch(["a"], ["a"], [True, False])


def test_verdict_is_frozen():
    verdict = Verdict(True, "1", "ok", "math", 1.0)
    with pytest.raises(AttributeError):
        verdict.correct = False  # type: ignore[misc]


# -- pickling, threads, Ray -----------------------------------------------------------------------------------
def test_pickled_verifier_works_in_threads(math_verifier):
    math_verifier("warm up: \\boxed{1}", "1")  # the original keeps its pool; the copy starts its own
    copy = pickle.loads(pickle.dumps(math_verifier))
    assert copy.options == math_verifier.options
    results: dict[int, list[Verdict]] = {}

    def work(index: int) -> None:
        verifier = copy if index % 2 else math_verifier
        results[index] = verifier.batch([r"\boxed{\frac{2}{4}}", r"\boxed{3}"], ["0.5", "4"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [[v.correct for v in results[i]] for i in range(4)] == [[True, False]] * 4
    copy.close()


def test_verifier_runs_inside_a_ray_task(ray_local):
    ray = ray_local

    @ray.remote
    def verify_remotely(verifier, responses, references):
        return [(v.correct, v.reason) for v in verifier.batch(responses, references)]

    verifier = build_verifier("math", timeout_s=10)
    result = ray.get(verify_remotely.remote(verifier, [r"\boxed{\sqrt{4}}", "#### 5"], ["2", "6"]), timeout=180)
    assert result == [(True, "ok"), (False, "mismatch")]


# -- audit ----------------------------------------------------------------------------------------------------
def test_labelled_set_is_well_formed_and_large_enough():
    rows, rejected = read_labelled(LABELLED)
    assert not rejected
    assert len(rows) >= 150
    categories = {r["category"] for r in rows}
    assert set(TRAP_CATEGORIES) <= categories
    assert any(r.get("origin", "").startswith("smollm2") for r in rows)
    for category in (*TRAP_CATEGORIES, "gsm8k_real", "arithmetic_chain"):  # both outcomes: FPs and FNs can show
        assert {r["expected"] for r in rows if r["category"] == category} == {True, False}, category


@pytest.fixture(scope="module")
def math_audit():
    return audit(LABELLED, "math", timeout_s=5, workers=2)


def test_math_beats_raw_math_verify_on_the_labelled_set(math_audit):
    ours, raw = math_audit["summary"], math_audit["raw_math_verify"]["summary"]
    assert ours["accuracy"] >= raw["accuracy"]
    fp = math_audit["trap_false_positives"]
    assert fp["verifier"] < fp["raw_math_verify"]
    assert ours["n"] == len(read_labelled(LABELLED)[0])
    assert ours["tp"] + ours["tn"] + ours["fp"] + ours["fn"] == ours["n"]
    assert ours["latency_ms"]["p50"] <= ours["latency_ms"]["p99"]


RECALL_CATEGORIES = ("matrix", "interval", "multi_box", "mixed_number", "choice", "prose", "currency", "units",
                     "sequence")


def test_math_never_loses_to_math_verify_on_the_recall_categories(math_audit):
    """Per category, the verifier is at least as accurate as raw and boxed-gold math-verify, with no more false
    positives than the better of the two; none at all on units and sequences."""
    ours = math_audit["per_category"]
    raw, boxed = math_audit["raw_math_verify"]["per_category"], math_audit["boxed_math_verify"]["per_category"]
    for category in RECALL_CATEGORIES:
        assert ours[category]["n"] >= 6, category
        assert ours[category]["accuracy"] >= max(raw[category]["accuracy"], boxed[category]["accuracy"]), category
        assert ours[category]["fp"] <= min(raw[category]["fp"], boxed[category]["fp"]), category
    assert ours["units"]["fp"] == 0 and ours["sequence"]["fp"] == 0
    assert math_audit["summary"]["accuracy"] > math_audit["boxed_math_verify"]["summary"]["accuracy"]


def test_ensemble_audit_lists_member_verdicts_for_every_disagreement():
    report = audit(LABELLED, "ensemble", compare_raw=False, members=["numeric", "exact"], policy="any")
    assert report["disagreements"], "numeric and exact disagree somewhere on the labelled set"
    for row in report["disagreements"]:
        assert [m["verifier"] for m in row["members"]] == ["numeric", "exact"]
        assert len({m["correct"] for m in row["members"]}) == 2
        assert row["correct"] is True  # policy "any": one accepting member is enough
    rows, _ = read_labelled(LABELLED)
    responses, references = [r["response"] for r in rows], [r["reference"] for r in rows]
    flags = [r.get("truncated", False) for r in rows]
    numeric = build_verifier("numeric").batch(responses, references, flags)
    exact = build_verifier("exact").batch(responses, references, flags)
    differing = [row["line"] for row, a, b in zip(rows, numeric, exact) if a.correct != b.correct]
    assert [row["line"] for row in report["disagreements"]] == differing  # every disagreeing row, no other
    assert "raw_math_verify" not in report


def test_audit_cli(tmp_path, capsys):
    labelled = tmp_path / "labelled.jsonl"
    lines = [
        {"response": "#### 18", "reference": "18", "expected": True, "category": "gsm8k"},
        {"response": "#### 17", "reference": "18", "expected": False, "category": "gsm8k"},
        {"response": "#### 17", "reference": "18", "expected": True, "category": "gsm8k"},
    ]
    labelled.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    from pipeline.cli import build_parser

    parser = build_parser()
    out = tmp_path / "report.json"
    args = parser.parse_args(["audit-verifier", str(labelled), "--verifier", "numeric", "-o", "rel_tol=0", "--json", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "Verifier audit" in printed and "line 4 rejected" in printed
    assert "boxed-gold math-verify" in printed and "accuracy FP/FN" in printed
    report = json.loads(out.read_text())
    assert report["summary"]["fn"] == 1 and report["summary"]["accuracy"] == pytest.approx(2 / 3)
    assert report["per_category"]["gsm8k"]["fn"] == 1
    assert report["boxed_math_verify"]["per_category"]["gsm8k"]["n"] == 3
    args = parser.parse_args(["audit-verifier", str(labelled), "--verifier", "numeric", "--no-raw", "--min-accuracy", "0.9"])
    assert args.func(args) == 1
    args = parser.parse_args(["audit-verifier", str(tmp_path / "missing.jsonl")])
    assert args.func(args) == 2


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("最终答案：12", "12", True),  # a full-width colon after the Chinese anchor
        ("因此，答案是 $\\frac{1}{2}$。", "\\frac{1}{2}", True),
        ("答えは 7 です。", "7", True),
        ("答案是 13。", "12", False),
        ("Le prix total est de 1.250,00 €.", "1250", True),  # thousands dots, decimal comma
        ("Le prix total est de 1.250,00 €.", "1.25", False),
        ("Total: 3 hours", "3", True),  # a bare line with a label
        ("He needs 8 more.", "8", True),  # a short final sentence with one number
        ("He needs 8 more.", "9", False),
        # A long final sentence with one number is a step, not a stated answer.
        ("Next we look again at what happens to the 3 remaining boxes after they are moved.", "3", False),
    ],
)
def test_math_reads_cjk_anchors_european_amounts_labels_and_short_final_sentences(response, reference, expected):
    verifier = build_verifier("math")
    assert verifier.check(response, reference).correct is expected

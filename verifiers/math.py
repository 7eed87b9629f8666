"""``math``: symbolic equivalence with math-verify, hardened against its known false positives.

Steps (all inside a worker process with a hard deadline, see ``verifiers.pool``):

1. extract the final answer with ``verifiers.extract`` (boxed, ####, "the answer is", ...). math-verify is never
   pointed at the whole response, where it would pick up an intermediate number;
2. wrap the answer and the reference in ``$...$`` before parsing: math-verify reads bare text as a plain
   expression, so an un-delimited ``3x+4y+14=0`` or ``x^2+2x+1`` parses to ``0`` or nothing, and ``2, 3`` to ``3``.
   A plain number, with words after it or not ("18 dollars", "$1,000", "25%"), goes to math-verify's fast number
   reader as the bare number; plain words ("Monday") are compared as ``\text{...}``;
3. ``verify(gold, answer)``, gold first, with math-verify's signal timeouts off (they fail off the main thread);
4. a relative-tolerance check on numbers: math-verify rounds to ``float_rounding`` decimals, which makes
   ``1/2^99`` equal ``1/2^98`` and ``0.001`` equal ``0.0010001``.

The reference is parsed once per worker and distinct reference, and each (reference, answer) pair is compared
once per worker: k samples of a problem mostly end in the same few answers, and a symbolic comparison (two
equations, say) costs tens of milliseconds of sympy. Both caches are small LRUs.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from pydantic import Field

from verifiers.base import Verdict, Verifier, VerifierOptions
from verifiers.extract import Extraction, clean_text, extract_answer

_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox|\\begin\{")
_PLAIN_NUMBER = re.compile(
    r"^(?:\\?\$\s*)?(?P<sign>[-+\u2212]?)\s*(?:\\?\$\s*)?"
    r"(?P<number>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"\s*(?P<percent>\\?%|percent\b)?"
    r"(?:\s+[A-Za-z]{2,}[A-Za-z.'/-]*){0,4}\s*$"
)
# Plain words ("Monday", "yes", "no solution"): compared as \text{...}, not as products of one-letter variables.
_WORDS = re.compile(r"^[A-Za-z]{3,}(?:[ -][A-Za-z]+)*$")
# Two words in a row, outside LaTeX commands: the answer is prose ("she makes 18 dollars a day").
_PROSE = re.compile(r"(?<![\\A-Za-z{])[A-Za-z]{3,}\s+[A-Za-z]{3,}")
_GOLD_CACHE_SIZE = 2048
_ANSWER_CACHE_SIZE = 8192
_WARM_UP = (
    ("$\\frac{1}{2}$", "\\boxed{0.5}"),
    ("$(x+1)^2$", "\\boxed{x^2+2x+1}"),
    ("$[1, 2)$", "\\boxed{(1, 2]}"),
    ("$y = 2x + 1$", "\\boxed{2x - y + 1 = 0}"),
    ("$\\{1, 2\\}$", "\\boxed{2, 1}"),
    ("12", "13"),
)


class MathOptions(VerifierOptions):
    """Options of the ``math`` verifier."""

    workers: int = Field(
        1, ge=1, description="Worker processes; each item runs in one with a hard deadline (timeout_s)."
    )
    float_rounding: int = Field(
        6, ge=0, le=50, description="Decimal places math-verify rounds floats to before comparing them."
    )
    rel_tol: float = Field(
        1e-5,
        ge=0,
        description="Relative tolerance two numbers must also meet. math-verify's rounding alone accepts any two "
        "numbers that are both tiny (1/2^99 vs 1/2^98); 0 turns this check off.",
    )


class MathVerifier(Verifier):
    """Symbolic answer checking with math-verify (see the module docstring)."""

    name = "math"
    Options = MathOptions
    inline_allowed = False

    def _setup_runtime(self) -> None:
        super()._setup_runtime()
        # Per-instance LRUs, rebuilt in every worker: both are pure functions of their texts.
        self._parse_gold = functools.lru_cache(maxsize=_GOLD_CACHE_SIZE)(self._parse_gold_uncached)
        self._compare = functools.lru_cache(maxsize=_ANSWER_CACHE_SIZE)(self._compare_uncached)

    def prepare(self) -> None:
        """Import math-verify and warm its regexes and parser, once per worker template."""
        # Signal timeouts are off on purpose (the pool enforces deadlines); silence the warning that says so.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        from math_verify import parse, verify

        # One of each comparison path, so that sympy's lazily imported modules (simplify, solve, sets) load here,
        # once, and not in every worker on its first item.
        for gold, answer in _WARM_UP:
            verify(parse(gold, parsing_timeout=None), parse(answer, parsing_timeout=None), timeout_seconds=None)

    def check(self, response: str, reference: str) -> Verdict:
        """Verify one response against one reference (runs in a worker)."""
        reference = clean_text(reference).strip()
        if not reference:
            return self._verdict(False, None, "error")
        extraction = extract_answer(response, last_number_fallback=self.options.last_number_fallback)
        if extraction is None:
            return self._verdict(False, None, "no_answer")
        correct = self._compare(reference, answer_latex(extraction))
        return self._verdict(correct, extraction.text, "ok" if correct else "mismatch")

    def _compare_uncached(self, reference: str, latex: str) -> bool:
        """Whether the answer text ``latex`` equals ``reference``."""
        from math_verify import parse

        gold = self._parse_gold(reference)
        answer = parse(latex, parsing_timeout=None)
        correct = self._equal(gold, answer)
        if not correct:
            # math-verify reads "9%" as 9 against a gold 9, but only for integers; so do "12.5%" vs 12.5.
            if any(_percent_value(item) is not None for item in [*gold, *answer]):
                correct = self._equal(_without_percent(gold), _without_percent(answer))
        return correct

    def _equal(self, gold: list[Any], answer: list[Any]) -> bool:
        from math_verify import verify

        if not verify(gold, answer, float_rounding=self.options.float_rounding, timeout_seconds=None):
            return False
        return not (self.options.rel_tol > 0 and numbers_differ(gold, answer, self.options.rel_tol))

    def _parse_gold_uncached(self, reference: str) -> list[Any]:
        from math_verify import parse

        gold = parse(reference_latex(reference), parsing_timeout=None)
        if not any(not isinstance(g, str) for g in gold):
            gold = parse(reference, parsing_timeout=None) or gold  # let math-verify find the math itself
        return gold


def answer_latex(extraction: Extraction) -> str:
    """The text handed to ``math_verify.parse`` for an extracted answer."""
    return _to_latex(extraction.text, boxed=extraction.source == "boxed")


def reference_latex(reference: str) -> str:
    """The text handed to ``math_verify.parse`` for a reference answer."""
    return _to_latex(reference, boxed=False)


def _to_latex(text: str, *, boxed: bool) -> str:
    text = text.strip()
    number = _PLAIN_NUMBER.match(text)
    if number is not None:
        sign = "-" if number["sign"] in ("-", "\u2212") else ""
        # Bare, so that math-verify reads it with its fast number path rather than the LaTeX parser.
        return f"{sign}{number['number'].replace(',', '')}{'%' if number['percent'] else ''}"
    if _WORDS.match(text):
        return f"$\\text{{{text}}}$"
    if boxed:
        return "\\boxed{" + text + "}"
    if _DELIMITED.search(text) or _PROSE.search(text):
        return text  # already delimited, or prose in which math-verify finds the math itself
    return f"${text}$"


def numbers_differ(gold: list[Any], answer: list[Any], rel_tol: float) -> bool:
    """True when gold and answer are both plain numbers that differ by more than ``rel_tol`` (relative).

    Percentages count both ways (25% may mean 25 or 0.25), as in math-verify.
    """
    gold_expr = next((g for g in gold if not isinstance(g, str)), None)
    answer_expr = next((a for a in answer if not isinstance(a, str)), None)
    if gold_expr is None or answer_expr is None:
        return False
    gold_values = _numeric_values(gold_expr)
    answer_values = _numeric_values(answer_expr)
    if not gold_values or not answer_values:
        return False
    return not any(_close(g, a, rel_tol) for g in gold_values for a in answer_values)


def _without_percent(parsed: list[Any]) -> list[Any]:
    """``parsed`` with a percentage ``X%`` (X * 1/100 unevaluated) replaced by X."""
    return [item if (value := _percent_value(item)) is None else value for item in parsed]


def _percent_value(expr: Any) -> Any:
    from sympy import Mul, Rational, UnevaluatedExpr

    if isinstance(expr, Mul) and len(expr.args) == 2 and expr.args[1] == UnevaluatedExpr(Rational(1, 100)):
        return expr.args[0]
    return None


def _numeric_values(expr: Any) -> list[Any]:
    """The real values an expression may stand for (two for a percentage), or [] if it is not a plain number."""
    from sympy import Eq, Expr, Symbol

    if isinstance(expr, Eq) and isinstance(expr.lhs, Symbol):  # "x = 5" is the number 5
        expr = expr.rhs
    if not isinstance(expr, Expr) or expr.free_symbols:
        return []
    candidates = [expr]
    if _percent_value(expr) is not None:
        candidates.append(_percent_value(expr))
    values = []
    for candidate in candidates:
        value = candidate.doit().evalf(30)
        if value.is_real and value.is_finite:
            values.append(value)
    return values


def _close(a: Any, b: Any, rel_tol: float) -> bool:
    if a == b:
        return True
    return bool(abs(a - b) <= rel_tol * max(abs(a), abs(b)))

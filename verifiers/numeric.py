"""``numeric``: the final answer as a number (GSM8K-style), compared exactly or within a tolerance.

Reads integers, decimals and simple fractions (``3/4``, ``\\frac{3}{4}``); strips thousands separators, currency
signs, percent signs, LaTeX text wrappers and unit words (``$1,000.50``, ``75%``, ``18 dollars``). When the answer
is a chain or an assignment ("2 + 3 = 5", "x = 5"), the part after the last ``=`` counts; an equation in unknowns
is not a number. A percentage matches its number or its fraction (``25%`` matches 25 and 0.25). Pure Python and
linear-time, so it runs in the calling process by default (``workers=0``).
"""

from __future__ import annotations

import re
from fractions import Fraction

from pydantic import Field

from verifiers.base import Verdict, Verifier, VerifierOptions
from verifiers.extract import clean_text, extract_answer

#: Longer digit strings are not answers (and would cost quadratic time to convert).
MAX_DIGITS = 100

_LATEX_FRACTION = re.compile(r"(?P<sign>[-\u2212]?)\s*\\[dt]?frac\s*\{\s*(?P<num>\d+)\s*\}\s*\{\s*(?P<den>\d+)\s*\}")
_SLASH_FRACTION = re.compile(r"(?<![\d.])(?P<sign>[-\u2212]?)(?P<num>\d+)\s*/\s*(?P<den>\d+)(?![\d.])")
_NUMBER = re.compile(r"(?P<sign>[-\u2212]?)\s*(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_LATEX_SPACING = re.compile(r"\\[,;:! ]|\{,\}")
_TEXT_WRAPPER = re.compile(r"\\(?:text|mathrm|textbf|mathbf|mbox|boxed)\s*\{([^{}]*)\}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]")
_VARIABLE = re.compile(r"^\s*[A-Za-z]\w*\s*$")  # "x = 5"
_ARITHMETIC = re.compile(r"^[0-9\s.,+\-*/()$%^\u00d7\u00f7]*$")  # "9 * 2 = 18", "2 + 3 = 5 = 5"


class NumericOptions(VerifierOptions):
    """Options of the ``numeric`` verifier."""

    rel_tol: float = Field(
        0.0, ge=0, description="Relative tolerance: |a - b| <= rel_tol * max(|a|, |b|) counts as equal."
    )
    abs_tol: float = Field(0.0, ge=0, description="Absolute tolerance: |a - b| <= abs_tol counts as equal.")


class NumericVerifier(Verifier):
    """Numbers compared exactly (as fractions) or within ``rel_tol``/``abs_tol``."""

    name = "numeric"
    Options = NumericOptions

    def check(self, response: str, reference: str) -> Verdict:
        """Verify one response against a numeric reference."""
        expected = parse_number(clean_text(reference))
        if expected is None:
            return self._verdict(False, None, "error")  # the reference is not a number: wrong verifier or bad data
        extraction = extract_answer(response, last_number_fallback=self.options.last_number_fallback)
        if extraction is None:
            return self._verdict(False, None, "no_answer")
        value = parse_number(extraction.text)
        # A percentage may mean its number or its fraction ("25%" vs 25 or 0.25), as in the math verifier.
        correct = value is not None and any(
            self._close(a, b) for a in _readings(value, extraction.text) for b in _readings(expected, reference)
        )
        return self._verdict(correct, extraction.text, "ok" if correct else "mismatch")

    def _close(self, a: Fraction, b: Fraction) -> bool:
        difference = abs(a - b)
        if difference == 0:
            return True
        rel_tol = Fraction(self.options.rel_tol)
        return difference <= rel_tol * max(abs(a), abs(b)) or difference <= Fraction(self.options.abs_tol)


def _readings(value: Fraction, text: str) -> tuple[Fraction, ...]:
    return (value, value / 100) if "%" in text or "percent" in text else (value,)


def parse_number(text: str) -> Fraction | None:
    """The number an answer states, or None: ``"$1,000.50"`` -> 2001/2, ``"75%"`` -> 75, ``"2+3=5"`` -> 5.

    LaTeX beyond fractions and text wrappers (``\\sqrt{2}``, ``2 \\times 10^3``) is not a plain number: None.
    """
    text = _TEXT_WRAPPER.sub(r"\1", _LATEX_SPACING.sub("", text))
    if "=" in text:
        left, text = text.rsplit("=", 1)
        if not (_VARIABLE.match(left) or _ARITHMETIC.match(left)):
            return None  # an equation in unknowns ("3x - y + 13 = 0") is not a number
    for pattern in (_LATEX_FRACTION, _SLASH_FRACTION):
        match = pattern.search(text)
        if match is not None:
            if len(match["num"]) > MAX_DIGITS or len(match["den"]) > MAX_DIGITS or int(match["den"]) == 0:
                return None
            value = Fraction(int(match["num"]), int(match["den"]))
            return -value if match["sign"] else value
    if _LATEX_COMMAND.search(text):
        return None  # \sqrt{2}, 2 \times 10^3, \pi ...: not a plain number
    match = _NUMBER.search(text)
    if match is None:
        return None
    digits = match["digits"].replace(",", "")
    if len(digits) > MAX_DIGITS:
        return None
    value = Fraction(digits)
    return -value if match["sign"] else value

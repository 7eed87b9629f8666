"""``choice``: multiple-choice answers, a letter from ``letters`` (A-E by default).

The letter is read from the extracted final answer: a parenthesized letter ``(C)`` first, then a letter that
starts the answer (``C``, ``C)``, ``C. 42``), then the last standalone choice letter. The reference may be the letter
alone or written the same ways. Runs in the calling process by default (``workers=0``).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from verifiers.base import Verdict, Verifier, VerifierOptions
from verifiers.extract import clean_text, extract_answer

_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


class ChoiceOptions(VerifierOptions):
    """Options of the ``choice`` verifier."""

    letters: str = Field("ABCDE", min_length=2, description="The valid choice letters, in upper case.")

    @field_validator("letters")
    @classmethod
    def _upper_letters(cls, value: str) -> str:
        if not value.isalpha() or not value.isupper() or len(set(value)) != len(value):
            raise ValueError("letters must be distinct upper-case letters, for example 'ABCD'")
        return value


class ChoiceVerifier(Verifier):
    """The chosen letter equals the reference letter."""

    name = "choice"
    Options = ChoiceOptions

    def check(self, response: str, reference: str) -> Verdict:
        """Verify one response against the reference letter."""
        expected = find_choice(clean_text(reference), self.options.letters)
        if expected is None:
            return self._verdict(False, None, "error")
        extraction = extract_answer(response, last_number_fallback=False)
        if extraction is None:
            return self._verdict(False, None, "no_answer")
        chosen = find_choice(extraction.text, self.options.letters)
        if chosen is None:
            return self._verdict(False, extraction.text, "mismatch")
        return self._verdict(chosen == expected, chosen, "ok" if chosen == expected else "mismatch")


def find_choice(text: str, letters: str = "ABCDE") -> str | None:
    """The choice letter an answer names, or None."""
    text = _WRAPPER.sub(r"\1", text).strip().strip("$*_` ")
    letter_class = f"[{re.escape(letters)}]"
    for pattern in (
        rf"\(({letter_class})\)",  # (C)
        rf"^({letter_class})(?![A-Za-z])",  # C, C), C. 42, C: 42
    ):
        match = re.search(pattern, text)
        if match is not None:
            return match.group(1)
    standalone = re.findall(rf"(?<![A-Za-z])({letter_class})(?![A-Za-z])", text)
    return standalone[-1] if standalone else None

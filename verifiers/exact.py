"""``exact``: the final answer equals the reference after normalization (case, spacing, LaTeX wrappers).

For short free-form answers (names, words, codes). Normalization: Unicode NFKC, ``$...$``/``\\(...\\)`` delimiters,
``\\text{}``/``\\mathrm{}``/``\\boxed{}`` wrappers and markdown emphasis removed, whitespace collapsed, a final period
dropped, case folded unless ``case_sensitive``. Runs in the calling process by default (``workers=0``).
"""

from __future__ import annotations

import re
import unicodedata

from pydantic import Field

from verifiers.base import Verdict, Verifier, VerifierOptions
from verifiers.extract import clean_text, extract_answer, strip_markdown

_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|boxed|fbox|mbox)\s*\{([^{}]*)\}")
_DELIMITERS = re.compile(r"\\[()\[\]]|(?<!\\)\$")
_SPACE = re.compile(r"\s+")


class ExactOptions(VerifierOptions):
    """Options of the ``exact`` verifier."""

    case_sensitive: bool = Field(False, description="Compare letter case too.")


class ExactVerifier(Verifier):
    """Normalized string equality of the final answer and the reference."""

    name = "exact"
    Options = ExactOptions

    def check(self, response: str, reference: str) -> Verdict:
        """Verify one response against one reference."""
        expected = normalize(clean_text(reference), case_sensitive=self.options.case_sensitive)
        if not expected:
            return self._verdict(False, None, "error")
        extraction = extract_answer(response, last_number_fallback=self.options.last_number_fallback)
        if extraction is None:
            return self._verdict(False, None, "no_answer")
        correct = normalize(extraction.text, case_sensitive=self.options.case_sensitive) == expected
        return self._verdict(correct, extraction.text, "ok" if correct else "mismatch")


def normalize(text: str, *, case_sensitive: bool = False) -> str:
    """The comparable form of an answer (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    for _ in range(3):  # wrappers nest rarely and shallowly: \boxed{\text{Paris}}
        text = _WRAPPER.sub(r"\1", text)
    text = _DELIMITERS.sub("", text)
    text = _SPACE.sub(" ", strip_markdown(text)).strip()
    return text if case_sensitive else text.casefold()

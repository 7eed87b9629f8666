"""Verifiers: pure ``(response, reference) -> Verdict`` checks, answer extraction, and hard timeouts.

    >>> from verifiers import build_verifier
    >>> v = build_verifier("math", timeout_s=5, workers=2)
    >>> v("... so the answer is \\boxed{\\frac{1}{2}}", "0.5").correct
    True
    >>> v.batch(responses, references, truncated=flags)   # one call per stage batch

Names (``VERIFIERS``): math, numeric, exact, choice, reasoning_gym, ensemble. Importing this package is cheap:
math-verify, sympy and reasoning-gym are imported where checks run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from verifiers.base import REASONS, Reason, Verdict, Verifier, VerifierOptions, validate_options
from verifiers.ensemble import EnsembleVerifier
from verifiers.extract import Extraction, extract_answer
from verifiers.registry import SINGLE_VERIFIERS

#: The one registry: YAML/CLI name -> verifier class.
VERIFIERS: dict[str, type[Verifier]] = {**SINGLE_VERIFIERS, "ensemble": EnsembleVerifier}


def verifier_class(name: str) -> type[Verifier]:
    """The verifier class registered as ``name``; unknown names raise ValueError listing the valid ones."""
    try:
        return VERIFIERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown verifier {name!r}; valid names: {', '.join(VERIFIERS)}") from None


def build_verifier(name: str, **options: Any) -> Verifier:
    """Build the verifier registered as ``name`` with ``options`` (see each verifier's Options model)."""
    return verifier_class(name)(**options)


class VerifierConfig(BaseModel):
    """Which verifier a stage uses, and its options; validated without starting anything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("math", description=f"Verifier name, one of: {', '.join(VERIFIERS)}.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options of that verifier (e.g. timeout_s, workers); unknown keys fail."
    )

    @model_validator(mode="after")
    def _validate_options(self) -> VerifierConfig:
        cls = verifier_class(self.name)
        validate_options(self.name, cls.Options, self.options)
        return self

    def build(self) -> Verifier:
        """Build the configured verifier."""
        return build_verifier(self.name, **self.options)


__all__ = [
    "REASONS",
    "VERIFIERS",
    "Extraction",
    "Reason",
    "Verdict",
    "Verifier",
    "VerifierConfig",
    "VerifierOptions",
    "build_verifier",
    "extract_answer",
    "verifier_class",
]

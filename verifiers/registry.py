"""The single verifiers by name: every verifier but ``ensemble``, which combines them (``verifiers.VERIFIERS`` adds
it). Kept apart so the ensemble can build its members without importing the package that registers it."""

from __future__ import annotations

from verifiers.base import Verifier
from verifiers.choice import ChoiceVerifier
from verifiers.exact import ExactVerifier
from verifiers.math import MathVerifier
from verifiers.numeric import NumericVerifier
from verifiers.reasoning_gym import ReasoningGymVerifier

SINGLE_VERIFIERS: dict[str, type[Verifier]] = {
    "math": MathVerifier,
    "numeric": NumericVerifier,
    "exact": ExactVerifier,
    "choice": ChoiceVerifier,
    "reasoning_gym": ReasoningGymVerifier,
}

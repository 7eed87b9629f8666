"""``ensemble``: several verifiers vote; every member's verdict is kept on the result (``Verdict.members``).

Members are verifier names or ``{"name": ..., **options}`` mappings, for example
``build_verifier("ensemble", members=["math", {"name": "numeric", "rel_tol": 1e-6}], policy="all")``.
Policies: ``all`` (every member must accept: fewest false positives), ``any`` (one is enough: fewest false
negatives), ``majority`` (more than half). Audit the rows where members disagree with ``lessmore audit-verifier``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from verifiers.base import Reason, Verdict, Verifier, coerce_batch_args, validate_options


class EnsembleOptions(BaseModel):
    """Options of the ``ensemble`` verifier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    members: tuple[str | dict[str, Any], ...] = Field(
        ("math", "numeric"),
        min_length=1,
        description="Member verifiers: names, or mappings with 'name' plus that verifier's options.",
    )
    policy: Literal["all", "any", "majority"] = Field(
        "majority", description="How member votes combine: all, any, or majority (more than half)."
    )
    accept_truncated: bool = Field(
        False, description="Verify truncated completions; by default they get reason 'no_answer' without voting."
    )

    @field_validator("members")
    @classmethod
    def _valid_members(cls, members: tuple[str | dict[str, Any], ...]) -> tuple[str | dict[str, Any], ...]:
        # Each member's options are checked with the ensemble's, without building anything.
        from verifiers.registry import SINGLE_VERIFIERS

        for spec in members:
            name, options = _member_spec(spec)
            validate_options(name, SINGLE_VERIFIERS[name].Options, options)
        return members


class EnsembleVerifier(Verifier):
    """Combines member verifiers with a voting policy."""

    name = "ensemble"
    Options = EnsembleOptions  # type: ignore[assignment]

    def __init__(self, **options: Any) -> None:
        self.options = validate_options(self.name, EnsembleOptions, options)  # type: ignore[assignment]
        self.members = [_build_member(spec) for spec in self.options.members]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["options"])

    def batch(
        self,
        responses: Sequence[str],
        references: Sequence[str],
        truncated: Sequence[bool] | None = None,
    ) -> list[Verdict]:
        """Run every member on the batch (each in its own workers) and combine the votes per item."""
        responses, references, flags = coerce_batch_args(responses, references, truncated)
        verdicts: list[Verdict | None] = [
            Verdict(False, None, "no_answer", self.name, 0.0) if flag and not self.options.accept_truncated else None
            for flag in flags
        ]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            started = time.perf_counter()
            per_member = [member.batch([responses[i] for i in todo], [references[i] for i in todo]) for member in self.members]
            per_item_ms = (time.perf_counter() - started) * 1e3 / len(todo)
            for position, i in enumerate(todo):
                votes = tuple(member_verdicts[position] for member_verdicts in per_member)
                verdicts[i] = self._combine(votes, sum(v.ms for v in votes) or per_item_ms)
        return verdicts  # type: ignore[return-value]

    def clear_caches(self) -> None:
        """Forget the members' memoized results (see ``Verifier.clear_caches``)."""
        for member in self.members:
            member.clear_caches()

    def close(self) -> None:
        """Stop the members' worker processes."""
        for member in self.members:
            member.close()

    def _combine(self, votes: tuple[Verdict, ...], ms: float) -> Verdict:
        accepted = sum(v.correct for v in votes)
        policy = self.options.policy
        correct = accepted == len(votes) if policy == "all" else accepted > 0 if policy == "any" else 2 * accepted > len(votes)
        reason: Reason = "ok" if correct else _rejection_reason(votes)
        agreeing = [v.extracted for v in votes if v.correct == correct and v.extracted is not None]
        extracted = agreeing[0] if agreeing else next((v.extracted for v in votes if v.extracted is not None), None)
        return Verdict(correct, extracted, reason, self.name, ms, members=votes)


def _rejection_reason(votes: tuple[Verdict, ...]) -> Reason:
    rejecting = [v.reason for v in votes if not v.correct]
    for reason in ("mismatch", "no_answer", "timeout", "error"):
        if rejecting and all(r == reason for r in rejecting):
            return reason  # type: ignore[return-value]
    return "mismatch" if "mismatch" in rejecting else rejecting[0] if rejecting else "mismatch"  # type: ignore[return-value]


def _member_spec(spec: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A member's verifier name and options; ValueError when it names none, an ensemble, or an unknown verifier."""
    from verifiers.registry import SINGLE_VERIFIERS

    if isinstance(spec, str):
        name, options = spec, {}
    else:
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"ensemble member {spec!r} needs a 'name' key naming a verifier")
    if name == "ensemble":
        raise ValueError("an ensemble member cannot itself be an ensemble; list its members instead")
    if name not in SINGLE_VERIFIERS:
        raise ValueError(f"unknown verifier {name!r}; valid names: {', '.join([*SINGLE_VERIFIERS, 'ensemble'])}")
    return name, options


def _build_member(spec: str | dict[str, Any]) -> Verifier:
    from verifiers.registry import SINGLE_VERIFIERS

    name, options = _member_spec(spec)
    return SINGLE_VERIFIERS[name](**options)

"""verify: a Verdict for every completion, from a named verifier (math-verify under a hard deadline by default)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from pipeline import columns as C
from stages.base import Batch, OnRay, Stage, StageConfig


class VerifySettings(StageConfig):
    """Which verifier judges the completions (also the shape of nested verifier blocks, e.g. ``evaluate.verify``)."""

    verifier: str = Field("math", description="Verifier name (math, numeric, exact, choice, reasoning_gym, ensemble).")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the verifier (e.g. timeout_s).")

    @field_validator("verifier")
    @classmethod
    def _known(cls, name: str) -> str:
        from verifiers import VERIFIERS

        if name not in VERIFIERS:
            raise ValueError(f"unknown verifier {name!r}; valid verifiers: {', '.join(VERIFIERS)}")
        return name

    @field_validator("options")
    @classmethod
    def _valid_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Checked when the config loads, so `lessmore validate` names a bad, unknown or unsafe option
        # (stages.verify.options.<key>) instead of a Ray actor failing later.
        from verifiers import VERIFIERS
        from verifiers.base import check_options

        name = info.data.get("verifier")
        if name in VERIFIERS:  # else the name itself was invalid, and that error is reported
            check_options(name, VERIFIERS[name].Options, options)
        return options


class VerifyConfig(VerifySettings, OnRay):
    """The verify stage: the verifier, and the Ray resources of its workers."""


class VerifyStage(Stage):
    """Adds correct / extracted / verdict_reason / verifier (and member verdicts for ensembles)."""

    name = "verify"
    kind = "map"
    config_model = VerifyConfig
    requires = (C.COMPLETION, C.ANSWER, C.FINISH_REASON)
    adds = C.VERIFY_COLUMNS
    input_key = (C.PROBLEM_ID, C.SAMPLE_IDX)

    output_key = (C.PROBLEM_ID, C.SAMPLE_IDX)

    def __init__(self, cfg: VerifySettings, **_: Any) -> None:
        from verifiers import build_verifier

        self.cfg = cfg
        self.verifier = build_verifier(cfg.verifier, **cfg.options)

    @classmethod
    def code_sources(cls) -> tuple[Any, ...]:
        import sys

        import verifiers

        return (sys.modules[__name__], verifiers)  # the verifier package, every file of it

    def __call__(self, batch: Batch) -> Batch:
        references = [a if a is not None else "" for a in batch[C.ANSWER]]
        if self.cfg.verifier == "reasoning_gym" and C.METADATA in batch:
            references = [m or r for m, r in zip(batch[C.METADATA], references)]
        truncated = [fr == "length" for fr in batch[C.FINISH_REASON]]
        responses = [c if c is not None else "" for c in batch[C.COMPLETION]]
        verdicts = self.verifier.batch(responses, references, truncated=truncated)
        out = dict(batch)
        errored = [fr == "error" for fr in batch[C.FINISH_REASON]]
        out[C.CORRECT] = [bool(v.correct) and not e for v, e in zip(verdicts, errored)]
        out[C.EXTRACTED] = [v.extracted for v in verdicts]
        out[C.VERDICT_REASON] = ["error" if e else v.reason for v, e in zip(verdicts, errored)]
        out[C.VERIFIER] = [v.verifier for v in verdicts]
        out[C.VERIFY_MS] = [float(v.ms) for v in verdicts]
        out[C.MEMBER_VERDICTS] = [
            json.dumps([{"verifier": m.verifier, "correct": m.correct, "reason": m.reason, "extracted": m.extracted}
                        for m in getattr(v, "members", ())]) if getattr(v, "members", ()) else None
            for v in verdicts
        ]
        return out

"""The verdict type, the options every verifier shares, and the base class that runs checks.

A verifier is a picklable callable ``v(response, reference, *, truncated=False) -> Verdict`` with a batch form
``v.batch(responses, references, truncated=None) -> list[Verdict]``. Subclasses implement one pure method,
``check(response, reference) -> Verdict``; the base class handles truncation, input coercion, timing and where the
check runs: in-process (``workers=0``, only for linear-time verifiers) or in worker processes with a hard
per-item deadline (``workers>=1``, see ``verifiers.pool``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Reason = Literal["ok", "mismatch", "no_answer", "timeout", "error"]
REASONS: tuple[str, ...] = ("ok", "mismatch", "no_answer", "timeout", "error")


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one response against one reference.

    Attributes:
        correct: Whether the response's final answer matches the reference.
        extracted: The answer text taken from the response (``None`` when none was found or the check failed).
        reason: ``ok`` (correct), ``mismatch`` (an answer that does not match), ``no_answer`` (no final answer, or a
            truncated completion), ``timeout`` (the check ran past its deadline and its worker was replaced) or
            ``error`` (the check raised, ran out of memory, or the reference could not be read).
        verifier: Name of the verifier that produced the verdict.
        ms: Wall-clock milliseconds spent on this item, as seen by the caller.
        members: For ensembles, each member's own verdict, in member order.
    """

    correct: bool
    extracted: str | None
    reason: Reason
    verifier: str
    ms: float
    members: tuple[Verdict, ...] = ()


class VerifierOptions(BaseModel):
    """Options shared by all verifiers. Subclasses add their own fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accept_truncated: bool = Field(
        False,
        description="Verify completions cut at max_tokens like any other. By default a truncated completion gets "
        "reason 'no_answer': a half-written solution is not a training example even when a number in it matches.",
    )
    last_number_fallback: bool = Field(
        False,
        description="When a response has no \\boxed{}, '####' or 'the answer is' anchor, take its last number as the "
        "answer. Off by default: it turns intermediate results into false positives.",
    )
    workers: int = Field(
        0,
        ge=0,
        description="Worker processes that run the checks, each with a hard per-item deadline (timeout_s). "
        "0 runs checks in the calling process, without a deadline; allowed only for linear-time verifiers.",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Hard deadline per item, in seconds, when workers >= 1. A worker still busy at the deadline is "
        "killed and replaced, and the item gets reason 'timeout'.",
    )
    memory_mb: int = Field(
        2048,
        ge=256,
        description="Address-space cap of each worker process (RLIMIT_AS), in MiB. An item that needs more gets "
        "reason 'error' instead of taking the machine down.",
    )


def _coerce_text(value: Any) -> str:
    """Turn a response or reference cell into text; ``None`` becomes the empty string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


class Verifier:
    """Base class: subclasses set ``name`` and ``Options`` and implement ``check``.

    Instances are picklable (only the options travel; worker processes are started lazily where the verifier is
    used) and safe to call from any thread, inside Ray tasks and actors.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[VerifierOptions]] = VerifierOptions
    #: Whether ``workers=0`` is allowed. Verifiers whose checks can run for unbounded time (symbolic algebra, task
    #: scorers) set this to False so that every item has a hard deadline.
    inline_allowed: ClassVar[bool] = True
    #: Whether checks run third-party code on model output (a task's own scorer). Such verifiers' workers drop what
    #: they can (see ``verifiers.pool.sandbox``): root, the filesystem, new processes, file writes, core dumps.
    sandboxed: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = validate_options(self.name, self.Options, options)
        if not self.inline_allowed and self.options.workers == 0:
            raise ValueError(
                f"verifier '{self.name}' needs workers >= 1: its checks can run for unbounded time, so they run in "
                "worker processes with a hard deadline. Set workers to 1 or more."
            )
        self._setup_runtime()

    # -- pickling: only the options travel, the worker pool is rebuilt lazily where the verifier is used --------
    def _setup_runtime(self) -> None:
        self._pool = None
        self._pool_lock = threading.Lock()
        self._prepared = False

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options.model_dump()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.options = self.Options(**state["options"])
        self._setup_runtime()

    def __repr__(self) -> str:
        changed = self.options.model_dump(exclude_defaults=True)
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{type(self).__name__}({args})"

    # -- what subclasses implement ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Import heavy modules and warm caches. Runs once per worker (before the workers fork) or on first use."""

    def check(self, response: str, reference: str) -> Verdict:
        """Verify one (response, reference) pair. Pure; may run in a worker process."""
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------------------------
    def __call__(self, response: str, reference: str, *, truncated: bool = False) -> Verdict:
        """Verify one response against its reference. ``truncated``: the completion was cut at max_tokens."""
        return self.batch([response], [reference], [truncated])[0]

    def batch(
        self,
        responses: Sequence[str],
        references: Sequence[str],
        truncated: Sequence[bool] | None = None,
    ) -> list[Verdict]:
        """Verify many pairs at once, in parallel over the workers; the result is in input order.

        Items that share a reference are routed to the same worker where possible, so each worker reads a
        reference once and reuses it for all samples of that problem.
        """
        responses, references, truncated = coerce_batch_args(responses, references, truncated)
        verdicts: list[Verdict | None] = [None] * len(responses)
        todo: list[int] = []
        for i, is_truncated in enumerate(truncated):
            if is_truncated and not self.options.accept_truncated:
                verdicts[i] = Verdict(False, None, "no_answer", self.name, 0.0)
            else:
                todo.append(i)
        if not todo:
            return verdicts  # type: ignore[return-value]
        if self.options.workers == 0:
            self._ensure_prepared()
            for i in todo:
                started = time.perf_counter()
                verdict = self.safe_check(responses[i], references[i])
                verdicts[i] = dataclasses.replace(verdict, ms=(time.perf_counter() - started) * 1e3)
        else:
            outcomes = self._worker_pool().run([(responses[i], references[i]) for i in todo])
            for i, (verdict, failure, ms) in zip(todo, outcomes, strict=True):
                if verdict is None:
                    verdict = Verdict(False, None, failure, self.name, ms)
                else:
                    verdict = dataclasses.replace(verdict, ms=ms)
                verdicts[i] = verdict
        return verdicts  # type: ignore[return-value]

    def safe_check(self, response: str, reference: str) -> Verdict:
        """``check`` that turns any exception (including MemoryError and RecursionError) into reason 'error'."""
        try:
            return self.check(response, reference)
        except Exception:
            return Verdict(False, None, "error", self.name, 0.0)

    def clear_caches(self) -> None:
        """Forget memoized results here and in every running worker, which stay up and keep their warm imports.

        For benchmarks that time repeated rounds of the same items: each round then does the work of a first one.
        """
        self._clear_local_caches()
        with self._pool_lock:
            pool = self._pool
        if pool is not None:
            pool.call_in_workers("_clear_local_caches")

    def _clear_local_caches(self) -> None:
        """Subclasses that memoize results clear them here (runs in this process and in each worker)."""

    def close(self) -> None:
        """Stop this verifier's worker processes (they also stop on their own when the process exits)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------------
    def _ensure_prepared(self) -> None:
        if not self._prepared:
            self.prepare()
            self._prepared = True

    def _worker_pool(self):
        from verifiers.pool import WorkerPool

        with self._pool_lock:
            if self._pool is None or not self._pool.usable():
                self._pool = WorkerPool(
                    self,
                    size=self.options.workers,
                    timeout_s=self.options.timeout_s,
                    memory_mb=self.options.memory_mb,
                    sandbox=self.sandboxed,
                )
            return self._pool

    def _verdict(self, correct: bool, extracted: str | None, reason: Reason) -> Verdict:
        return Verdict(correct, extracted, reason, self.name, 0.0)


def coerce_batch_args(
    responses: Sequence[Any], references: Sequence[Any], truncated: Sequence[bool] | None
) -> tuple[list[str], list[str], list[bool]]:
    """Batch arguments as lists of text and flags; mismatched lengths raise ValueError saying what to pass."""
    responses = [_coerce_text(r) for r in responses]
    references = [_coerce_text(r) for r in references]
    if len(responses) != len(references):
        raise ValueError(
            f"batch got {len(responses)} responses but {len(references)} references; pass one reference per response"
        )
    if truncated is None:
        flags = [False] * len(responses)
    else:
        flags = [bool(t) for t in truncated]
        if len(flags) != len(responses):
            raise ValueError(
                f"batch got {len(flags)} truncated flags for {len(responses)} responses; pass one per response or None"
            )
    return responses, references, flags


def check_options(name: str, options_model: type[BaseModel], options: dict[str, Any]) -> None:
    """Validate ``options`` when a config loads: raises a pydantic ValidationError with each error at its option's key,
    so the config error names the exact field (``stages.verify.options.timeout``) and lists the valid options."""
    from pydantic_core import InitErrorDetails, PydanticCustomError

    try:
        options_model.model_validate(options)
    except ValidationError as err:
        valid = ", ".join(sorted(options_model.model_fields))
        details = []
        for e in err.errors():
            if e["type"] == "extra_forbidden":
                msg = f"unknown option of verifier '{name}'; valid options: {valid}"
            else:
                msg = e["msg"].removeprefix("Value error, ")
            # The text goes in as context, so braces in it are never read as a template.
            details.append(InitErrorDetails(type=PydanticCustomError("verifier_option", "{msg}", {"msg": msg}),
                                            loc=e["loc"], input=e.get("input")))
        raise ValidationError.from_exception_data(options_model.__name__, details) from None


def validate_options(name: str, options_model: type[BaseModel], options: dict[str, Any]) -> Any:
    """Validate ``options`` against a verifier's options model; errors name the bad option and the valid ones."""
    valid = sorted(options_model.model_fields)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for verifier '{name}'; valid options: {', '.join(valid)}"
        )
    try:
        return options_model(**options)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg'].removeprefix('Value error, ')} "
            f"(got {e.get('input')!r})"
            for e in err.errors()
        )
        raise ValueError(
            f"invalid option for verifier '{name}': {problems}. Valid options: {', '.join(valid)}"
        ) from None

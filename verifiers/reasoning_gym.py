"""``reasoning_gym``: delegates to the task's own ``score_answer`` from the reasoning-gym package.

The reference carries what the scorer needs, as JSON, in one of three forms:

- ``{"task": "basic_arithmetic", "entry": {"question": ..., "answer": ..., "metadata": {...}}}``;
- the entry alone, ``{"question": ..., "answer": ..., "metadata": {...}}``: the task is the ``task`` option, or
  else the entry's ``metadata.source_dataset`` (which reasoning-gym sets on every entry);
- a plain answer string, with the ``task`` option set (enough for tasks whose scorer reads only the answer).

``reference_for(task, entry)`` writes the first form. The answer is the last ``<answer>...</answer>`` of the response
(reasoning-gym's own convention), else the usual extraction (``\\boxed{}``, "the answer is", ...). The task's scorer
is third-party code, so checks run in worker processes with a hard deadline.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from verifiers.base import Verdict, Verifier, VerifierOptions
from verifiers.extract import clean_text, extract_answer, last_tag


class ReasoningGymOptions(VerifierOptions):
    """Options of the ``reasoning_gym`` verifier."""

    workers: int = Field(
        1, ge=1, description="Worker processes; each item runs in one with a hard deadline (timeout_s)."
    )
    task: str | None = Field(
        None, description="reasoning-gym task name used when the reference does not name one (e.g. 'gsm_symbolic')."
    )
    min_score: float = Field(
        1.0, ge=0, le=1, description="Lowest score_answer result that counts as correct (most tasks give 0 or 1)."
    )


class ReasoningGymVerifier(Verifier):
    """Scores answers with reasoning-gym's per-task ``score_answer``."""

    name = "reasoning_gym"
    Options = ReasoningGymOptions
    inline_allowed = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options.task is not None:
            _check_task_name(self.options.task)

    def _setup_runtime(self) -> None:
        super()._setup_runtime()
        self._scorers: dict[str, Any] = {}

    def prepare(self) -> None:
        """Import reasoning-gym (and build the default task's scorer) once per worker template."""
        import reasoning_gym  # noqa: F401

        if self.options.task is not None:
            self._scorer(self.options.task)

    def check(self, response: str, reference: str) -> Verdict:
        """Verify one response with the task's scorer (runs in a worker)."""
        try:
            task, entry = self._task_and_entry(clean_text(reference))
        except ValueError:
            return self._verdict(False, None, "error")
        response = clean_text(response)
        answer = last_tag(response, "answer")
        if answer is None:
            extraction = extract_answer(response, last_number_fallback=self.options.last_number_fallback)
            answer = None if extraction is None else extraction.text
        if answer is None:
            return self._verdict(False, None, "no_answer")
        score = float(self._scorer(task)(answer, entry))
        correct = score >= self.options.min_score
        return self._verdict(correct, answer, "ok" if correct else "mismatch")

    def _task_and_entry(self, reference: str) -> tuple[str, dict[str, Any]]:
        try:
            data = json.loads(reference)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("entry"), dict):
            task, entry = data.get("task") or self.options.task, data["entry"]
        elif isinstance(data, dict) and "answer" in data:
            metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
            task, entry = self.options.task or metadata.get("source_dataset"), data
        else:
            task, entry = self.options.task, {"question": "", "answer": reference, "metadata": {}}
        if not isinstance(task, str):
            raise ValueError("the reference names no reasoning-gym task and the 'task' option is not set")
        entry.setdefault("metadata", {})
        return task, entry

    def _scorer(self, task: str) -> Any:
        if task not in self._scorers:
            import reasoning_gym

            self._scorers[task] = reasoning_gym.get_score_answer_fn(task)
        return self._scorers[task]


def reference_for(task: str, entry: dict[str, Any]) -> str:
    """The reference string for a reasoning-gym entry: ``{"task": ..., "entry": ...}`` as JSON."""
    return json.dumps({"task": task, "entry": entry}, default=list)


def _check_task_name(task: str) -> None:
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise ValueError(
            f"unknown reasoning-gym task {task!r} in option 'task'; valid tasks: {', '.join(sorted(DATASETS))}"
        )

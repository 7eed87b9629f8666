"""``reasoning_gym``: delegates to the task's own ``score_answer`` from the reasoning-gym package.

The task comes from the config, never from the data: the ``task`` option (or ``tasks``, for a pool that mixes
several), and only tasks in ``SAFE_TASKS``. Several reasoning-gym scorers run ``eval`` or sympy's
``parse_expr``/``sympify`` on the model's answer or on the reference, so a task off the list would run model output
as code; such tasks are refused when the options are validated (``lessmore validate`` exits 2).

The reference carries what the scorer needs, as JSON, in one of three forms:

- ``{"task": "basic_arithmetic", "entry": {"question": ..., "answer": ..., "metadata": {...}}}``;
- the entry alone, ``{"question": ..., "answer": ..., "metadata": {...}}``;
- a plain answer string (enough for tasks whose scorer reads only the answer).

A task the reference names (``task``, or the entry's ``metadata.source_dataset``) must be a configured one, else the
item gets reason ``error`` and no scorer runs; a reference that names none is scored by the configured task when
there is exactly one. ``reference_for(task, entry)`` writes the first form. The answer is the last
``<answer>...</answer>`` of the response (reasoning-gym's own convention), else the usual extraction (``\\boxed{}``,
"the answer is", ...). The scorer is third-party code, so checks run in sandboxed worker processes with a hard
deadline (see ``verifiers.pool``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, field_validator, model_validator

from verifiers.base import Verdict, Verifier, VerifierOptions
from verifiers.extract import clean_text, extract_answer, last_tag

#: reasoning-gym tasks whose ``score_answer`` (and every reasoning-gym helper it calls) was read and found to parse
#: the answer and the reference only with str/int/float/Decimal/Fraction/complex/re: no eval, exec, compile,
#: ``ast.literal_eval``, sympy or numpy. Checked against the installed package by tests/test_reasoning_gym_safety.py.
#: Left off on purpose: scorers that eval or sympify (countdown, puzzle24, spiral_matrix, number_sorting,
#: polynomial_multiplication, ...), ``composite`` (picks a scorer from the entry), and everything not math.
SAFE_TASKS: frozenset[str] = frozenset({
    "base_conversion",
    "basic_arithmetic",
    "chain_sum",
    "coin_flip",
    "complex_arithmetic",
    "count_bits",
    "count_primes",
    "decimal_arithmetic",
    "decimal_chain_sum",
    "dice",
    "fraction_simplification",
    "gcd",
    "gsm_symbolic",
    "lcm",
    "leg_counting",
    "number_format",
    "number_sequence",
    "polynomial_equations",
    "power_function",
    "prime_factorization",
    "products",
    "simple_equations",
    "simple_geometry",
    "time_intervals",
})


def require_installed(what: str) -> None:
    """Refuse ``what`` (the source kind or this verifier) in one line when reasoning-gym, an optional extra, is not
    installed."""
    import importlib.util

    if importlib.util.find_spec("reasoning_gym") is None:
        raise ValueError(f"{what} needs the reasoning-gym package: pip install 'lessmore[reasoning-gym]' "
                         "(or pip install reasoning-gym)")


class ReasoningGymOptions(VerifierOptions):
    """Options of the ``reasoning_gym`` verifier."""

    workers: int = Field(
        1, ge=1, description="Worker processes; each item runs in one with a hard deadline (timeout_s)."
    )
    task: str | None = Field(
        None,
        description="The reasoning-gym task whose scorer judges every item (e.g. 'gsm_symbolic'); one of the tasks "
        "whose scorers never run the answer as code (verifiers.reasoning_gym.SAFE_TASKS). Set task or tasks.",
    )
    tasks: tuple[str, ...] = Field(
        (),
        description="Several reasoning-gym tasks, for a pool that mixes them: each reference must name one of them. "
        "Set task or tasks.",
    )
    min_score: float = Field(
        1.0, ge=0, le=1, description="Lowest score_answer result that counts as correct (most tasks give 0 or 1)."
    )

    @model_validator(mode="before")
    @classmethod
    def _installed(cls, data: Any) -> Any:
        require_installed("the reasoning_gym verifier")
        return data

    @field_validator("task")
    @classmethod
    def _task_is_safe(cls, task: str | None) -> str | None:
        if task is not None:
            _check_safe(task, "task")
        return task

    @field_validator("tasks")
    @classmethod
    def _tasks_are_safe(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        for task in tasks:
            _check_safe(task, "tasks")
        return tasks

    @model_validator(mode="after")
    def _one_way_to_name_tasks(self) -> ReasoningGymOptions:
        if (self.task is None) == (not self.tasks):
            raise ValueError(
                "set either task (one reasoning-gym task, e.g. task: basic_arithmetic) or tasks (a list, for a pool "
                "that mixes tasks), not both and not neither: the task comes from the config, never from the data"
            )
        return self

    def allowed_tasks(self) -> tuple[str, ...]:
        """The configured tasks, in order."""
        return (self.task,) if self.task is not None else self.tasks


class ReasoningGymVerifier(Verifier):
    """Scores answers with reasoning-gym's per-task ``score_answer``, for the configured safe tasks only."""

    name = "reasoning_gym"
    Options = ReasoningGymOptions
    inline_allowed = False
    sandboxed = True

    def _setup_runtime(self) -> None:
        super()._setup_runtime()
        self._scorers: dict[str, Any] = {}

    def prepare(self) -> None:
        """Build every configured task's scorer once per worker template, before the workers fork.

        The sandboxed workers may not be able to import anything later (they can lose access to the filesystem),
        so each task's scorer is also run once here on an entry of its own.
        """
        import reasoning_gym

        for task in self.options.allowed_tasks():
            entry = reasoning_gym.create_dataset(task, seed=0, size=1)[0]
            for response in (f"<answer>{entry['answer']}</answer>", r"so the answer is \boxed{0}"):
                self.safe_check(response, reference_for(task, entry))

    def check(self, response: str, reference: str) -> Verdict:
        """Verify one response with the configured task's scorer (runs in a worker)."""
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
        """The configured task that scores this reference, and the entry; ValueError when the reference names
        another task, or names none while several are configured."""
        try:
            data = json.loads(reference)
        except ValueError:
            data = None
        named: list[Any] = []
        if isinstance(data, dict) and isinstance(data.get("entry"), dict):
            if data.get("task") is not None:
                named.append(data["task"])
            entry = data["entry"]
        elif isinstance(data, dict) and "answer" in data:
            entry = data
        else:
            entry = {"question": "", "answer": reference, "metadata": {}}
        metadata = entry.get("metadata")
        if metadata is None:
            metadata = entry["metadata"] = {}
        if not isinstance(metadata, dict):
            raise ValueError("the entry's metadata is not a mapping")
        if metadata.get("source_dataset") is not None:
            named.append(metadata["source_dataset"])
        allowed = self.options.allowed_tasks()
        if named:
            task = named[0]
            # The data may only pick among the configured tasks, and must not contradict itself.
            if any(name != task for name in named) or task not in allowed:
                raise ValueError(f"the reference names task {task!r}; configured: {', '.join(allowed)}")
        elif len(allowed) == 1:
            task = allowed[0]
        else:
            raise ValueError("the reference names no task and several are configured")
        if task not in SAFE_TASKS:  # unreachable through validated options; kept so the scorer never sees one
            raise ValueError(f"reasoning-gym task {task!r} is not in SAFE_TASKS")
        return task, entry

    def _scorer(self, task: str) -> Any:
        if task not in self._scorers:
            import reasoning_gym

            self._scorers[task] = reasoning_gym.get_score_answer_fn(task)
        return self._scorers[task]


def reference_for(task: str, entry: dict[str, Any]) -> str:
    """The reference string for a reasoning-gym entry: ``{"task": ..., "entry": ...}`` as JSON."""
    return json.dumps({"task": task, "entry": entry}, default=list)


def _check_safe(task: str, option: str) -> None:
    """Refuse a task off SAFE_TASKS (unknown ones included), saying what to set instead."""
    if task not in SAFE_TASKS:
        raise ValueError(
            f"{task!r} is not an allowed reasoning-gym task (allowed: the tasks whose scorers never run the answer or "
            f"the reference as code); set {option} to one of: {', '.join(sorted(SAFE_TASKS))}, or verify this task "
            "with another verifier"
        )

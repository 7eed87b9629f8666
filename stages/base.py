"""The stage contract: a frozen config model plus a callable over batches.

A stage's ``__init__(cfg, **prepared)`` does the heavy setup once per worker (load a model, start a process
pool); ``__call__(batch) -> batch`` maps a batch (a dict of equal-length column lists) to a new one. Stage code
never touches Ray: the runner reads ``cfg.resources`` and applies them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Batch = dict[str, list[Any]]


class Frozen(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(Frozen):
    """Where a stage runs. Applied by the runner to ``map_batches``; never read by stage code."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per worker.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per worker (0 on CPU machines).")
    concurrency: int = Field(1, ge=1, description="Number of workers (actors) in the stage's pool.")
    batch_size: int = Field(64, ge=1, description="Rows per batch handed to one call of the stage.")


class StageConfig(Frozen):
    """Fields every stage has."""

    resources: Resources = Field(default_factory=Resources, description="Ray resources of this stage's workers.")


class Stage:
    """Base class of stages. Subclasses set the class variables and implement ``__call__``.

    kind:
      - ``source``: produces rows (``read()``), no upstream.
      - ``map``: ``__call__`` over batches of upstream rows (Ray ``map_batches``, resumable per batch).
      - ``sink``: consumes the upstream rows (``write(upstream_dir, run_dir)``), adds no rows.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["source", "map", "sink"]] = "map"
    config_model: ClassVar[type[StageConfig]] = StageConfig
    requires: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[tuple[str, ...]] = ()
    # The upstream columns that identify one input row; used to resume a half-done stage.
    input_key: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: StageConfig, **prepared: Any) -> None:
        self.cfg = cfg

    def __call__(self, batch: Batch) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def prepare(cls, cfg: StageConfig, upstream_dir: str, context: "RunContext") -> dict[str, Any]:
        """Runs once on the driver before the workers start; returns keyword arguments for ``__init__``."""
        return {}

    @classmethod
    def rows_per_input(cls, cfg: StageConfig) -> int | None:
        """How many output rows one accepted input row yields (None: not fixed). Used to reconcile counts."""
        return 1

    @classmethod
    def code_files(cls) -> tuple[str, ...]:
        """Source files whose content is part of this stage's fingerprint (its own module by default)."""
        import inspect

        return (inspect.getfile(cls),)


class RunContext(Frozen):
    """What the runner tells a stage about the run (never Ray state)."""

    run_dir: str
    seed: int = 0
    model_id: str | None = None


def batch_len(batch: Batch) -> int:
    """Rows in a batch (0 for an empty dict)."""
    for column in batch.values():
        return len(column)
    return 0


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    """The batch as a list of row dicts."""
    n = batch_len(batch)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def batch_of(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str] | None = None) -> Batch:
    """Row dicts back into a batch; ``columns`` fixes the columns even when ``rows`` is empty."""
    names = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    return {c: [r.get(c) for r in rows] for c in names}

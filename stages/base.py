"""The stage contract: a frozen config model plus a callable over batches.

A stage's ``__init__(cfg, **prepared)`` does the heavy setup once per worker (load a model, start a process
pool); ``__call__(batch) -> batch`` maps a batch (a dict of equal-length column lists) to a new one. Stage code
never touches Ray and never reads ``resources``: the runner applies them, and tells a stage what it needs to know
about its workers (their CPUs) through the ``RunContext`` handed to ``prepare``.

The class variables declare everything the runner needs to run, resume, fingerprint and account for a stage, so the
runner never needs a stage's name.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Batch = dict[str, list[Any]]


class Frozen(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(Frozen):
    """Where a stage's workers run on Ray. Read by the runner only (it applies them to ``map_batches``); what a stage
    computes never depends on them, so they are not part of its fingerprint."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per worker.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per worker (0 on CPU machines).")
    concurrency: int = Field(1, ge=1, description="Number of workers (actors) in the stage's pool.")
    batch_size: int = Field(64, ge=1, description="Rows per batch handed to one call of the stage.")


class StageConfig(Frozen):
    """Base of every stage's config: what the stage computes."""


class OnRay(Frozen):
    """Mixed into the config of a stage whose workers run on Ray (a ``map`` stage): its ``resources``. Stages that
    run on the driver (sources, sinks) and blocks nested in other blocks do not accept ``resources``."""

    resources: Resources = Field(
        default_factory=Resources, description="Ray resources of this stage's workers (see `Resources`)."
    )


class Stage:
    """Base class of stages. Subclasses set the class variables and implement ``__call__``.

    kind:
      - ``source``: produces rows (``read()``), no upstream.
      - ``map``: ``__call__`` over batches of upstream rows (Ray ``map_batches``, resumable per batch); its config
        mixes in ``OnRay``.
      - ``sink``: consumes the upstream rows (``write(upstream_dir, run_dir)``), adds no rows.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["source", "map", "sink"]] = "map"
    config_model: ClassVar[type[StageConfig]] = StageConfig
    requires: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[tuple[str, ...]] = ()
    # The upstream columns that identify one input row; used to resume a half-done stage and to check that every
    # input row was written or rejected.
    input_key: ClassVar[tuple[str, ...]] = ()
    # The columns that identify one output row: no two output rows may share them (empty: not checked).
    output_key: ClassVar[tuple[str, ...]] = ()
    # Boolean columns whose true values the runner counts and reports (e.g. completions served from a cache).
    tallies: ClassVar[tuple[str, ...]] = ()

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
    def fingerprint_extra(cls, cfg: StageConfig) -> str:
        """What the output depends on beyond the config's text: the content of what the config only names (a
        model directory, say). Runs on the driver; may build or locate what it names."""
        return ""

    @classmethod
    def outputs_stand(cls, cfg: StageConfig, out_dir: str, output_root: str) -> str | None:
        """Asked before the runner skips a finished stage: why what it wrote no longer stands (None: it does). A
        stage that publishes outside its directory checks that the copy there is still its own; a reason makes
        the runner run the stage again."""
        return None

    @classmethod
    def code_sources(cls) -> tuple[Any, ...]:
        """The code behind this stage's output, for its fingerprint: modules, files or package directories. By
        default the stage's own module, or its whole package when the stage is a package."""
        import sys

        return (sys.modules[cls.__module__],)


class RunContext(Frozen):
    """What the runner tells a stage about the run and its workers (never Ray state)."""

    run_dir: str
    seed: int = 0
    model_id: str | None = None
    num_cpus: float = Field(1.0, description="CPUs each worker of the stage being prepared reserves.")
    num_gpus: float = Field(0.0, description="GPUs each worker of the stage being prepared reserves.")
    fingerprint: str = Field("", description="Fingerprint of the stage being run (a sink stamps what it publishes).")
    stage_dirs: tuple[str, ...] = Field(
        (), description="Output directories of the stages before this one, in run order (the first: the problem pool)."
    )


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

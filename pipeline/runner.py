"""The runner: runs a config's stages through Ray Data. Each stage's output lands in run_dir/NN_<stage>/ as parquet
parts, with a ``_SUCCESS`` marker holding its fingerprint, counts, and the files it wrote (sizes, rows). A rerun skips a
stage whose marker has its fingerprint and still describes the files on disk and the input they came from (anything
else runs it again, saying why), and resumes a half-done map stage from the parts already written (input rows whose
outputs exist are skipped; duplicate rows that a crash left are dropped first). One run at a time holds the run
directory (``pipeline.rundir``).

The runner knows stages only through their contract (``stages.base.Stage``): it never tests a stage's name."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline import columns as C
from pipeline import io, rundir
from pipeline.config import ConfigError, RunConfig, config_json, redact_secrets
from pipeline.progress import StageProgress
from pipeline.registry import stage_class
from stages.base import RunContext, Stage

log = logging.getLogger(__name__)

CODE_VERSION = "0.1.0"
MARKER = io.MARKER
STARTED = io.STARTED


class CountMismatch(RuntimeError):
    """Rows in != kept + dropped + rejected after a stage."""


@dataclass
class StageResult:
    """What one stage did, as written into its marker and stats.json."""

    name: str
    directory: str
    fingerprint: str
    status: str  # ran | resumed | skipped
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    kept: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """The whole run: per-stage results and where things are."""

    run_dir: Path
    stages: list[StageResult]
    outputs: dict[str, str] = field(default_factory=dict)


def check_columns(cfg: RunConfig) -> None:
    """Fail in a second, not an hour in: every stage's required columns must come from an earlier stage."""
    available: set[str] = set()
    grain: tuple[str, ...] = ()  # the columns that identify one row at this point, and the stage that set them
    grain_by = ""
    for i, (name, _) in enumerate(cfg.stages):
        stage = stage_class(name)
        if stage.kind == "map" and stage.input_key and grain and not set(grain) <= set(stage.input_key):
            # e.g. a stage that reads one row per problem placed after one that makes a row per completion
            raise ConfigError(
                f"stages.{name}: takes one row per {', '.join(stage.input_key)}, but {grain_by} before it makes one "
                f"row per {', '.join(grain)}; place {name} before {grain_by}")
        if i == 0 and stage.kind != "source":
            raise ConfigError(f"stages.{name}: the first stage must be a source (e.g. source: {{kind: toyworld, n: 100}})")
        if i > 0 and stage.kind == "source":
            raise ConfigError(f"stages.{name}: a source can only be the first stage")
        missing = [c for c in stage.requires if c not in available]
        if missing:
            raise ConfigError(
                f"stages.{name}: needs column(s) {', '.join(missing)}, which no earlier stage adds; "
                f"order the stages as source, sample, verify, difficulty, curate, export"
            )
        available |= set(stage.adds)
        if stage.output_key and stage.output_key != grain:
            grain, grain_by = stage.output_key, name


def stage_fingerprint(upstream: str, name: str, cfg) -> str:
    """Fingerprint of (upstream fingerprint, stage config without resources, the stage's code, what its config only
    names). The code is every source the stage declares, the row contract and this runner."""
    import sys

    stage = stage_class(name)
    body = json.loads(config_json(cfg))
    body.pop("resources", None)  # where a stage runs does not change what it outputs
    body.pop("overwrite", None)  # nor does permission to replace an earlier export
    code = io.code_hash(*stage.code_sources(), C, sys.modules[__name__])
    return io.digest(upstream, name, body, CODE_VERSION, code, stage.fingerprint_extra(cfg))


class Runner:
    """Runs a RunConfig; Ray starts only when a stage actually has work to do."""

    def __init__(self, cfg: RunConfig, console=None) -> None:
        from rich.console import Console

        self.cfg = cfg
        self.run_dir = cfg.resolved_run_dir
        self.console = console or Console(stderr=True)
        self.context = RunContext(run_dir=str(self.run_dir), seed=cfg.seed)
        self._ray_ready = False

    # -- Ray -----------------------------------------------------------------------------------------------
    def _ensure_ray(self) -> None:
        if self._ray_ready:
            return
        import ray

        from pipeline.cluster import connect

        connect(self.cfg.ray, self.console)
        ctx = ray.data.DataContext.get_current()
        # Each stage shows its own progress (pipeline.progress): Ray Data's shows operators, not the stage.
        ctx.enable_progress_bars = False
        ctx.verbose_stats_logs = False
        try:
            ctx.print_on_execution_start = False
        except AttributeError:
            pass
        self._ray_ready = True

    # -- the run -------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        from pipeline.cluster import ignore_known_warnings

        check_columns(self.cfg)
        ignore_known_warnings()  # stages on the driver (a source, an export) run even when Ray does not start
        with rundir.claim(self.run_dir):
            return self._run()

    def _run(self) -> RunResult:
        # Credentials in the config never reach the disk (the dataset card embeds this file, and it may be pushed).
        written = redact_secrets(self.cfg.to_yaml_dict())
        io.write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(written, sort_keys=False))
        upstream_fp, upstream_dir, upstream_files = "root", "", None
        results: list[StageResult] = []
        for idx, (name, scfg) in enumerate(self.cfg.stages):
            stage = stage_class(name)
            out_dir = self.run_dir / f"{idx:02d}_{name}"
            fp = stage_fingerprint(upstream_fp, name, scfg)
            # What this stage read: the upstream marker's file list (part names are random per write, so a re-run
            # upstream stage gives a new digest even when its config did not change).
            input_digest = io.digest(upstream_files)
            res = self._up_to_date(out_dir, fp, input_digest)
            # What a stage published outside its directory (an export path) must still be what it wrote.
            stale = stage.outputs_stand(scfg, str(out_dir), self.cfg.output_root) if res is not None else None
            if stale is not None:
                self._notice(out_dir, f"{stale}; running it again")
            if res is not None and stale is None:
                self.console.print(f"[dim]{out_dir.name}: up to date, skipped[/]")
            else:
                context = self.context.model_copy(
                    update={"fingerprint": fp, "stage_dirs": tuple(str(self.run_dir / f"{i:02d}_{n}")
                                                                   for i, (n, _) in enumerate(self.cfg.stages[:idx]))})
                res = self._run_stage(stage, scfg, out_dir, upstream_dir, fp, input_digest, context=context)
            results.append(res)
            upstream_fp, upstream_dir, upstream_files = fp, str(out_dir), io.read_marker(out_dir)["files"]
        self._write_stats(results)
        outputs = {}
        for r in results:
            outputs.update(r.extra.get("outputs", {}))
        return RunResult(self.run_dir, results, outputs)

    def _up_to_date(self, out_dir: Path, fp: str, input_digest: str) -> StageResult | None:
        """The stage's recorded result when its marker has this fingerprint and still describes the files on disk and
        the input they came from; else None, saying why when a marker of this fingerprint no longer holds."""
        if not (out_dir / MARKER).exists():
            return None
        marker = io.read_marker(out_dir)
        if marker is not None and marker.get("fingerprint") != fp:
            return None  # the config or the code changed: an ordinary run, nothing to say
        rejects = self._rejects_dir(out_dir)
        if marker is None:
            problem = f"{MARKER} cannot be read"
        elif not isinstance(marker.get("result"), dict):
            problem = f"{MARKER} holds no result"
        else:
            problem = io.files_problem(out_dir, marker.get("files"))
            if problem is None and (rejected := io.files_problem(rejects, marker.get("rejects"))):
                problem = f"{rejects.relative_to(self.run_dir)}: {rejected}"
            if problem is None and marker.get("input") != input_digest:
                problem = "its input changed since it ran"
        if problem is None:
            try:
                res = StageResult(**{**marker["result"], "status": "skipped", "seconds": 0.0})
            except TypeError:
                problem = f"{MARKER} holds a garbled result"
            else:
                return res
        self._notice(out_dir, f"{problem}; running the stage again")
        return None

    def _notice(self, out_dir: Path, text: str) -> None:
        """One line about a stage (never wrapped: it may name long paths)."""
        from rich.markup import escape

        self.console.print(f"[yellow]{out_dir.name}[/]: {escape(text)}", soft_wrap=True, highlight=False)

    def _repair(self, stage: type[Stage], out_dir: Path) -> None:
        """Before resuming: drop part files that cannot be read (their rows are redone) and rows written twice (by a
        crash, or by a run that did not hold the lock), so the resumed stage adds up."""
        rejects = self._rejects_dir(out_dir)
        damaged = io.drop_damaged_parts(out_dir) + io.drop_damaged_parts(rejects)
        key = stage.output_key or stage.input_key
        dropped = io.drop_duplicate_rows(out_dir, key) if key else 0
        if stage.input_key:  # an input rejected twice, or rejected once and written once, is one input
            t = io.read_columns(out_dir, stage.input_key)
            written = set(zip(*(t[c].to_pylist() for c in stage.input_key)))
            dropped += io.drop_duplicate_rows(rejects, stage.input_key, seen=written)
        if damaged or dropped:
            self._notice(out_dir, f"dropped {dropped} duplicate row(s) and {len(damaged)} unreadable part file(s) "
                                  "left by an earlier run")

    def _run_stage(self, stage: type[Stage], scfg, out_dir: Path, upstream_dir: str, fp: str, input_digest: str = "",
                   fresh: bool = False, context: RunContext | None = None) -> StageResult:
        """Run (or resume) one stage into ``out_dir`` and mark it done; ``input_digest`` names what it read,
        ``context`` what the stage is told of the run (default: the runner's)."""
        context = context or self.context
        started = out_dir / STARTED
        resumable = (not fresh and stage.kind == "map" and started.is_file() and not started.is_symlink()
                     and started.read_text(errors="replace").strip() == fp)
        if resumable:
            self._repair(stage, out_dir)
        else:
            for d in (out_dir, self._rejects_dir(out_dir)):
                if d.exists():
                    shutil.rmtree(d)
        out_dir.mkdir(parents=True, exist_ok=True)
        io.write_text_atomic(started, fp)
        status = "resumed" if resumable and io.part_files(out_dir) else "ran"
        self.console.print(f"[bold cyan]{out_dir.name}[/]: {'resuming' if status == 'resumed' else 'running'} {stage.name}")
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if stage.kind == "source":
            self._run_source(stage, scfg, out_dir)
        elif stage.kind == "sink":
            # Sinks may publish outside their stage directory, but only inside output_root (they check it).
            extra = stage(scfg, output_root=self.cfg.output_root).write(upstream_dir, str(out_dir), context) or {}
        else:
            self._ensure_ray()
            res = scfg.resources
            prepared = stage.prepare(scfg, upstream_dir,
                                     context.model_copy(update={"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}))
            extra = self._run_distributed(stage, scfg, prepared, out_dir, upstream_dir)
        seconds = time.perf_counter() - t0
        try:
            res = self._account(stage, scfg, out_dir, upstream_dir, fp, status, seconds, extra)
        except CountMismatch as e:
            if not resumable:
                raise
            self._notice(out_dir, f"{e} after resuming; running the stage again from the start")
            return self._run_stage(stage, scfg, out_dir, upstream_dir, fp, input_digest, fresh=True, context=context)
        io.write_marker(out_dir, fp, result=res.__dict__, files=io.describe_files(out_dir),
                        rejects=io.describe_files(self._rejects_dir(out_dir)), input=input_digest)
        started.unlink(missing_ok=True)
        self.console.print(
            f"  {res.rows_in} in -> {res.rows_out} out, {res.rejected} rejected"
            + (f", {res.kept} kept, dropped {res.dropped}" if res.kept is not None else "")
            + "".join(f", {n} {column}" for column, n in res.extra.get("tallies", {}).items() if n)
            + f" ({seconds:.1f}s, {res.rows_in / seconds if seconds > 0 else 0:.1f} rows/s)", highlight=False
        )
        return res

    def _rejects_dir(self, out_dir: Path) -> Path:
        return self.run_dir / "rejects" / out_dir.name

    def _split_rejects(self, table, out_dir: Path):
        import pyarrow.compute as pc

        if C.REJECT_REASON not in table.column_names:
            return table
        bad = pc.is_valid(table[C.REJECT_REASON])
        if pc.any(bad).as_py():
            io.write_part(table.filter(bad), self._rejects_dir(out_dir))
            table = table.filter(pc.invert(bad))
        return table.drop_columns([C.REJECT_REASON])

    def _run_source(self, stage: type[Stage], scfg, out_dir: Path) -> None:
        for batch in stage(scfg, seed=self.cfg.seed).read():
            io.write_part(self._split_rejects(io.to_arrow(batch), out_dir), out_dir)

    def _run_distributed(self, stage: type[Stage], scfg, prepared: dict, out_dir: Path, upstream_dir: str) -> dict:
        """Streams the stage through an actor pool into part files; returns how many rows this call wrote."""
        import ray

        res = scfg.resources
        rows_before = io.count_rows(out_dir) + io.count_rows(self._rejects_dir(out_dir))
        work = self._plan_slices(stage, upstream_dir, out_dir, res.batch_size)
        if not work:
            return {"rows_already_done": rows_before, "rows_written": 0}
        total = io.count_rows(upstream_dir)
        todo = sum(item["rows"] for item in work)
        # The driver plans the reads: one item per batch of upstream rows (a part file and a row range, or the rows
        # left after a resume). Zero-CPU tasks read them, so reading never waits for CPUs held by the actor pool
        # (read_parquet's file listing needs a CPU and deadlocks when the pool holds them all); two at a time, since
        # each concurrent zero-CPU task costs a worker process. Every batch is its own block: the pool's actors
        # share the work, and a crash loses at most the batches in flight.
        ds = ray.data.from_items(work, override_num_blocks=len(work))
        ds = ds.map_batches(_read_slices, batch_size=1, batch_format="pyarrow", num_cpus=0,
                            compute=ray.data.TaskPoolStrategy(size=2))
        ds = ds.map_batches(
            _StageUDF, fn_constructor_kwargs={"stage": stage, "cfg": scfg, "prepared": prepared},
            batch_size=res.batch_size, batch_format="pyarrow", num_cpus=res.num_cpus, num_gpus=res.num_gpus or None,
            # Node loss is survived by Ray Data's defaults for actor pools (max_restarts=-1, max_task_retries=-1:
            # a lost actor restarts elsewhere and its batches are retried); never pass max_restarts=0 here. Part
            # files and resume keys keep the retried rows from being written twice.
            compute=ray.data.ActorPoolStrategy(size=res.concurrency),
        )
        ds.set_name(out_dir.name)  # Ray's logs, metrics and dashboard name the stage, not a random dataset id
        # Each block is the output of whole input batches, so a part file never holds half a problem. The driver
        # holds one block at a time: its memory does not grow with the pool. Progress counts input rows (a block
        # holds each of its inputs' output rows, whatever the fan-out).
        rows_written = 0
        with StageProgress(out_dir.name, total, self.console, done=total - todo,
                           enabled=self.cfg.ray.progress_bars) as progress:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows_written += block.num_rows
                progress.advance(_input_rows(block, stage.input_key))
                io.write_part(self._split_rejects(block, out_dir), out_dir)
        return {"rows_already_done": rows_before, "rows_written": rows_written}

    def _plan_slices(self, stage: type[Stage], upstream_dir: str, out_dir: Path, batch_size: int) -> list[dict]:
        """Work items of at most ``batch_size`` upstream rows whose outputs are not written yet."""
        import pyarrow.parquet as pq

        done = self._done_keys(stage, out_dir)
        work: list[dict] = []
        for path in io.part_files(upstream_dir):
            if done is None:
                n = pq.ParquetFile(path).metadata.num_rows
                todo: list[list[int]] = [[i, min(i + batch_size, n)] for i in range(0, n, batch_size)]
            else:
                keys = pq.read_table(path, columns=list(stage.input_key))
                left = [i for i, key in enumerate(zip(*(keys[c].to_pylist() for c in stage.input_key)))
                        if key not in done]
                todo = [left[i:i + batch_size] for i in range(0, len(left), batch_size)]
            # JSON text: one column type for every item, whatever shape its rows have
            work += [{"slice": json.dumps({"path": str(path), "range": done is None, "rows": rows}),
                      "rows": rows[1] - rows[0] if done is None else len(rows)} for rows in todo]
        return work

    def _done_keys(self, stage: type[Stage], out_dir: Path) -> set[tuple] | None:
        if not io.part_files(out_dir) and not io.part_files(self._rejects_dir(out_dir)):
            return None
        keys = set()
        for d in (out_dir, self._rejects_dir(out_dir)):
            t = io.read_columns(d, stage.input_key)
            if t.num_rows:
                keys.update(zip(*(t[c].to_pylist() for c in stage.input_key)))
        self.console.print(f"  {len(keys)} input rows already done; resuming the rest")
        return keys

    # -- accounting ----------------------------------------------------------------------------------------
    def _account(self, stage, scfg, out_dir, upstream_dir, fp, status, seconds, extra) -> StageResult:
        """Count what the stage did and check it against its contract: every input row written or rejected (fan-out
        rows per input where the stage fixes them), no two output rows with one output key, and for stages that mark
        rows kept + dropped + rejected = in."""
        rows_out = io.count_rows(out_dir)
        rejected = io.count_rows(self._rejects_dir(out_dir))
        rows_in = io.count_rows(upstream_dir) if upstream_dir else rows_out + rejected
        res = StageResult(stage.name, str(out_dir), fp, status, rows_in, rows_out, rejected, seconds=seconds,
                          extra=extra)
        if stage.kind == "sink":
            res.rows_out = int(extra.get("rows", 0))
            return res
        if stage.output_key:
            t = io.read_columns(out_dir, stage.output_key).to_pandas()
            dup = int(t.duplicated().sum())
            if dup:
                raise CountMismatch(f"{stage.name}: {dup} duplicate rows by {list(stage.output_key)} in {out_dir}")
        if stage.tallies:
            t = io.read_columns(out_dir, stage.tallies).to_pandas()
            res.extra["tallies"] = {c: int(t[c].fillna(False).astype(bool).sum()) for c in stage.tallies if c in t}
        if C.KEPT in stage.adds:
            t = io.read_columns(out_dir, [C.KEPT, C.DROP_REASON]).to_pandas()
            res.kept = int(t[C.KEPT].sum())
            res.dropped = {str(k): int(v) for k, v in t.loc[~t[C.KEPT], C.DROP_REASON].value_counts().items()}
            if res.kept + sum(res.dropped.values()) + rejected != rows_in:
                raise CountMismatch(f"{stage.name}: {rows_in} rows in != {res.kept} kept + "
                                    f"{sum(res.dropped.values())} dropped + {rejected} rejected")
        if stage.kind == "map":
            accepted = rows_in - rejected  # a rejected input leaves one row, with its reason, in rejects/
            per_input = stage.rows_per_input(scfg)
            if per_input is None:  # a varying fan-out: every accepted input must have written rows
                written = len(io.read_columns(out_dir, stage.input_key).to_pandas().drop_duplicates())
                if written != accepted:
                    raise CountMismatch(f"{stage.name}: {rows_in} rows in != {written} written + {rejected} rejected")
            elif rows_out != per_input * accepted:
                raise CountMismatch(f"{stage.name}: expected {per_input} x ({rows_in} in - {rejected} rejected) = "
                                    f"{per_input * accepted} rows out, found {rows_out}")
        return res

    def _write_stats(self, results: list[StageResult]) -> None:
        stats = {"run_dir": str(self.run_dir), "stages": [r.__dict__ for r in results]}
        io.write_text_atomic(self.run_dir / "stats.json", json.dumps(stats, indent=1, default=str))


class _StageUDF:
    """Adapts a stage to Ray: Arrow in, plain dict batch to the stage, Arrow out."""

    def __init__(self, stage: type[Stage], cfg, prepared: dict) -> None:
        self.stage = stage(cfg, **prepared)

    def __call__(self, table):
        return io.to_arrow(self.stage(io.from_arrow(table)))


def _input_rows(block, input_key: tuple[str, ...]) -> int:
    """How many input rows a block of stage output covers: its distinct input keys (rows, for a stage without)."""
    if not input_key:
        return block.num_rows
    return block.select(list(input_key)).group_by(list(input_key)).aggregate([]).num_rows


def _read_slices(items):
    """Reads the upstream rows that work items name (a row range of a part file, or explicit rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for item in map(json.loads, items["slice"].to_pylist()):
        table, rows = pq.read_table(item["path"]), item["rows"]
        tables.append(table.slice(rows[0], rows[1] - rows[0]) if item["range"] else table.take(pa.array(rows, pa.int64())))
    return pa.concat_tables(tables, promote_options="default")


def run(cfg: RunConfig, console=None) -> RunResult:
    """Run a config end to end and return what each stage did."""
    return Runner(cfg, console=console).run()

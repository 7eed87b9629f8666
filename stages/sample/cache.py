"""The generation cache, and what sampling cost.

A completion is a deterministic function of (backend, model weights, prompt text, sampling parameters, row seed):
the row seed comes from ``row_seed(seed, problem_id, sample_idx)``, so a completion does not depend on batching,
workers or how many samples were asked for. The cache stores completions under a hash of exactly those inputs, so a
hit returns what generating would have returned. Raising ``k`` from 4 to 8 therefore generates only indices 4-7, while
changing the temperature (or the model, the prompt, the backend) misses and samples afresh.

Storage is one sqlite database (``generations.sqlite`` in ``cache_dir``) in WAL mode: several sampling workers on
one machine read and write it at once; a busy database is waited for and retried, never an error. sqlite's WAL needs
every writer on the same machine, so on a multi-node cluster give each node a node-local ``cache_dir`` (or one shared
by the processes of a single node). Failed generations (``finish_reason == "error"``) are never cached: a retry may
succeed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DB_NAME = "generations.sqlite"
# Bump when the meaning of a stored completion changes (e.g. how stop strings are applied), so old entries miss.
KEY_VERSION = 1
_BUSY_RETRIES = 20


def default_cache_dir() -> Path:
    """``$LESSMORE_CACHE/generations``, else ``~/.cache/lessmore/generations`` (set ``cache_dir`` to this to opt in)."""
    root = os.environ.get("LESSMORE_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "lessmore") / "generations"


def sampling_namespace(
    *,
    backend: str,
    model_fingerprint: str,
    temperature: float,
    top_p: float,
    max_tokens: int,
    stop: Sequence[str],
    dtype: str,
    extra: Any = None,
) -> str:
    """The part of a cache key shared by every completion of one sampling setup (everything but prompt and seed)."""
    from pipeline.io import digest

    # The same bytes as ever (a JSON list of these parts, full sha256), so completions cached before stay found.
    return digest(KEY_VERSION, backend, model_fingerprint, float(temperature), float(top_p), int(max_tokens),
                  list(stop), dtype, extra, length=64)


def generation_key(namespace: str, prompt: str, seed: int, sample_idx: int) -> str:
    """The content address of one completion: (sampling namespace, prompt text, row seed, sample index)."""
    h = hashlib.sha256(namespace.encode())
    h.update(b"\0")
    h.update(prompt.encode())
    h.update(f"\0{int(seed)}\0{int(sample_idx)}".encode())
    return h.hexdigest()


class GenerationCache:
    """A content-addressed store of completions, safe for several processes on one machine.

    ``get_many(keys) -> {key: Generation}`` returns the hits; ``put_many([(key, Generation), ...])`` stores new
    completions (first writer wins: a key always maps to the same completion). The connection opens lazily and
    reopens after a fork, so an instance can be handed to worker processes.
    """

    def __init__(self, directory: str | os.PathLike, busy_timeout_s: float = 30.0) -> None:
        self.directory = Path(directory).expanduser()
        self.path = self.directory / DB_NAME
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    # -- connection ------------------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self.directory.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)

        def setup() -> None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            conn.execute(
                "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                "finish_reason TEXT NOT NULL, num_prompt_tokens INTEGER NOT NULL, "
                "num_completion_tokens INTEGER NOT NULL, created REAL NOT NULL) WITHOUT ROWID"
            )

        _retry_busy(setup)
        self._conn, self._pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        """Close this process's connection (a later call reopens it)."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "busy_timeout_s": self.busy_timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["busy_timeout_s"])

    # -- reads and writes ------------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The cached completions among ``keys``, as ``Generation`` objects keyed by cache key."""
        from stages.sample.backend import Generation

        conn = self._connection()
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # stay below sqlite's bound-parameter limit
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            query = ("SELECT key, text, finish_reason, num_prompt_tokens, num_completion_tokens "
                     f"FROM generations WHERE key IN ({marks})")
            for key, text, finish, n_prompt, n_completion in _retry_busy(lambda: conn.execute(query, chunk).fetchall()):
                found[key] = Generation(text, finish, n_prompt, n_completion)
        return found

    def put_many(self, items: Sequence[tuple[str, Any]]) -> int:
        """Store completions; errors are skipped. Returns how many rows were offered for storage."""
        rows = [
            (key, g.text, g.finish_reason, int(g.num_prompt_tokens), int(g.num_completion_tokens), time.time())
            for key, g in items
            if g.finish_reason != "error"
        ]
        if not rows:
            return 0
        conn = self._connection()

        def write() -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        _retry_busy(write)
        return len(rows)

    def __len__(self) -> int:
        conn = self._connection()
        return int(_retry_busy(lambda: conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0]))


def _retry_busy(fn: Callable[[], Any]) -> Any:
    """Run ``fn``, retrying with jittered backoff while another process holds the database lock."""
    for attempt in range(_BUSY_RETRIES):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            message = str(exc).lower()
            if ("locked" not in message and "busy" not in message) or attempt == _BUSY_RETRIES - 1:
                raise
            time.sleep(min(2.0, 0.01 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class SamplingCache:
    """The cache as the sample stage uses it: one sampling setup (namespace), lookups before generating.

    ``hits`` and ``misses`` count completions served from the cache and generated since this object was made.
    """

    def __init__(self, cache: GenerationCache, namespace: str) -> None:
        self.cache = cache
        self.namespace = namespace
        self.hits = 0
        self.misses = 0

    def generate(
        self,
        backend: Any,
        prompts: list[str],
        seeds: list[list[int]],
        sample_ids: list[list[int]],
    ) -> list[list[Any]]:
        """Like ``backend.generate(prompts, seeds)``, but only the (prompt, sample) pairs the cache lacks are generated.

        ``seeds[i][j]`` and ``sample_ids[i][j]`` describe the j-th wanted completion of ``prompts[i]``.
        """
        keys = [[generation_key(self.namespace, p, s, j) for s, j in zip(seeds[i], sample_ids[i])]
                for i, p in enumerate(prompts)]
        found = self.cache.get_many([k for row in keys for k in row])
        missing_prompts, missing_seeds, where = [], [], []
        for i, row in enumerate(keys):
            todo = [(j, seeds[i][j]) for j, k in enumerate(row) if k not in found]
            if todo:
                missing_prompts.append(prompts[i])
                missing_seeds.append([s for _, s in todo])
                where.append((i, [j for j, _ in todo]))
        fresh = backend.generate(missing_prompts, missing_seeds) if missing_prompts else []
        new_items = []
        results = [[replace(found[k], cached=True) if k in found else None for k in row] for row in keys]
        for (i, positions), gens in zip(where, fresh):
            for j, g in zip(positions, gens):
                results[i][j] = g
                new_items.append((keys[i][j], g))
        self.cache.put_many(new_items)
        self.misses += len(new_items)
        self.hits += sum(len(row) for row in keys) - len(new_items)
        log.debug("generation cache: %d hits, %d generated", self.hits, self.misses)
        return results


def open_sampling_cache(cfg: Any, backend: str, model_path: str, model_fp: str | None = None) -> SamplingCache | None:
    """The sample stage's cache for this config and model, or None when ``cfg.cache_dir`` is unset (caching off).
    ``model_fp``: the model's fingerprint when the caller has it (a served model's always; default: computed from
    ``model_path``)."""
    if not getattr(cfg, "cache_dir", None):
        return None
    if model_fp is None:
        from pipeline.models import model_fingerprint

        model_fp = model_fingerprint(model_path)
    namespace = sampling_namespace(
        backend=backend, model_fingerprint=model_fp, temperature=cfg.temperature,
        top_p=cfg.top_p, max_tokens=cfg.max_tokens, stop=cfg.stop, dtype=cfg.dtype,
        extra=engine_settings(cfg, backend),
    )
    return SamplingCache(GenerationCache(cfg.cache_dir), namespace)


def engine_settings(cfg: Any, backend: str) -> dict[str, Any]:
    """The settings besides the sampling parameters that change what a backend generates, for the cache key: the
    GGUF file, and for vllm the engine's arguments and its tensor-parallel degree (sharding changes the arithmetic).
    The hf backend's entry is what it always was, so its cached completions stay found."""
    extra: dict[str, Any] = {"gguf_file": cfg.gguf_file}
    if backend == "vllm":
        extra.update(tensor_parallel_size=int(cfg.tensor_parallel_size), engine_kwargs=dict(cfg.engine_kwargs))
    return extra


# -- cost accounting -----------------------------------------------------------------------------------------------

def sampling_costs(
    sample_dir: str | os.PathLike,
    seconds: float,
    num_gpus: float = 0.0,
    workers: int = 1,
    kept_rows: int | None = None,
) -> dict[str, Any]:
    """What the sample stage cost, from its output columns (``num_prompt_tokens``, ``num_completion_tokens``).

    Args:
        sample_dir: the sample stage's output directory (parquet parts).
        seconds: the stage's wall time.
        num_gpus: GPUs reserved per sampling worker (``resources.num_gpus``).
        workers: sampling workers (``resources.concurrency``).
        kept_rows: training rows the curate stage kept, for the per-kept-row figures (None: not known).

    Returns:
        A JSON-able dict: rows, prompt/completion/total tokens, wall seconds, completion tokens per second,
        GPU-seconds reserved (``seconds * num_gpus * workers``; 0 without GPUs), error rows, and the same
        costs divided by ``kept_rows`` when it is given.
    """
    from pipeline import columns as C
    from pipeline import io

    table = io.read_columns(sample_dir, [C.NUM_PROMPT_TOKENS, C.NUM_COMPLETION_TOKENS, C.FINISH_REASON])
    prompt_tokens = sum(v or 0 for v in table[C.NUM_PROMPT_TOKENS].to_pylist()) if table.num_rows else 0
    completion_tokens = sum(v or 0 for v in table[C.NUM_COMPLETION_TOKENS].to_pylist()) if table.num_rows else 0
    errors = table[C.FINISH_REASON].to_pylist().count("error") if table.num_rows else 0
    gpu_seconds = float(seconds) * float(num_gpus) * int(workers)
    costs: dict[str, Any] = {
        "rows": table.num_rows,
        "error_rows": errors,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "wall_seconds": round(float(seconds), 3),
        "completion_tokens_per_second": round(completion_tokens / seconds, 1) if seconds > 0 else None,
        "gpu_seconds": round(gpu_seconds, 3),
    }
    if kept_rows:
        costs["per_kept_row"] = {
            "total_tokens": round((prompt_tokens + completion_tokens) / kept_rows, 1),
            "completion_tokens": round(completion_tokens / kept_rows, 1),
            "wall_seconds": round(float(seconds) / kept_rows, 4),
            "gpu_seconds": round(gpu_seconds / kept_rows, 4),
        }
    return costs


def run_costs(stage_results: Sequence[Any], stage_configs: dict[str, Any]) -> dict[str, Any]:
    """Cost per stage and per kept training row, for ``stats.json``.

    Args:
        stage_results: the runner's per-stage results (objects or dicts with ``name``, ``directory``, ``seconds``,
            ``status`` and, for curate, ``kept``).
        stage_configs: stage name -> stage config (for ``resources.num_gpus`` and ``resources.concurrency``).

    Returns:
        ``{"stages": {name: {wall_seconds, gpu_seconds[, tokens...]}}, "total": {...}, "per_kept_row": {...}}``.
        Skipped stages count 0 seconds (they cost nothing in this run); the sample stage adds token counts from its
        output columns, whether it ran now or earlier.
    """
    results = [r if isinstance(r, dict) else r.__dict__ for r in stage_results]
    kept = next((r.get("kept") for r in results if r.get("kept") is not None), None)
    stages: dict[str, Any] = {}
    for r in results:
        cfg = stage_configs.get(r["name"])
        resources = getattr(cfg, "resources", None)
        gpus = float(getattr(resources, "num_gpus", 0.0) or 0.0)
        workers = int(getattr(resources, "concurrency", 1) or 1)
        seconds = float(r.get("seconds") or 0.0)
        if r["name"] == "sample":
            entry = sampling_costs(r["directory"], seconds, gpus, workers)
        else:
            entry = {"wall_seconds": round(seconds, 3), "gpu_seconds": round(seconds * gpus * workers, 3)}
        entry["status"] = r.get("status")
        stages[r["name"]] = entry
    total = {
        "wall_seconds": round(sum(s["wall_seconds"] for s in stages.values()), 3),
        "gpu_seconds": round(sum(s["gpu_seconds"] for s in stages.values()), 3),
        "total_tokens": sum(s.get("total_tokens", 0) for s in stages.values()),
        "completion_tokens": sum(s.get("completion_tokens", 0) for s in stages.values()),
    }
    costs: dict[str, Any] = {"stages": stages, "total": total, "kept_rows": kept}
    if kept:
        costs["per_kept_row"] = {k: round(v / kept, 4) for k, v in total.items()}
    return costs

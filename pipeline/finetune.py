"""finetune: supervised fine-tuning of a student on curated prompt/completion rows with TRL's SFTTrainer.

The loss covers the completion only. Rows are tokenized here (prompt ids + completion ids + the eos id) and laid out
in training order by the budget, so the trainer reads them sequentially:

- ``budget: steps`` (compute-matched): exactly ``steps`` optimizer steps of ``batch_size`` rows, whatever the size of
  the set; a small set is repeated (a fresh shuffle per pass), a large one is cut.
- ``budget: epochs``: ``ceil(epochs * rows / batch_size)`` optimizer steps over fresh shuffles of the set.

One worker trains in this process. More than one worker runs the same training code inside Ray Train's
``TorchTrainer`` (gloo on CPU, nccl on GPU); the global batch stays ``batch_size``, so a step means the same thing.
This module imports only pydantic at module level: the config model is part of the run config.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.models import MODEL_FIELD
from stages.base import Frozen

log = logging.getLogger(__name__)

# SFTConfig fields that this module sets from the finetune block, with what to set instead.
OWNED_SFT_FIELDS: dict[str, str] = {
    "output_dir": "the run directory decides where the model goes",
    "max_steps": "set finetune.budget and finetune.steps (or finetune.epochs)",
    "num_train_epochs": "set finetune.budget: epochs and finetune.epochs",
    "per_device_train_batch_size": "set finetune.micro_batch_size",
    "gradient_accumulation_steps": "it follows from finetune.batch_size / (micro_batch_size x num_workers)",
    "seed": "set finetune.seed (default: the run seed)",
    "data_seed": "set finetune.seed (default: the run seed)",
    "train_sampling_strategy": "rows are laid out in training order by the budget and read sequentially",
}

# TRL defaults that cost time or accuracy on small models (see the toy-world measurements); `sft:` overrides them.
SFT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,  # a float below 1 is a fraction of the steps (warmup_ratio is gone in TRL 1.x)
    "activation_checkpointing": False,  # TRL's default (gradient_checkpointing=True) only slows small models
    "bf16": False,
    # Padding-free micro-batches: no padding, a block-diagonal attention from position_ids. Batches stay mixed in
    # length; length-grouped batches ruin learning.
    "padding_free": True,
    "max_length": None,
    "packing": False,
    "completion_only_loss": True,  # pre-tokenized rows carry completion_mask; TRL needs this set explicitly for them
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}


class FinetuneError(RuntimeError):
    """Fine-tuning cannot run as configured; the message says what to change."""


@functools.lru_cache(maxsize=1)
def sft_field_names() -> frozenset[str]:
    """Names of the fields of ``trl.SFTConfig`` (imports trl, so only called when ``sft:`` has keys)."""
    import dataclasses

    from trl import SFTConfig

    return frozenset(f.name for f in dataclasses.fields(SFTConfig) if f.init)


def check_sft_fields(sft: dict[str, Any]) -> None:
    """Raise ValueError naming every key of ``sft`` that is not an SFTConfig field or that the finetune block sets."""
    problems = []
    for key in sft:
        if key in OWNED_SFT_FIELDS:
            problems.append(f"sft.{key} cannot be set here: {OWNED_SFT_FIELDS[key]}")
    rest = [k for k in sft if k not in OWNED_SFT_FIELDS]
    if rest:
        valid = sft_field_names()
        for key in rest:
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(f"sft.{key} is not a field of trl.SFTConfig{hint}")
    if problems:
        raise ValueError("; ".join(problems))


class LoraSettings(Frozen):
    """LoRA adapters (peft). The saved model has the adapters merged in, so it loads like any other model."""

    r: int = Field(16, ge=1, description="Rank of the adapter matrices.")
    alpha: float = Field(32.0, gt=0, description="Scale of the adapter update (lora_alpha).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | tuple[str, ...] = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or a list of module names."
    )


class FinetuneConfig(Frozen):
    """Fine-tune a student on the curated rows. Fields of trl.SFTConfig pass through under ``sft``."""

    student: str = Field(
        "toy:student", description="Model to fine-tune: toy:NAME, a local model directory, or a hub id "
        "(org/name or org/name@revision; pinned to its commit before the run starts).", json_schema_extra=MODEL_FIELD,
    )
    budget: Literal["steps", "epochs"] = Field(
        "steps",
        description="steps: exactly `steps` optimizer steps whatever the set size (compute-matched); "
        "epochs: `epochs` passes over the set.",
    )
    steps: int = Field(150, ge=1, description="Optimizer steps when budget is 'steps'.")
    epochs: float = Field(1.0, gt=0, description="Passes over the set when budget is 'epochs' (fractions allowed).")
    batch_size: int = Field(32, ge=1, description="Global batch: rows per optimizer step, over all workers.")
    micro_batch_size: int = Field(
        16, ge=1, description="Rows per forward pass on one worker; micro_batch_size x num_workers must divide batch_size."
    )
    num_workers: int = Field(1, ge=1, description="Training workers. More than 1 runs Ray Train's TorchTrainer.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per Ray Train worker.")
    use_gpu: bool = Field(False, description="Ray Train workers each take a GPU (nccl); otherwise CPU with gloo.")
    threads: int | None = Field(None, ge=1, description="torch threads of single-process training (None: torch's default).")
    seed: int | None = Field(None, description="Seed of weights init, data order and dropout (default: the run seed).")
    lora: LoraSettings | None = Field(None, description="Train LoRA adapters instead of all weights (None: full).")
    token_metrics: bool = Field(
        True, description="TRL's per-token entropy and top-1 accuracy in the training logs (SFTTrainer's fused LM "
        "head). false: the loss is the model's own cross-entropy over the same completion tokens and the logs have "
        "the loss only; about 18% less time per step on a small model, which is what a sweep of many trials pays.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Dtype the student is loaded in.")
    gguf_file: str | None = Field(None, description="GGUF file inside the student directory, if it ships GGUF.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the student. Off unless you trust it.")
    sft: dict[str, Any] = Field(
        default_factory=dict,
        description="trl.SFTConfig fields (e.g. learning_rate, lr_scheduler_type, warmup_steps, weight_decay). "
        "Unknown names are errors. Defaults here: lr 1e-3, cosine, 10% warmup, padding-free, completion-only loss.",
    )

    @field_validator("sft")
    @classmethod
    def _sft_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:
            check_sft_fields(value)
        return value

    @model_validator(mode="after")
    def _batches(self) -> "FinetuneConfig":
        per_step = self.micro_batch_size * self.num_workers
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size x num_workers "
                f"({self.micro_batch_size} x {self.num_workers} = {per_step}); change one of them"
            )
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        """Micro-batches each worker accumulates per optimizer step."""
        return self.batch_size // (self.micro_batch_size * self.num_workers)


def planned_steps(cfg: FinetuneConfig, n_rows: int) -> int:
    """Optimizer steps the budget gives for a set of ``n_rows`` rows."""
    if cfg.budget == "steps":
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * n_rows / cfg.batch_size))


def training_order(n_rows: int, cfg: FinetuneConfig, seed: int) -> list[int]:
    """Row indices in training order: ``planned_steps x batch_size`` of them, one fresh shuffle per pass."""
    import numpy as np

    if n_rows <= 0:
        raise FinetuneError("finetune: the training set is empty; the curate stage kept no rows (relax its rule)")
    total = planned_steps(cfg, n_rows) * cfg.batch_size
    rng = np.random.default_rng([seed, 0x5F7])
    order: list[int] = []
    while len(order) < total:
        order.extend(rng.permutation(n_rows)[: total - len(order)].tolist())
    return order


def prompt_texts(problems: list[str], tokenizer: Any, prompt_cfg: Any | None = None) -> list[str]:
    """Prompts exactly as the sample stage writes them (template, chat template when the tokenizer has one)."""
    from stages.sample import SampleSettings
    from stages.sample.backend import render_prompt

    cfg = prompt_cfg or SampleSettings()
    return [render_prompt(cfg, tokenizer, p) for p in problems]


def _rows_of(train_rows: Any) -> tuple[list[str], list[str]]:
    """(problems, completions) from a datasets.Dataset or a list of dicts, with clear errors for missing columns."""
    if isinstance(train_rows, list):
        columns = set(train_rows[0]) if train_rows else {"prompt", "completion"}
        get = lambda name: [row.get(name) for row in train_rows]  # noqa: E731
    else:
        columns = set(train_rows.column_names)
        get = lambda name: list(train_rows[name])  # noqa: E731
    # An export's `prompt` is already rendered (or chat messages); the problem is re-rendered with the student's
    # tokenizer, so `problem` wins where a row has both.
    prompt_col = "problem" if "problem" in columns else "prompt" if "prompt" in columns else None
    if prompt_col is None or "completion" not in columns:
        raise FinetuneError(
            f"finetune: training rows need 'prompt' (or 'problem') and 'completion' columns; got {sorted(columns)}"
        )
    problems, completions = get(prompt_col), get("completion")
    bad = [i for i, (p, c) in enumerate(zip(problems, completions)) if not isinstance(p, str) or not isinstance(c, str)]
    if bad:
        raise FinetuneError(f"finetune: {len(bad)} rows have a missing prompt or completion (first: row {bad[0]})")
    return problems, completions


def tokenize_rows(
    problems: list[str], completions: list[str], tokenizer: Any, prompt_cfg: Any | None = None,
    max_length: int | None = None,
) -> tuple[dict[str, list[list[int]]], int]:
    """``input_ids`` = prompt + completion + eos id, ``completion_mask`` marks the completion and eos.

    The eos goes in by id: a text "<eos>" could be split by a character-level tokenizer. Returns the columns and the
    number of rows cut to ``max_length`` (kept from the start).
    """
    if tokenizer.eos_token_id is None:
        raise FinetuneError("finetune: the student's tokenizer has no eos token; the model could not learn to stop")
    prompts = tokenizer(prompt_texts(problems, tokenizer, prompt_cfg), add_special_tokens=False)["input_ids"]
    answers = tokenizer(completions, add_special_tokens=False)["input_ids"]
    input_ids, completion_mask, truncated = [], [], 0
    for prompt, answer in zip(prompts, answers, strict=True):
        ids = prompt + answer + [tokenizer.eos_token_id]
        mask = [0] * len(prompt) + [1] * (len(answer) + 1)
        if max_length is not None and len(ids) > max_length:
            ids, mask, truncated = ids[:max_length], mask[:max_length], truncated + 1
        input_ids.append(ids)
        completion_mask.append(mask)
    return {"input_ids": input_ids, "completion_mask": completion_mask}, truncated


def _sft_kwargs(cfg: FinetuneConfig, steps: int, seed: int, output_dir: str) -> dict[str, Any]:
    import torch

    kwargs = {**SFT_DEFAULTS, "use_cpu": not (cfg.use_gpu or torch.cuda.is_available()),
              "logging_steps": max(1, steps // 20)}
    if "gradient_checkpointing" in cfg.sft:  # the deprecated name, when given, decides
        kwargs.pop("activation_checkpointing")
    kwargs.update(cfg.sft)
    kwargs.update(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, seed=seed, data_seed=seed,
        train_sampling_strategy="sequential",
    )
    kwargs["max_length"] = None  # rows are already cut to sft.max_length by tokenize_rows
    return kwargs


def _loss_only_trainer() -> type:
    """``SFTTrainer`` whose loss is transformers' ``Trainer.compute_loss``: the model's own cross-entropy over the
    completion tokens, normalised by the tokens of the whole optimizer step as TRL's is, without the fused head's
    per-token entropy and top-1 accuracy (``finetune.token_metrics: false``)."""
    from transformers import Trainer
    from trl import SFTTrainer

    class LossOnlySFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return LossOnlySFTTrainer


def train_once(job: dict[str, Any], save_dir: str | None, wrap_trainer: Any = None) -> dict[str, Any]:
    """Build the SFTTrainer for ``job`` and train; save the (merged) model into ``save_dir`` when given.

    The same function runs in this process and inside every Ray Train worker. ``job`` holds only plain data:
    ``model_path``, ``columns`` (input_ids, completion_mask), ``sft_kwargs``, ``lora``, ``seed``, ``dtype``,
    ``gguf_file``, ``trust_remote_code``, ``threads``.
    """
    import datasets
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from pipeline.models import load_args

    # Per-trial bars (tokenizing, loading, saving) would drown a sweep's output; the stats file has the figures.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    t0 = time.perf_counter()
    set_seed(job["seed"])
    extra = {"gguf_file": job["gguf_file"]} if job.get("gguf_file") else {}
    name, revision = load_args(job["model_path"])  # a hub id comes pinned to the commit the driver resolved
    tokenizer = AutoTokenizer.from_pretrained(
        name, revision=revision, trust_remote_code=job["trust_remote_code"], **extra
    )
    model = AutoModelForCausalLM.from_pretrained(
        name, revision=revision, dtype=getattr(torch, job["dtype"]), trust_remote_code=job["trust_remote_code"],
        **extra,
    )
    try:
        args = SFTConfig(**job["sft_kwargs"])
    except (TypeError, ValueError) as e:
        raise FinetuneError(f"finetune.sft: trl.SFTConfig rejected the settings: {e}") from None
    peft_config = None
    if job.get("lora"):
        from peft import LoraConfig

        lora = job["lora"]
        target = lora["target_modules"]
        peft_config = LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], task_type="CAUSAL_LM",
            target_modules=target if isinstance(target, str) else list(target),
        )
    trainer_class = SFTTrainer if job.get("token_metrics", True) else _loss_only_trainer()
    trainer = trainer_class(
        model=model, args=args, train_dataset=datasets.Dataset.from_dict(job["columns"]), processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.remove_callback(PrinterCallback)
    if wrap_trainer is not None:
        trainer = wrap_trainer(trainer)
    setup_s = time.perf_counter() - t0
    result = trainer.train()
    train_s = time.perf_counter() - t0 - setup_s
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    stats = {
        "optimizer_steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0][1] if losses else None,
        "last_logged_loss": losses[-1][1] if losses else None,
        "loss_curve": losses,
        "setup_seconds": round(setup_s, 2),
        "train_seconds": round(train_s, 2),
    }
    if save_dir is not None:
        trained = trainer.model
        if peft_config is not None:
            trained = trained.merge_and_unload()
        trained.generation_config.pad_token_id = tokenizer.pad_token_id
        if trained.generation_config.eos_token_id is None:
            trained.generation_config.eos_token_id = tokenizer.eos_token_id
        trained.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
    return stats


def failure_line(error: BaseException) -> str:
    """One line for a training failure: the first worker's own exception when Ray Train reports worker failures
    (``TrainingFailedError``), the controller's or the error itself otherwise."""
    failures = getattr(error, "worker_failures", None)
    prefix = ""
    if failures:
        rank, error = sorted(failures.items(), key=lambda kv: kv[0])[0]
        prefix = f"worker {rank}: "
    error = getattr(error, "controller_failure", None) or error
    error = getattr(error, "cause", None) or error  # a RayTaskError wraps the worker's exception
    if isinstance(error, FinetuneError):
        prefix, text = "", str(error)
    else:
        text = f"{type(error).__name__}: {str(error).strip()}" if str(error).strip() else type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return prefix + (lines[0] if lines else type(error).__name__)


def _ray_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: the same training; rank 0 hands the saved model back as the checkpoint."""
    import tempfile

    import ray.train
    from ray.train.huggingface.transformers import prepare_trainer

    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as tmp:
        stats = train_once(job, tmp if rank == 0 else None, wrap_trainer=prepare_trainer)
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        scalar = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and v is not None}
        ray.train.report(scalar, checkpoint=checkpoint)
    return stats


def _train_with_ray(job: dict[str, Any], cfg: FinetuneConfig, out_dir: Path, model_dir: Path) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.cluster import connect

    connect()
    storage = out_dir / "ray"
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(name="sft", storage_path=str(storage)),
    )
    result = trainer.fit()  # Train V2 raises TrainingFailedError; older versions return it in result.error
    if result.error is not None or result.checkpoint is None:
        what = failure_line(result.error) if result.error is not None else "no checkpoint came back"
        raise FinetuneError(f"finetune: Ray Train run failed: {what}")
    result.checkpoint.to_directory(str(model_dir))
    shutil.rmtree(storage, ignore_errors=True)
    return dict(result.return_value or result.metrics or {})


def finetune(
    cfg: FinetuneConfig,
    train_rows: Any,
    out_dir: str | os.PathLike,
    seed: int | None = None,
    prompt_cfg: Any | None = None,
) -> Path:
    """Fine-tune ``cfg.student`` on ``train_rows`` and return the saved model directory ``out_dir/model``.

    Args:
        cfg: the finetune block.
        train_rows: a ``datasets.Dataset`` or a list of dicts with ``prompt`` (or ``problem``) and ``completion``.
            ``prompt`` is the problem text; the prompt template and chat template come from ``prompt_cfg``.
        out_dir: directory for ``model/`` (save_pretrained + tokenizer) and ``train_stats.json``.
        seed: used when ``cfg.seed`` is None (default 0).
        prompt_cfg: the sample stage's config (a ``stages.sample.SampleConfig``), so training prompts match the
            prompts the model is sampled with; default: ``SampleConfig()``.
    """
    from transformers import AutoTokenizer

    from pipeline.models import load_args, resolve_model

    started = time.perf_counter()
    seed = cfg.seed if cfg.seed is not None else (seed or 0)
    out = Path(out_dir)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model(cfg.student)
    problems, completions = _rows_of(train_rows)
    order = training_order(len(problems), cfg, seed)
    steps = planned_steps(cfg, len(problems))
    extra = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    student_name, revision = load_args(model_path)  # a hub id comes pinned to the commit the driver resolved
    tokenizer = AutoTokenizer.from_pretrained(student_name, revision=revision,
                                              trust_remote_code=cfg.trust_remote_code, **extra)
    tokenize_started = time.perf_counter()
    columns, truncated = tokenize_rows(problems, completions, tokenizer, prompt_cfg, cfg.sft.get("max_length"))
    laid_out = {name: [values[i] for i in order] for name, values in columns.items()}
    tokenize_seconds = time.perf_counter() - tokenize_started
    job = {
        "model_path": model_path, "columns": laid_out, "seed": seed, "dtype": cfg.dtype, "gguf_file": cfg.gguf_file,
        "trust_remote_code": cfg.trust_remote_code, "threads": cfg.threads,
        "lora": cfg.lora.model_dump(mode="json") if cfg.lora else None, "token_metrics": cfg.token_metrics,
        "sft_kwargs": _sft_kwargs(cfg, steps, seed, str(out / "trainer")),
    }
    try:
        if cfg.num_workers > 1:
            stats = _train_with_ray(job, cfg, out, model_dir)
        else:
            stats = train_once(job, str(model_dir))
    except FinetuneError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the user; the traceback with -v
        log.debug("finetune: training failed", exc_info=True)
        raise FinetuneError(f"finetune: training failed: {failure_line(e)} (rerun with `lessmore -v` for the "
                            f"traceback)") from e
    shutil.rmtree(out / "trainer", ignore_errors=True)
    stats.update(
        student=cfg.student, student_path=model_path, rows=len(problems), rows_truncated=truncated,
        planned_steps=steps, examples_seen=steps * cfg.batch_size, epochs_seen=steps * cfg.batch_size / len(problems),
        num_workers=cfg.num_workers, seed=seed, wall_seconds=round(time.perf_counter() - started, 2),
        tokenize_seconds=round(tokenize_seconds, 3),
    )
    (out / "train_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return model_dir


def read_train_stats(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``train_stats.json`` that ``finetune`` wrote into ``out_dir``."""
    return json.loads((Path(out_dir) / "train_stats.json").read_text())

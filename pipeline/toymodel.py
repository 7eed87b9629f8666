"""The embedded default generator: a tiny Llama the project trains on the toy world on first use, cached on disk.

`ensure_toy_model("strong")` returns a directory that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load, exactly like a downloaded hub model. The first call trains the model with TRL
(a few minutes on 2 CPU cores), measures its accuracy per level on held-out problems, and moves the finished
directory into the cache in one rename; later calls return it at once. The cache root is `$LESSMORE_CACHE`, else
`~/.cache/lessmore`; models live under `<root>/toy/<name>-<spec fingerprint>/`, so changing a spec builds a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.toyworld import ALL_LEVELS, MAX_LEVEL, MIN_LEVEL, build_tokenizer, draw_training_problems, make_problems

# Bump when the task, tokenizer or training recipe changes what a spec builds, so old cache entries are not reused.
BUILD_RECIPE_VERSION = 1
# Held-out evaluation problems come from this seed, one the training stream never uses, and the same for every spec
# so that specs are compared on the same problems.
EVAL_SEED = 1_000_003
_BOXED_INTEGER = re.compile(r"\\boxed\{(-?\d+)\}")


class ToyModelSpec(BaseModel):
    """How to build one toy model: the Llama's shape, the training run and the held-out evaluation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = Field(128, gt=0, description="Llama hidden size (embedding width).")
    num_layers: int = Field(2, gt=0, description="Number of transformer layers.")
    num_heads: int = Field(4, gt=0, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(512, gt=0, description="Width of the MLP inside each layer.")
    train_steps: int = Field(1000, gt=0, description="Optimizer steps. Training time grows linearly with it.")
    batch_size: int = Field(64, gt=0, description="Global batch size (examples per optimizer step).")
    micro_batch_size: int = Field(
        16, gt=0, description="Examples per forward pass (padding-free); must divide batch_size."
    )
    learning_rate: float = Field(3e-3, gt=0, description="Peak AdamW learning rate of the cosine schedule.")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Fraction of train_steps spent warming up.")
    train_levels: tuple[int, ...] = Field(ALL_LEVELS, description="Chain lengths (1-6) in the training data.")
    train_level_weights: tuple[float, ...] = Field(
        (0.30, 0.30, 0.20, 0.10, 0.05, 0.05),
        description="Share of each entry of train_levels in the training data (normalised).",
    )
    n_train: int | None = Field(
        None,
        gt=0,
        description="Training problems drawn (repeats allowed). None: train_steps x batch_size, one pass over fresh "
        "problems; fewer makes several reshuffled passes.",
    )
    seed: int = Field(0, description="Seed for weights, training problems and data order.")
    eval_problems_per_level: int = Field(
        100, gt=0, description="Held-out problems per level (1-6) for accuracy.json."
    )
    eval_samples: int = Field(8, gt=0, description="Samples per held-out problem at eval_temperature.")
    eval_temperature: float = Field(0.8, gt=0, description="Sampling temperature of the sampled accuracy.")

    @model_validator(mode="after")
    def _check_consistency(self) -> ToyModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}).")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must divide batch_size ({self.batch_size}).")
        if len(self.train_levels) != len(self.train_level_weights):
            raise ValueError(
                f"train_level_weights has {len(self.train_level_weights)} entries for {len(self.train_levels)} "
                "train_levels; give one weight per level."
            )
        if any(not MIN_LEVEL <= level <= MAX_LEVEL for level in self.train_levels):
            raise ValueError(f"train_levels must lie in {MIN_LEVEL}..{MAX_LEVEL}, got {self.train_levels}.")
        return self

    def fingerprint(self) -> str:
        """A short hash of the spec and the build recipe version; it names the cache directory."""
        payload = json.dumps({"recipe": BUILD_RECIPE_VERSION, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


TOY_MODELS: dict[str, ToyModelSpec] = {
    # The default generator: graded accuracy, most level-1 problems right and few level-6 ones.
    "strong": ToyModelSpec(),
    # A weaker generator for the generator-quality axis of sweeps: the same recipe, fewer steps. Not 600: arithmetic
    # appears abruptly around then, and two 600-step runs (1 and 2 threads) got 0.15 and 0.54 greedy at level 1.
    "weak": ToyModelSpec(train_steps=800),
    # The student that sweeps fine-tune: it never sees chains longer than 3, so levels 4-6 depend on curated data.
    # Level 3 gets the largest share because longer chains carry more arithmetic per step. 1,000 steps, like the strong
    # model: an 800-step student (greedy .43/.27/.26 on levels 1-3) lost accuracy under every SFT setting tried.
    "student": ToyModelSpec(train_steps=1000, train_levels=(1, 2, 3), train_level_weights=(0.3, 0.3, 0.4)),
    # The student of the fair toy world (instrument.md 3b): it has seen all six levels and is imperfect and graded
    # (greedy .89 at level 1 down to .46 at level 6), so the hard/easy contrast stays within a skill it has, and its
    # pass rate over 16 samples spreads enough to rank problems as an oracle. It is the strong model's spec (one
    # build serves both names): 800 steps (seed 1) gave greedy .21 .08 .03 .03 .02 .03, an arithmetic not yet
    # learned, whose pass rates are mostly 0 and rank nothing.
    "student_all_levels": ToyModelSpec(),
    # For tests: one-step problems only (the cheapest rows), about a third of the strong model's compute. Arithmetic
    # appears late in training (after ~25k examples), so a shorter run gets the format right and the sums wrong.
    "test": ToyModelSpec(
        train_steps=600,
        train_levels=(1,),
        train_level_weights=(1.0,),
        eval_problems_per_level=25,  # the accuracy table of a test model only needs to exist
        eval_samples=2,
    ),
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: `cache_dir` if given, else `$LESSMORE_CACHE`, else `~/.cache/lessmore`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("LESSMORE_CACHE"):
        return Path(os.environ["LESSMORE_CACHE"]).expanduser()
    return Path.home() / ".cache" / "lessmore"


def _resolve(name_or_spec: str | ToyModelSpec) -> tuple[str, ToyModelSpec]:
    if isinstance(name_or_spec, ToyModelSpec):
        named = [name for name, spec in TOY_MODELS.items() if spec == name_or_spec]
        return (named[0] if named else "custom"), name_or_spec
    if name_or_spec not in TOY_MODELS:
        raise ValueError(
            f"Unknown toy model {name_or_spec!r}; choose one of {sorted(TOY_MODELS)} or pass a ToyModelSpec."
        )
    return name_or_spec, TOY_MODELS[name_or_spec]


def _is_complete(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in ("config.json", "tokenizer.json", "spec.json", "accuracy.json"))


def toy_model_dir(name_or_spec: str | ToyModelSpec = "strong", cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `ensure_toy_model` keeps this model (whether or not it is built yet). Names with equal specs share one
    build, under the first such name in TOY_MODELS."""
    name, spec = _resolve(name_or_spec)
    name = next((n for n, s in TOY_MODELS.items() if s == spec), name)
    return cache_root(cache_dir) / "toy" / f"{name}-{spec.fingerprint()}"


def ensure_toy_model(
    name_or_spec: str | ToyModelSpec = "strong",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Returns the directory of a built toy model, building it first if the cache does not hold it yet.

    Args:
        name_or_spec: a key of TOY_MODELS ("strong", "weak", "student", "test") or a ToyModelSpec.
        cache_dir: cache root; defaults to `$LESSMORE_CACHE`, else `~/.cache/lessmore`.
        progress: show the training progress and print the per-level accuracy table after a build.

    Returns:
        A directory that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load. It also holds
        `spec.json` (the spec) and `accuracy.json` (held-out accuracy per level, greedy and sampled, and build times).

    The build happens in a temporary directory that is renamed into place once complete, under a file lock, so two
    processes never both build the same model and a crashed build is never used.
    """
    from filelock import FileLock, Timeout

    name, spec = _resolve(name_or_spec)
    final_dir = toy_model_dir(spec if name == "custom" else name, cache_dir)
    if _is_complete(final_dir):
        return final_dir
    lock_dir = final_dir.parent / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_dir / f"{final_dir.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _console(progress)(f"Another process is building toy model '{name}' into {final_dir}; waiting for it.")
        lock.acquire()
    try:
        if _is_complete(final_dir):  # another process finished it while this one waited
            return final_dir
        # Holding the lock, any leftover is from a build that died: never reuse it.
        for leftover in final_dir.parent.glob(f".building-{final_dir.name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        build_dir = final_dir.parent / f".building-{final_dir.name}-{os.getpid()}"
        try:
            _build(name, spec, build_dir, progress)
            os.replace(build_dir, final_dir)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
    finally:
        lock.release()
    return final_dir


def _tokenize_for_training(rows: list[dict], tokenizer: Any) -> dict[str, list]:
    """Pre-tokenizes prompt + completion + eos, with labels that put only the completion in the loss.

    Ready-made labels (-100 on the prompt) let TRL skip its own per-row label pass over the whole data set.
    """
    prompts = tokenizer([row["problem"] for row in rows], add_special_tokens=False)["input_ids"]
    completions = tokenizer([row["solution"] for row in rows], add_special_tokens=False)["input_ids"]
    input_ids, labels = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        completion = completion + [tokenizer.eos_token_id]  # by id: a char-level text pass could split "<eos>"
        input_ids.append(prompt + completion)
        labels.append([-100] * len(prompt) + completion)
    return {"input_ids": input_ids, "labels": labels}


def _training_rows(spec: ToyModelSpec) -> list[dict]:
    """Exactly train_steps x batch_size rows, in training order: n_train drawn problems, reshuffled per pass."""
    import random

    total = spec.train_steps * spec.batch_size
    drawn = draw_training_problems(spec.n_train or total, spec.train_levels, spec.train_level_weights, spec.seed)
    rng = random.Random(f"toymodel-order-{spec.seed}")
    rows: list[dict] = []
    while len(rows) < total:
        epoch = list(drawn)
        if rows:
            rng.shuffle(epoch)
        rows.extend(epoch[: total - len(rows)])
    return rows


def _new_model(spec: ToyModelSpec, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=256,  # level-6 problems with their solutions are under 90 tokens
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config._attn_implementation = "sdpa"  # handles padding-free batches (block-diagonal mask from position_ids)
    return LlamaForCausalLM(config)


def _train(spec: ToyModelSpec, tokenizer: Any, work_dir: Path, progress: bool) -> tuple[Any, dict]:
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(spec.seed)
    model = _new_model(spec, tokenizer)
    train_dataset = Dataset.from_dict(_tokenize_for_training(_training_rows(spec), tokenizer))
    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=spec.train_steps,
        per_device_train_batch_size=spec.micro_batch_size,
        gradient_accumulation_steps=spec.batch_size // spec.micro_batch_size,
        # Padding-free micro-batches cut padding; length-grouped batches would ruin learning, so order stays random.
        padding_free=True,
        max_length=None,
        packing=False,
        completion_only_loss=True,
        train_sampling_strategy="sequential",  # rows are already shuffled and laid out step by step
        learning_rate=spec.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=spec.warmup_fraction,
        # TRL defaults that cost time or accuracy on CPU.
        activation_checkpointing=False,
        bf16=False,
        use_cpu=True,
        seed=spec.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, spec.train_steps // 10),
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer)
    if not progress:
        trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    stats = {"train_loss": result.training_loss, "final_logged_loss": losses[-1] if losses else None}
    return trainer.model, stats


def _generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    temperature: float,
    num_samples: int,
    max_new_tokens: int,
    seed: int,
    rows_per_batch: int = 512,
) -> list[list[str]]:
    """Completions for each prompt (num_samples each; greedy when temperature is 0), in prompt order."""
    import torch

    batch_size = max(1, rows_per_batch // num_samples)  # ~512 sequences per generate call is fastest on CPU
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # a batch runs until its longest row ends
    completions: list[list[str]] = [[] for _ in prompts]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": None} if temperature else {
        "do_sample": False
    }
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt")
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for position, index in enumerate(indices):
                completions[index] = texts[position * num_samples : (position + 1) * num_samples]
    return completions


def _is_correct(completion: str, answer: str) -> bool:
    found = _BOXED_INTEGER.findall(completion)
    return bool(found) and found[-1] == answer


def _measure_accuracy(
    model: Any, tokenizer: Any, spec: ToyModelSpec, training_problems: set[str] | None = None
) -> dict:
    """Accuracy per level (1-6) on held-out problems: greedy, and the mean over samples at the spec's temperature."""
    problems = make_problems(spec.eval_problems_per_level * len(ALL_LEVELS), ALL_LEVELS, seed=EVAL_SEED)
    prompts = [row["problem"] for row in problems]
    greedy = _generate(model, tokenizer, prompts, temperature=0.0, num_samples=1, max_new_tokens=96, seed=EVAL_SEED)
    sampled = _generate(
        model,
        tokenizer,
        prompts,
        temperature=spec.eval_temperature,
        num_samples=spec.eval_samples,
        max_new_tokens=96,
        seed=EVAL_SEED,
    )
    report: dict[str, Any] = {"greedy": {}, "sampled": {}, "seen_in_training": {}}
    for level in ALL_LEVELS:
        at_level = [i for i, row in enumerate(problems) if row["level"] == level]
        report["greedy"][str(level)] = round(
            sum(_is_correct(greedy[i][0], problems[i]["answer"]) for i in at_level) / len(at_level), 4
        )
        hits = sum(_is_correct(text, problems[i]["answer"]) for i in at_level for text in sampled[i])
        report["sampled"][str(level)] = round(hits / (len(at_level) * spec.eval_samples), 4)
        if training_problems is not None:
            seen = sum(problems[i]["problem"] in training_problems for i in at_level)
            report["seen_in_training"][str(level)] = round(seen / len(at_level), 4)
    return report


@contextlib.contextmanager
def _build_environment(progress: bool):
    """Torch threads for the build, and (without progress) no progress bars; both restored afterwards."""
    import torch
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    threads_before = torch.get_num_threads()
    bars_before = (datasets_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    # On a busy machine OpenMP threads wait on each other and a 2-thread step runs several times slower than a
    # 1-thread step; on an idle one, all cores are faster (2 threads: 0.22 s/step for the test model, 1 thread:
    # 0.31 s). Busy means the cores are taken right now: the load average lags by a minute, so just after a
    # CPU-heavy install it would still call an idle machine busy.
    import psutil

    busy = psutil.cpu_percent(interval=0.5) >= 75.0
    torch.set_num_threads(1 if busy else threads_before)
    if not progress:
        datasets_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        if bars_before[0]:
            datasets_logging.enable_progress_bar()
        if bars_before[1]:
            transformers_logging.enable_progress_bar()


def _build(name: str, spec: ToyModelSpec, build_dir: Path, progress: bool) -> None:
    """Trains, saves, evaluates and documents one toy model in build_dir."""
    say = _console(progress)
    say(f"Building toy model '{name}' ({spec.train_steps} steps x {spec.batch_size}) in {build_dir.parent}; once only.")
    load_before = os.getloadavg()[0]
    with _build_environment(progress):
        _build_in(name, spec, build_dir, progress, load_before)


def _build_in(name: str, spec: ToyModelSpec, build_dir: Path, progress: bool, load_before: float) -> None:
    import torch

    started, cpu_started = time.perf_counter(), time.process_time()
    build_dir.mkdir(parents=True)
    tokenizer = build_tokenizer()
    model, train_stats = _train(spec, tokenizer, build_dir / "trainer", progress)
    trained = time.perf_counter()
    shutil.rmtree(build_dir / "trainer", ignore_errors=True)

    model.config.use_cache = True  # the trainer switches it off; generation wants the KV cache
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(build_dir)
    tokenizer.save_pretrained(build_dir)

    training_problems = {row["problem"] for row in _training_rows(spec)}
    accuracy = _measure_accuracy(model, tokenizer, spec, training_problems)
    finished = time.perf_counter()
    accuracy.update(
        {
            "temperature": spec.eval_temperature,
            "samples_per_problem": spec.eval_samples,
            "problems_per_level": spec.eval_problems_per_level,
            "eval_seed": EVAL_SEED,
            "build": {
                "train_seconds": round(trained - started, 1),
                "eval_seconds": round(finished - trained, 1),
                "total_seconds": round(finished - started, 1),
                # CPU time of this process (all threads): on a busy machine, a better guide than wall time.
                "cpu_seconds": round(time.process_time() - cpu_started, 1),
                "torch_threads": torch.get_num_threads(),
                "load_average_before": round(load_before, 2),
                "load_average_after": round(os.getloadavg()[0], 2),
                **train_stats,
            },
        }
    )
    (build_dir / "accuracy.json").write_text(json.dumps(accuracy, indent=2) + "\n")
    spec_record = {"name": name, "fingerprint": spec.fingerprint(), "recipe": BUILD_RECIPE_VERSION}
    (build_dir / "spec.json").write_text(json.dumps({**spec_record, **spec.model_dump(mode="json")}, indent=2) + "\n")
    if progress:
        print_accuracy_table(name, accuracy)


def _console(progress: bool):
    if not progress:
        return lambda message: None
    from rich.console import Console

    console = Console(stderr=True)
    return console.print


def print_accuracy_table(name: str, accuracy: dict) -> None:
    """Prints a per-level accuracy table (greedy and sampled) from an accuracy.json dict."""
    from rich.console import Console
    from rich.table import Table

    build = accuracy.get("build", {})
    table = Table(
        title=f"toy model '{name}': held-out accuracy per level "
        f"({accuracy['problems_per_level']} problems/level; built in {build.get('total_seconds', '?')} s)"
    )
    table.add_column("decoding")
    for level in ALL_LEVELS:
        table.add_column(f"L{level}", justify="right")
    table.add_row("greedy", *(f"{accuracy['greedy'][str(level)]:.2f}" for level in ALL_LEVELS))
    table.add_row(
        f"T={accuracy['temperature']} (k={accuracy['samples_per_problem']})",
        *(f"{accuracy['sampled'][str(level)]:.2f}" for level in ALL_LEVELS),
    )
    Console(file=sys.stderr).print(table)

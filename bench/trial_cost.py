"""One sweep trial's cost: TRL fine-tuning per step against a plain PyTorch loop, and the trial's time split.

    python bench/trial_cost.py [--config configs/phase_tiny.yaml] [--steps 60] [--repeats 2] [--no-trial]
                               [--set KEY=VALUE ...]

1. Per step: the sweep's fine-tuning (``pipeline.finetune``: TRL's SFTTrainer, padding-free micro-batches) against a
   plain PyTorch loop over the same model, the same rows in the same order, the same micro-batches (packed the same
   way, position ids restarting per row), the same AdamW, warm-up + cosine schedule, gradient clipping and
   accumulation. Both run ``--steps`` optimizer steps on the config's student and ``finetune.threads`` torch threads
   (default 1, as a trial runs), ``--repeats`` times interleaved; the ratio of the fastest runs is printed (target:
   at most 1.3). The rows are the gold generator's worked solutions of the pool's problems (a gold trial's data).
2. The whole trial (unless ``--no-trial``): the config's budget on those rows (p = 1 of the pool), split into
   set-up (problems, rows, model load, trainer, save), tokenisation, training and evaluation (the config's held-out
   set), with the held-out accuracy of the untouched and the trained student, so a grid's cost and a budget's
   effect can be planned from it.

Timings are wall-clock on whatever else the machine is doing: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gold_rows(cfg) -> list[dict]:
    """The pool's problems with their worked solutions (``toy:gold``): what a gold trial at p = 1 trains on."""
    from pipeline import columns as C
    from pipeline.toyworld import gold_solution
    from stages.source import SourceStage

    rows = []
    for batch in SourceStage(cfg.pool.source, seed=cfg.seed).read():
        for problem, reject in zip(batch[C.PROBLEM], batch[C.REJECT_REASON]):
            text = gold_solution(problem) if reject is None else None
            if text is not None:
                rows.append({"prompt": problem, "completion": text})
    return rows


def plain_loop(job: dict, micro_batch: int, accumulation: int) -> float:
    """Seconds of ``job``'s optimizer steps in a plain PyTorch loop (the same model, rows, batches, optimizer)."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    kwargs = job["sft_kwargs"]
    steps = kwargs["max_steps"]
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    model = AutoModelForCausalLM.from_pretrained(job["model_path"], dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=kwargs["learning_rate"],
                                  weight_decay=kwargs.get("weight_decay", 0.0))
    warmup = kwargs["warmup_steps"]
    warmup = int(math.ceil(warmup * steps)) if isinstance(warmup, float) and warmup < 1 else int(warmup)

    def factor(step: int) -> float:  # linear warm-up, then cosine to 0 (transformers' "cosine")
        if step < warmup:
            return step / max(1, warmup)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ids, masks = job["columns"]["input_ids"], job["columns"]["completion_mask"]
    started = time.perf_counter()
    row = 0
    for _ in range(steps):
        micro = []
        for _ in range(accumulation):  # padding-free: the micro-batch's rows packed into one sequence
            chosen = range(row, row + micro_batch)
            row += micro_batch
            micro.append((torch.tensor([t for i in chosen for t in ids[i]]).unsqueeze(0),
                          torch.tensor([p for i in chosen for p in range(len(ids[i]))]).unsqueeze(0),
                          torch.tensor([t if m else -100 for i in chosen for t, m in zip(ids[i], masks[i])]
                                       ).unsqueeze(0)))
        tokens = sum(int((labels != -100).sum()) for _, _, labels in micro)
        for input_ids, positions, labels in micro:
            out = model(input_ids=input_ids, position_ids=positions, labels=labels)
            (out.loss * (int((labels != -100).sum()) / tokens)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), kwargs.get("max_grad_norm", 1.0))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/phase_tiny.yaml", help="a sweep config")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of the per-step comparison")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each loop")
    parser.add_argument("--no-trial", action="store_true", help="skip the whole-trial split")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="sweep config override")
    args = parser.parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)

    from pipeline import evaluate as ev
    from pipeline import finetune as ft
    from pipeline.models import resolve_model
    from pipeline.sweep.config import load_sweep_config

    cfg = load_sweep_config(args.config, args.set)
    fcfg = cfg.finetune.model_copy(update={"threads": cfg.finetune.threads or 1})
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = gold_rows(cfg)
    rows_seconds = time.perf_counter() - t0
    model_path = resolve_model(fcfg.student)
    print(f"{fcfg.student}: {len(rows)} gold rows of {cfg.pool.source.kind} (n = {cfg.pool.source.n}); "
          f"{fcfg.threads} torch thread(s); load average {load_before:.1f} on {os.cpu_count()} CPUs")

    # 1. per step: TRL against the plain loop, interleaved
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    columns, _ = ft.tokenize_rows([r["prompt"] for r in rows], [r["completion"] for r in rows], tokenizer,
                                  cfg.pool.sample)
    short = fcfg.model_copy(update={"budget": "steps", "steps": args.steps})
    order = ft.training_order(len(rows), short, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        job = {"model_path": model_path, "columns": {k: [v[i] for i in order] for k, v in columns.items()},
               "seed": 0, "dtype": "float32", "gguf_file": None, "trust_remote_code": False,
               "threads": fcfg.threads, "lora": None, "token_metrics": fcfg.token_metrics,
               "sft_kwargs": ft._sft_kwargs(short, args.steps, 0, str(Path(tmp) / "trainer"))}
        trl_s, plain_s = [], []
        for _ in range(args.repeats):
            plain_s.append(plain_loop(job, short.micro_batch_size, short.gradient_accumulation_steps))
            trl_s.append(ft.train_once(job, None)["train_seconds"])
    per_trl, per_plain = min(trl_s) / args.steps, min(plain_s) / args.steps
    print(f"\nper optimizer step ({args.steps} steps x {short.batch_size} rows, micro-batch "
          f"{short.micro_batch_size}, lr {job['sft_kwargs']['learning_rate']:g}; fastest of {args.repeats}):")
    print(f"  TRL SFTTrainer  {per_trl:.4f} s   (runs: {', '.join(f'{s / args.steps:.4f}' for s in trl_s)})")
    print(f"  plain PyTorch   {per_plain:.4f} s   (runs: {', '.join(f'{s / args.steps:.4f}' for s in plain_s)})")
    print(f"  ratio TRL / plain: {per_trl / per_plain:.2f} (target <= 1.3; median ratio "
          f"{statistics.median(trl_s) / statistics.median(plain_s):.2f})")
    summary = {"steps": args.steps, "trl_per_step": per_trl, "plain_per_step": per_plain,
               "ratio": per_trl / per_plain, "load_average_before": load_before}

    # 2. the whole trial at the config's budget
    if not args.no_trial:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            t0 = time.perf_counter()
            model_dir = ft.finetune(fcfg, rows, out / "finetune", seed=0, prompt_cfg=cfg.pool.sample)
            stats = ft.read_train_stats(out / "finetune")
            finetune_s = time.perf_counter() - t0
            ecfg = cfg.evaluate.model_copy(update={"compare_base": False,
                                                   "threads": cfg.evaluate.threads or fcfg.threads})
            texts = {r["prompt"] for r in rows}
            t0 = time.perf_counter()
            metrics = ev.evaluate(ecfg, {"student": (fcfg.student, model_path),
                                         "trained": (str(model_dir), str(model_dir))},
                                  out / "evaluate", run_seed=cfg.seed, sample_cfg=cfg.pool.sample,
                                  verify_cfg=cfg.pool.verify, exclude_texts=texts, pairs=[("trained", "student")])
            eval_s = (time.perf_counter() - t0) / 2  # one of the two models is the trial's
        tokenize, train = stats["tokenize_seconds"], stats["train_seconds"]
        setup = rows_seconds + finetune_s - tokenize - train
        total = setup + tokenize + train + eval_s
        split = {"set-up": setup, "tokenisation": tokenize, "training": train, "evaluation": eval_s}
        print(f"\none trial ({fcfg.budget}: {stats['optimizer_steps']} steps x {fcfg.batch_size} rows = "
              f"{stats['epochs_seen']:.2f} epochs of {len(rows)} rows; {metrics['heldout']['problems']} held-out "
              f"problems, greedy):")
        for name, seconds in split.items():
            print(f"  {name:<13} {seconds:8.1f} s  {100 * seconds / total:5.1f}%")
        print(f"  {'total':<13} {total:8.1f} s   ({train / stats['optimizer_steps']:.3f} s per training step)")
        accuracy = {name: m["metrics"]["greedy_accuracy"] for name, m in metrics["models"].items()}
        for name, groups in accuracy.items():
            overall = groups["overall"]
            levels = " ".join(f"L{g}:{v['value']:.2f}" for g, v in groups.items() if g != "overall")
            print(f"  {name:<8} greedy accuracy {overall['value']:.3f} [{overall['ci_low']:.3f}, "
                  f"{overall['ci_high']:.3f}]  {levels}")
        diff = metrics["difference"]["trained - student"]["greedy_accuracy"]["overall"]
        print(f"  trained - student (paired): {diff['value']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]")
        summary.update(trial_seconds=split, trial_total=total, accuracy={k: v["overall"] for k, v in accuracy.items()},
                       trained_minus_student=diff, load_average_after=os.getloadavg()[0])
    print("\n" + json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

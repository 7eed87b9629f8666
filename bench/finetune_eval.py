"""Fine-tune and evaluate: single process vs Ray Train workers, with accuracy CIs and wall-clock figures.

    python bench/finetune_eval.py [--config configs/tiny_finetune.yaml] [--workers 1 2] [--set KEY=VALUE ...]

Runs the config's stages (skipped when up to date), then fine-tunes its student on the exported dataset once per
worker count (same steps, same global batch), evaluates the untouched student and every fine-tuned model on the same
held-out problems, and prints accuracy with bootstrap CIs, paired differences, and the time ratios. Outputs land in
<run_dir>/bench_finetune/. Timings are wall-clock on whatever else the machine is doing: read them as rough.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny_finetune.yaml")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("RAY_AUTH_MODE", "disabled"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)

    import datasets
    from rich.console import Console

    from pipeline import evaluate as ev
    from pipeline import finetune as ft
    from pipeline.config import load_config
    from pipeline.models import resolve_model
    from pipeline.runner import run
    from pipeline.session import heldout_exclusions

    console = Console(stderr=True)
    cfg = load_config(args.config, args.set)
    if cfg.finetune is None or cfg.evaluate is None:
        print(f"{args.config}: needs finetune and evaluate blocks", file=sys.stderr)
        return 2
    result = run(cfg, console=console)
    rows = datasets.load_from_disk(result.outputs["dataset"])["train"]
    out = result.run_dir / "bench_finetune"
    student = cfg.finetune.student
    models = {"base": (student, resolve_model(student))}
    timing: dict[str, dict[str, float]] = {}
    for workers in args.workers:
        micro = min(cfg.finetune.micro_batch_size, cfg.finetune.batch_size // workers)
        fcfg = cfg.finetune.model_copy(update={"num_workers": workers, "micro_batch_size": micro,
                                               "threads": cfg.finetune.threads if workers == 1 else None})
        fcfg = ft.FinetuneConfig.model_validate(fcfg.model_dump())  # re-check the batch arithmetic
        t0 = time.perf_counter()
        model_dir = ft.finetune(fcfg, rows, out / f"workers{workers}", seed=cfg.seed, prompt_cfg=cfg.stage("sample"))
        stats = ft.read_train_stats(out / f"workers{workers}")
        timing[f"workers{workers}"] = {"wall_s": time.perf_counter() - t0, "train_s": stats["train_seconds"],
                                       "steps": stats["optimizer_steps"], "final_loss": stats["last_logged_loss"]}
        models[f"workers{workers}"] = (str(model_dir), str(model_dir))
    pool_ids, pool_texts = heldout_exclusions(result)
    names = [f"workers{w}" for w in args.workers]
    pairs = [(n, "base") for n in names] + [(n, names[0]) for n in names[1:]]
    t0 = time.perf_counter()
    metrics = ev.evaluate(cfg.evaluate, models, out / "evaluate", run_seed=cfg.seed, sample_cfg=cfg.stage("sample"),
                          verify_cfg=cfg.stage("verify"), exclude_ids=pool_ids, exclude_texts=pool_texts, pairs=pairs)
    eval_s = time.perf_counter() - t0
    console.print(ev.metrics_table(metrics))
    headline = ev.headline_metric(metrics)
    print(f"config: {args.config}; training rows: {len(rows)}; held-out problems: {metrics['heldout']['problems']}")
    for name, model in metrics["models"].items():
        m = model["metrics"][headline]["overall"]
        t = timing.get(name)
        extra = (f"; fine-tune {t['wall_s']:.1f}s wall ({t['train_s']:.1f}s in train(), {t['steps']} steps, "
                 f"last loss {t['final_loss']:.4f})") if t else ""
        print(f"{name:10s} {headline} {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]; "
              f"eval {model['seconds']:.1f}s{extra}")
    for name, diff in metrics["difference"].items():
        d = diff[headline]["overall"]
        print(f"{name:22s} {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] "
              f"({'CI excludes 0' if d['significant'] else 'CI includes 0'})")
    if len(names) > 1:
        base_wall = timing[names[0]]["wall_s"]
        for n in names[1:]:
            print(f"wall-clock ratio {n}/{names[0]}: {timing[n]['wall_s'] / base_wall:.2f}")
    print(f"evaluation of {len(models)} models: {eval_s:.1f}s")
    (out / "bench.json").write_text(json.dumps({"timing": timing, "eval_seconds": eval_s}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

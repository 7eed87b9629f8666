"""Builds (or loads) a toy model and prints its held-out accuracy per level and its build time.

    python bench/toy_model_accuracy.py --model strong
    python bench/toy_model_accuracy.py --model test --cache-dir /tmp/toycache   # a fresh cache forces a build

Accuracy comes from the model's accuracy.json, written when it was built (greedy and T=0.8 on held-out problems).
The build-time ratio compares with the budget for that model; the 2 cores may be shared, so the load average at
the start and end of the build is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

# Build-time budgets on 2 cores, in seconds.
BUILD_BUDGET_SECONDS = {"strong": 300, "weak": 300, "student": 300, "test": 40}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from pipeline.toymodel import TOY_MODELS, ensure_toy_model, print_accuracy_table, toy_model_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="strong", choices=sorted(TOY_MODELS), help="which toy model")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $LESSMORE_CACHE or ~/.cache/lessmore)")
    args = parser.parse_args()

    was_cached = (toy_model_dir(args.model, args.cache_dir) / "accuracy.json").is_file()
    started = time.perf_counter()
    model_dir = ensure_toy_model(args.model, cache_dir=args.cache_dir, progress=True)
    elapsed = time.perf_counter() - started
    accuracy = json.loads((model_dir / "accuracy.json").read_text())
    build = accuracy["build"]

    print(f"model: {args.model}  dir: {model_dir}")
    print(f"this call: {elapsed:.1f} s ({'loaded from cache' if was_cached else 'built'})")
    print(
        f"build: total {build['total_seconds']} s (train {build['train_seconds']} s, eval {build['eval_seconds']} s, "
        f"process CPU {build.get('cpu_seconds', '?')} s), torch threads {build['torch_threads']}, "
        f"load average {build['load_average_before']} -> "
        f"{build['load_average_after']}"
    )
    budget = BUILD_BUDGET_SECONDS[args.model]
    print(f"build time / budget ({budget} s): {build['total_seconds'] / budget:.2f}")
    levels = sorted(accuracy["greedy"], key=int)
    print("level         " + " ".join(f"{'L' + level:>5}" for level in levels))
    print("greedy        " + " ".join(f"{accuracy['greedy'][level]:5.2f}" for level in levels))
    print(f"T={accuracy['temperature']} (k={accuracy['samples_per_problem']}) " + " ".join(
        f"{accuracy['sampled'][level]:5.2f}" for level in levels
    ))
    if accuracy.get("seen_in_training"):
        print("seen in train " + " ".join(f"{accuracy['seen_in_training'][level]:5.2f}" for level in levels))
    sampled = [accuracy["sampled"][level] for level in levels]
    print(f"spread: T=0.8 accuracy L1 / L6 = {sampled[0]:.2f} / {sampled[-1]:.2f}")
    if was_cached:
        print_accuracy_table(args.model, accuracy)


if __name__ == "__main__":
    main()

"""Adaptive k against fixed k: tier agreement and the fraction of samples spent.

Ground truth: every problem sampled ``--k`` times (default 32) and verified; its tier (unsolved / hard / medium /
easy / solved) comes from all k samples. The adaptive run samples the same problems in ``--rounds`` with the sample
stage's real adaptive path (verify between rounds, stop once decided). Both runs use the same row seeds, so the
adaptive samples must be a prefix of the fixed ones; the bench checks that too.

Printed: tier agreement (5 tiers, and 3 tiers with unsolved/solved merged into hard/easy), samples spent as a
fraction of fixed k, wall times, and a replay table of other settings (other confidences, rounds, methods) computed
from the fixed samples (exact, because the samples are identical). The acceptance target is agreement >= 95% with
at most 50% of the samples, together.

    python bench/adaptive_k.py --model toy:strong --problems 500 --k 32 --rounds 4 8 16 32
    # three tiers, rounds of 2 samples up to 16 then of 4: 0.976 agreement with 0.448 of the samples (2 cores)
    python bench/adaptive_k.py --tiers 3 --rounds 2 4 6 8 10 12 14 16 20 24 28 32

Timings on shared cores are noisy. The fixed samples are cached in ``--out`` (reused with --reuse); with
``--cache-dir`` the adaptive run reads the fixed run's completions from the generation cache.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def problems_batch(n: int, seed: int, levels: tuple[int, ...]) -> dict:
    from pipeline import columns as C
    from pipeline.toyworld import make_problems
    from stages.source import problem_id

    probs = make_problems(n, levels=levels, seed=seed)
    return {C.PROBLEM_ID: [problem_id("toyworld", p["problem"]) for p in probs],
            C.PROBLEM: [p["problem"] for p in probs], C.ANSWER: [p["answer"] for p in probs],
            C.LEVEL: [p["level"] for p in probs]}


def run_sampler(stage, verify, problems: dict, batch_size: int) -> tuple[list[dict], float]:
    """Sample (and verify) every problem in batches, as the runner would; returns rows and seconds."""
    from pipeline import columns as C
    from stages.base import rows_of

    rows: list[dict] = []
    started = time.perf_counter()
    n = len(problems[C.PROBLEM_ID])
    for start in range(0, n, batch_size):
        batch = {c: v[start:start + batch_size] for c, v in problems.items()}
        rows.extend(rows_of(verify(stage(batch))))
    return rows, time.perf_counter() - started


def tallies(rows: list[dict]) -> dict[str, list[bool]]:
    """problem_id -> verdicts in sample_idx order (errored generations are not attempts)."""
    from pipeline import columns as C

    out: dict[str, list[tuple[int, bool]]] = {}
    for r in rows:
        if r[C.FINISH_REASON] != "error":
            out.setdefault(r[C.PROBLEM_ID], []).append((r[C.SAMPLE_IDX], bool(r[C.CORRECT])))
    return {pid: [ok for _, ok in sorted(v)] for pid, v in out.items()}


def tiers(verdicts: dict[str, list[bool]], decide, merge_ends: bool = False) -> dict[str, int]:
    import numpy as np

    from stages.sample.adaptive import classes

    pids = list(verdicts)
    five = decide.model_copy(update={"by": "tiers", "exact_ends": True})
    codes = classes([sum(verdicts[p]) for p in pids], [len(verdicts[p]) for p in pids], five)
    if merge_ends:
        codes = np.clip(codes, 1, 3)
    return dict(zip(pids, (int(c) for c in codes)))


def replay(verdicts: dict[str, list[bool]], rounds: tuple[int, ...], decide) -> tuple[float, float, float]:
    """Agreement (5 tiers, 3 tiers) and sample fraction of an adaptive rule, replayed on fixed-k verdicts."""
    import numpy as np

    from stages.sample.adaptive import decided

    budget = rounds[-1]
    pids = list(verdicts)
    used = {}
    active = pids
    for target in rounds:
        if not active:
            break
        k = np.array([sum(verdicts[p][:target]) for p in active])
        n = np.array([len(verdicts[p][:target]) for p in active])
        stop = decided(k, n, budget, decide) if target < budget else np.ones(len(active), dtype=bool)
        for p, s in zip(active, stop):
            if s:
                used[p] = target
        active = [p for p, s in zip(active, stop) if not s]
    truncated = {p: verdicts[p][:used[p]] for p in pids}
    truth5, got5 = tiers(verdicts, decide), tiers(truncated, decide)
    truth3, got3 = tiers(verdicts, decide, True), tiers(truncated, decide, True)
    agree5 = float(np.mean([truth5[p] == got5[p] for p in pids]))
    agree3 = float(np.mean([truth3[p] == got3[p] for p in pids]))
    return agree5, agree3, sum(used.values()) / (budget * len(pids))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy:strong")
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rounds", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--method", choices=["predictive", "interval"], default="predictive")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--prior", type=float, nargs=2, default=[0.5, 0.5])
    parser.add_argument("--tiers", type=int, choices=[5, 3], default=5,
                        help="5: decide unsolved/hard/medium/easy/solved; 3: hard/medium/easy (decide.exact_ends: "
                        "false). The target is checked on the same tiers.")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=100, help="problems per stage call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_adaptive_k"))
    parser.add_argument("--reuse", action="store_true", help="reuse the cached fixed-k samples in --out")
    parser.add_argument("--replay-only", action="store_true", help="skip the live adaptive run")
    parser.add_argument("--cache-dir", default=None,
                        help="generation cache shared by both runs: the adaptive run then reads the fixed run's "
                        "completions instead of generating them (samples spent are still counted; wall times are not "
                        "comparable)")
    args = parser.parse_args()

    from pipeline import columns as C
    from pipeline.models import resolve_model
    from stages.sample.adaptive import DecideConfig
    from stages.sample import SampleConfig, SampleStage
    from stages.verify import VerifyConfig, VerifyStage

    if args.rounds[-1] != args.k:
        parser.error(f"--rounds must end at --k ({args.k})")
    args.out.mkdir(parents=True, exist_ok=True)
    problems = problems_batch(args.problems, args.seed, tuple(args.levels))
    path = resolve_model(args.model)
    verify = VerifyStage(VerifyConfig(verifier="math", options={"timeout_s": 5}))
    decide = DecideConfig(method=args.method, confidence=args.confidence, prior=tuple(args.prior),
                          exact_ends=args.tiers == 5, verifier_options={"timeout_s": 5})
    common = dict(model=args.model, temperature=args.temperature, max_tokens=args.max_tokens, threads=args.threads,
                  generate_batch_size=512, **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    cache = args.out / f"fixed_{args.problems}_{args.k}_{args.seed}.jsonl"
    if args.reuse and cache.is_file():
        fixed_rows = [json.loads(line) for line in cache.read_text().splitlines()]
        fixed_s = float("nan")
        print(f"fixed k={args.k}: reused {len(fixed_rows)} rows from {cache}")
    else:
        fixed = SampleStage(SampleConfig(k=args.k, **common), seed=args.seed, model_path=path)
        fixed_rows, fixed_s = run_sampler(fixed, verify, problems, args.batch_size)
        keep = (C.PROBLEM_ID, C.SAMPLE_IDX, C.SEED, C.COMPLETION, C.FINISH_REASON, C.CORRECT, C.LEVEL)
        cache.write_text("\n".join(json.dumps({c: r[c] for c in keep}) for r in fixed_rows) + "\n")
        print(f"fixed k={args.k}: {len(fixed_rows)} samples in {fixed_s:.1f}s")
    truth = tallies(fixed_rows)
    rounds = tuple(args.rounds)

    ok = True
    if not args.replay_only:
        adaptive = SampleStage(SampleConfig(k=args.k, rounds=rounds, decide=decide, **common), seed=args.seed,
                               model_path=path)
        adaptive_rows, adaptive_s = run_sampler(adaptive, verify, problems, args.batch_size)
        by_key = {(r[C.PROBLEM_ID], r[C.SAMPLE_IDX]): r for r in fixed_rows}
        same = all(by_key[(r[C.PROBLEM_ID], r[C.SAMPLE_IDX])][C.COMPLETION] == r[C.COMPLETION]
                   and by_key[(r[C.PROBLEM_ID], r[C.SAMPLE_IDX])][C.SEED] == r[C.SEED] for r in adaptive_rows)
        got = tallies(adaptive_rows)
        t5, g5 = tiers(truth, decide), tiers(got, decide)
        t3, g3 = tiers(truth, decide, True), tiers(got, decide, True)
        agree5 = sum(t5[p] == g5[p] for p in truth) / len(truth)
        agree3 = sum(t3[p] == g3[p] for p in truth) / len(truth)
        fraction = len(adaptive_rows) / (args.k * args.problems)
        ok = (agree5 if args.tiers == 5 else agree3) >= 0.95 and fraction <= 0.5
        print(f"adaptive rounds={list(rounds)} {args.method} confidence={args.confidence} deciding {args.tiers} "
              f"tiers: {len(adaptive_rows)} samples in {adaptive_s:.1f}s (fixed: {fixed_s:.1f}s)")
        print(f"  samples identical to the fixed-k prefix: {'yes' if same else 'NO'}")
        print(f"  tier agreement (5 tiers): {agree5:.3f}   (3 tiers, ends merged): {agree3:.3f}")
        print(f"  samples spent: {fraction:.3f} of fixed k={args.k}   wall-time ratio: {adaptive_s / fixed_s:.2f}")
        print(f"  target ({args.tiers}-tier agreement >= 0.95 and samples <= 0.50): {'met' if ok else 'NOT met'}")
    print("\nreplay on the fixed samples (agreement 5 tiers / 3 tiers, fraction of samples):")
    fine = (2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32)
    settings = [  # (method, confidence, rounds, tiers decided)
        ("predictive", 0.95, (4, 8, 16, 32), 5), ("predictive", 0.8, (4, 8, 16, 32), 5),
        ("predictive", 0.9, (4, 8, 12, 16, 20, 24, 28, 32), 5), ("predictive", 0.9, fine, 5),
        ("interval", 0.95, (4, 8, 16, 32), 5),
        ("predictive", 0.95, (4, 8, 16, 32), 3), ("predictive", 0.95, (4, 8, 12, 16, 20, 24, 28, 32), 3),
        ("predictive", 0.95, fine, 3), ("predictive", 0.9, fine, 3), ("interval", 0.8, fine, 3),
    ]
    for method, confidence, rr, n_tiers in settings:
        if rr[-1] != args.k:
            continue
        d = DecideConfig(method=method, confidence=confidence, prior=tuple(args.prior), exact_ends=n_tiers == 5)
        a5, a3, frac = replay(truth, rr, d)
        print(f"  {method:10s} {n_tiers} tiers conf={confidence:.2f} rounds={list(rr)}: {a5:.3f} / {a3:.3f}, {frac:.3f}")
    ends = sum(1 for v in truth.values() if sum(v) <= 3 or sum(v) >= len(v) - 3)
    print(f"\nproblems within 3 of 0 or of k correct (unsolved/hard and easy/solved need ~all k to tell): "
          f"{ends} of {len(truth)}")
    by_level: dict[int, list[float]] = {}
    for r in fixed_rows:
        by_level.setdefault(r[C.LEVEL], []).append(float(r[C.CORRECT]))
    print("\npass rate by level at fixed k: " + ", ".join(f"L{lv} {sum(v) / len(v):.2f}" for lv, v in sorted(by_level.items())))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

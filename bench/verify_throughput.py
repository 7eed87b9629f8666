"""Verification throughput: the ``math`` verifier with W worker processes vs raw single-process math-verify.

The workload is the labelled verifier set (tests/data/verifier_labelled.jsonl: real model outputs, toy arithmetic
chains and math-verify's known traps), each row repeated as ``--samples`` samples of its problem, in problem
order, as a verify stage sees a batch. Raw math-verify runs ``verify(parse(reference), parse(response))`` in this
process; the verifier runs ``batch`` over all items.

Both sides are timed warm, on the same work per round. Before the timed rounds, raw math-verify and each worker
pool run the whole workload once, untimed: imports, math-verify's ANTLR parser tables and sympy's own caches are
warm on both sides, as in a long-running verify stage. The verifier's verdict caches are then cleared in every
worker (``Verifier.clear_caches``) before each timed round, so no round reuses a verdict from an earlier one. What
stays cached within a round, and only on the verifier's side: a worker parses each reference once and compares each
(reference, extracted answer) pair once, so the k samples of a problem that end in the same answer cost one
comparison (real usage). Raw math-verify calls ``parse`` and ``verify`` for every sample, though its own 20-entry
parse cache and sympy's cache make repeats cheaper there too. ``--samples 1`` takes the k-sample effect out of
both sides. ``--cold`` measures fresh worker pools each round instead (start-up excluded, first-seen items cold),
against warm raw math-verify.

Printed per W: verifications/s, speed-up over raw, and the scaling ratio per worker,
``throughput(W) / (W * throughput(raw))`` (1.0 = every worker as fast as raw math-verify on one core) and
``throughput(W) / (W * throughput(W=1))``. Timings on shared cores are noisy: the setups are measured in
interleaved rounds and each figure is the best of ``--repeats`` rounds. On a machine whose cores are busy with
other work, Linux gives each session (autogroup) one share of CPU however many processes it runs, so W > 1 shows
its scaling only on free cores.

    python bench/verify_throughput.py --workers 1 2 --samples 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

DEFAULT_SET = Path(__file__).resolve().parent.parent / "tests" / "data" / "verifier_labelled.jsonl"


def load_workload(path: Path, samples: int, categories: list[str] | None) -> tuple[list[str], list[str]]:
    """Responses and references: every labelled row (of ``categories``, if given) ``samples`` times, by problem."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if categories:
        rows = [row for row in rows if row["category"] in categories]
        if not rows:
            raise SystemExit(f"no rows of categories {categories} in {path}")
    responses, references = [], []
    for row in rows:
        for k in range(samples):
            # Distinct texts per sample, same final answer: what k samples of one problem look like to a cache.
            responses.append(f"Sample {k}.\n{row['response']}")
            references.append(row["reference"])
    return responses, references


def time_raw(responses: list[str], references: list[str]) -> float:
    """Seconds for plain single-process math-verify over the workload."""
    from math_verify import parse, verify

    started = time.perf_counter()
    for response, reference in zip(responses, references):
        verify(parse(reference), parse(response))
    return time.perf_counter() - started


def time_verifier(verifier: Any, responses: list[str], references: list[str]) -> tuple[float, int]:
    """Seconds for one ``batch`` of ``verifier`` over the workload, and how many items timed out."""
    verifier.clear_caches()  # no verdict from an earlier round
    started = time.perf_counter()
    verdicts = verifier.batch(responses, references)
    elapsed = time.perf_counter() - started
    return elapsed, sum(v.reason == "timeout" for v in verdicts)


def time_cold_verifier(
    workers: int, responses: list[str], references: list[str], timeout_s: float
) -> tuple[float, int]:
    """``time_verifier`` on a fresh pool (started and warmed on one item first, not on the workload)."""
    from verifiers import build_verifier

    with build_verifier("math", workers=workers, timeout_s=timeout_s) as verifier:
        verifier.batch([r"\boxed{1}"] * workers, ["1"] * workers)  # start the workers
        return time_verifier(verifier, responses, references)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=Path, default=DEFAULT_SET, help="labelled JSONL set used as the workload")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem (rows are repeated)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is kept")
    parser.add_argument(
        "--categories", nargs="+", metavar="CATEGORY",
        help="only rows of these categories (default: all). The trap categories hold equations that math-verify "
        "reads as plain numbers while the verifier compares them symbolically, which costs sympy time",
    )
    parser.add_argument("--timeout-s", type=float, default=5.0, help="verifier deadline per item")
    parser.add_argument(
        "--cold", action="store_true",
        help="fresh worker pools each round (items cold in the workers) instead of warm pools with cleared caches",
    )
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    from rich.console import Console
    from rich.table import Table

    responses, references = load_workload(args.labelled, args.samples, args.categories)
    n = len(responses)
    from verifiers import build_verifier

    time_raw(responses, references)  # import and warm math-verify on the workload
    raw_runs: list[float] = []
    runs: dict[int, list[tuple[float, int]]] = {workers: [] for workers in args.workers}
    with ExitStack() as stack:
        pools = {}
        if not args.cold:
            for workers in args.workers:
                verifier = stack.enter_context(build_verifier("math", workers=workers, timeout_s=args.timeout_s))
                verifier.batch(responses, references)  # start the workers and warm them on the workload
                pools[workers] = verifier
        # Interleaved rounds (raw, W=1, W=2, ... then again), so that a change in the machine's load between
        # phases does not land on one setup only; the best round of each setup is kept.
        for _ in range(args.repeats):
            raw_runs.append(time_raw(responses, references))
            for workers in args.workers:
                if args.cold:
                    runs[workers].append(time_cold_verifier(workers, responses, references, args.timeout_s))
                else:
                    runs[workers].append(time_verifier(pools[workers], responses, references))
    raw_rate = n / min(raw_runs)
    measured = {workers: (n / min(r)[0], min(r)[1]) for workers, r in runs.items()}

    console = Console(width=120)
    subset = ", ".join(args.categories) if args.categories else "all categories"
    pools_kind = "fresh pools each round" if args.cold else "warm pools, verdict caches cleared each round"
    table = Table(title=f"math verification throughput: {n} items ({subset}; {args.samples} samples per problem), "
                  f"best of {args.repeats}; {pools_kind}")
    for column in ("setup", "verifications/s", "vs raw", "per-worker vs raw", "per-worker vs W=1", "timeouts"):
        table.add_column(column, justify="left" if column == "setup" else "right")
    table.add_row("raw math-verify", f"{raw_rate:.0f}", "1.00", "1.00", "", "")
    base = measured.get(1, (None, 0))[0]
    for workers, (rate, timeouts) in measured.items():
        table.add_row(
            f"math W={workers}",
            f"{rate:.0f}",
            f"{rate / raw_rate:.2f}",
            f"{rate / (workers * raw_rate):.2f}",
            f"{rate / (workers * base):.2f}" if base else "",
            str(timeouts),
        )
    console.print(table)
    if not args.cold:
        console.print(
            "Cached within a timed round: the verifier parses a reference once per worker and compares a (reference, "
            "answer) pair once (k samples, one answer); raw math-verify has its 20-entry parse cache. Cleared "
            "between rounds: the verifier's caches. Warm on both sides: imports, parser tables, sympy's caches."
        )
    console.print(
        f"cpu cores visible: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}. With the cores busy elsewhere "
        "(load above the core count) the per-worker ratios measure the machine, not the pool."
    )


if __name__ == "__main__":
    main()

"""A finished linear-world sweep against an independent simulation of each of its cells.

Every grid trial of a linear world (``report/results.csv``: rule, n, p, d, rho, rho_star, rho_g, lam) is simulated
``--seeds`` times by ``pipeline.theory.simulate_error``, the theory's own Monte-Carlo of the same curated ridge
(its own draws, its own curation and fit, none of the sweep's code), and the measured error is compared with the
simulations' mean: absolute difference, and z = difference / the simulations' standard deviation (one seed's
Monte-Carlo error). If the sweep measures what it claims, |z| behaves like a standard normal's (about 95% below 2).

    lessmore sweep configs/phase_linear.yaml            # writes runs/phase_linear/report/results.csv
    python bench/linear_vs_simulation.py runs/phase_linear --cells 200 --seeds 12
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished sweep's directory (holds report/results.csv)")
    parser.add_argument("--cells", type=int, default=200, help="grid trials drawn at random (0: all)")
    parser.add_argument("--seeds", type=int, default=12, help="independent simulations per trial")
    parser.add_argument("--tolerance", type=float, default=0.02, help="absolute agreement reported")
    args = parser.parse_args()

    from pipeline.sweep.predict import THEORY_RULES
    from pipeline.theory import simulate_error

    with open(args.run_dir / "report" / "results.csv", newline="") as f:
        trials = [t for t in csv.DictReader(f) if t["kind"] == "grid" and t["status"] == "ok" and t.get("d")
                  and float(t["oracle_noise"] or 0) == 0 and float(t["generator_noise"] or 0) == 0
                  and t["rule"] in THEORY_RULES]
    if not trials:
        raise SystemExit(f"{args.run_dir}: no linear-world grid trials in report/results.csv")
    if args.cells and args.cells < len(trials):
        trials = random.Random(0).sample(trials, args.cells)
    rows = []
    for trial in trials:
        rule, aware = THEORY_RULES[trial["rule"]]
        n, d, p = int(trial["n"]), int(float(trial["d"])), float(trial["p"])
        theory = (float(trial["rho"]), float(trial["rho_star"]), float(trial["rho_g"]))
        simulated = [simulate_error(n, d, *theory, rule, p, float(trial["lam"]), aware, seed=s)
                     for s in range(args.seeds)]
        mean, spread = float(np.mean(simulated)), float(np.std(simulated, ddof=1))
        difference = float(trial["error"]) - mean
        rows.append((abs(difference), difference / max(spread, 1e-3), spread, trial))
    gaps = np.array([r[0] for r in rows])
    z = np.array([r[1] for r in rows])
    print(f"{len(rows)} trials, {args.seeds} simulations each")
    print(f"  |measured - simulated| <= {args.tolerance}: {np.mean(gaps <= args.tolerance):.3f} of trials "
          f"(median one-seed spread {np.median([r[2] for r in rows]):.4f}, max gap {gaps.max():.4f})")
    print(f"  |z| < 2: {np.mean(np.abs(z) < 2):.3f}   |z| < 3: {np.mean(np.abs(z) < 3):.3f}   mean z {z.mean():+.3f}")
    print("  largest gaps (gap, z, one-seed spread, generator, n, rule, p):")
    for gap, zscore, spread, t in sorted(rows, key=lambda r: -r[0])[:8]:
        print(f"    {gap:.4f} {zscore:+.2f} {spread:.4f} {t['generator']} n={t['n']} {t['rule']} p={float(t['p']):.3f}")


if __name__ == "__main__":
    main()

"""Speed of the curation-theory phase diagrams (pipeline/theory/model.py).

Target: a 40 x 40 (n/d, rho) grid with 20 keep fractions, for every rule, in <= 20 s on 2 cores.
Times the full computation behind `lessmore theory phase` (keep-hard, keep-easy and random, label-agnostic and
label-aware: 6 x 40 x 40 x 20 = 192,000 evaluations of the deterministic equivalent), best of 3, and for scale
one Monte-Carlo run of the same estimator.

    .venv/bin/python bench/theory_speed.py
"""

from __future__ import annotations

import time

import numpy as np

from pipeline import theory

BUDGET_S = 20.0


def _best_of(repeats, function):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    n_over_d = np.geomspace(0.5, 200.0, 40)
    rho = np.linspace(0.6, 1.0, 40)
    keep = np.geomspace(0.02, 1.0, 20)

    def phase():
        for label_aware in (False, True):
            theory.phase_grid(
                rho_star=0.99, lam=1e-3, n_over_d=n_over_d, rho=rho, keep_fractions=keep, label_aware=label_aware
            )

    phase()  # warm-up: first-call imports and allocations
    phase_s = _best_of(3, phase)
    points = 2 * 3 * rho.size * n_over_d.size * keep.size
    print(f"phase grid 40x40, 20 keep fractions, 3 rules x 2 families ({points:,} points): {phase_s:.3f} s")
    print(f"  budget {BUDGET_S:.0f} s -> {BUDGET_S / phase_s:,.0f}x under budget")
    print(f"  {phase_s / points * 1e6:.2f} us per (rule, rho, n/d, p) point")

    formula_s = _best_of(5, lambda: theory.asymptotic_error(0.1, 0.9, 0.99, 0.891, "keep_hard", 0.3, 1e-3))
    simulation_s = _best_of(3, lambda: theory.simulate_error(4000, 400, 0.9, 0.99, 0.891, "keep_hard", 0.3, 1e-3))
    print(f"one asymptotic_error call: {formula_s * 1e3:.2f} ms; one simulate_error run (n=4000, d=400): "
          f"{simulation_s * 1e3:.1f} ms ({simulation_s / formula_s:,.0f}x)")
    print("note: timings on a shared machine are noisy; the simulation uses BLAS, so set OPENBLAS_NUM_THREADS=1 "
          "when the cores are busy")


if __name__ == "__main__":
    main()

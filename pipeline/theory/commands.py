"""``lessmore theory``: phase diagrams, advice for a pool and the collapse loop of the curation theory.

Wiring only: the computations live in :mod:`pipeline.theory.model`, and ``pipeline.cli`` names the sub-commands.
Examples::

    lessmore theory phase --rho-star 0.99 --lam 1e-3 --out runs/theory
    lessmore theory advise --pool-size 20000 --generator-accuracy 0.9 --oracle-accuracy 0.97 --dim 1000
    lessmore theory collapse --rho 0.95 --rho-star 0.99 --out runs/theory
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

_FAMILIES = ((False, "label-agnostic"), (True, "label-aware (+ correctness filter)"))
_PHASE_RULES = ("keep_hard", "keep_easy", "random")


def add_phase_arguments(phase: argparse.ArgumentParser) -> None:
    """The arguments of ``lessmore theory phase``."""
    phase.add_argument("--rho-star", type=float, default=0.99, help="oracle cosine with the ground truth")
    phase.add_argument("--lam", type=float, default=1e-3, help="ridge penalty of the learner")
    phase.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    phase.add_argument("--grid", type=int, default=40, help="grid points along each axis")
    phase.add_argument("--num-p", type=int, default=20, help="keep fractions tried (log-spaced in [0.02, 1])")
    phase.add_argument(
        "--n-over-d", type=float, nargs=2, default=(0.5, 200.0), metavar=("MIN", "MAX"), help="range of n/d (log axis)"
    )
    phase.add_argument(
        "--rho-range", type=float, nargs=2, default=(0.6, 1.0), metavar=("MIN", "MAX"), help="range of generator rho"
    )


def add_advise_arguments(advise: argparse.ArgumentParser) -> None:
    """The arguments of ``lessmore theory advise``."""
    advise.add_argument("--pool-size", type=int, required=True, help="number of candidate examples n")
    advise.add_argument(
        "--generator-accuracy", type=float, required=True, help="fraction of the pool's labels/traces that are correct"
    )
    advise.add_argument(
        "--oracle-accuracy",
        type=float,
        required=True,
        help="agreement of the difficulty/correctness scorer with the ground truth",
    )
    advise.add_argument("--dim", type=float, default=1000.0, help="effective dimension d of the task")
    advise.add_argument("--lam", type=float, default=1e-3, help="ridge penalty of the learner")
    advise.add_argument(
        "--no-label-aware",
        action="store_true",
        help="only consider rules that do not drop examples the oracle marks wrong (no verifier available)",
    )


def add_collapse_arguments(collapse: argparse.ArgumentParser) -> None:
    """The arguments of ``lessmore theory collapse``."""
    collapse.add_argument("--rho", type=float, default=0.95, help="cosine of the initial generator")
    collapse.add_argument("--rho-star", type=float, default=0.99, help="oracle cosine")
    collapse.add_argument("--n-over-d", type=float, default=10.0, help="fresh pool size per round over d")
    collapse.add_argument("--lam", type=float, default=1e-3, help="ridge penalty of the learner")
    collapse.add_argument("--keep-fraction", type=float, default=0.3, help="p of the keep-hard/keep-easy rules")
    collapse.add_argument("--rounds", type=int, default=6, help="rounds of relabelling")
    collapse.add_argument(
        "--simulate", action="store_true", help="Monte-Carlo simulation in dimension --dim instead of the formulas"
    )
    collapse.add_argument("--dim", type=int, default=200, help="dimension of the simulation")
    collapse.add_argument("--seeds", type=int, default=4, help="independent simulated chains to average")
    collapse.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")


def _fail(message: str) -> int:
    print(f"lessmore theory: error: {message}", file=sys.stderr)
    return 2


def _grid_heatmap(ax, grid, values, title, cmap, vmin=None, vmax=None, contour_at=None):
    """One (log n/d, rho) heatmap with a colour bar and an optional contour line."""
    from pipeline.plots import heatmap

    mesh = heatmap(ax, values, title, cmap, vmin, vmax, x=grid.n_over_d, y=grid.rho, contour_at=contour_at)
    ax.set_xscale("log")
    ax.set_xlabel("n / d")
    ax.set_ylabel("generator rho")
    ax.figure.colorbar(mesh, ax=ax)


def _phase_figure(grid, family: str, path: Path) -> None:
    from matplotlib.figure import Figure

    # Fixed margins: constrained layout costs more than the whole computation.
    fig = Figure(figsize=(4.4 * len(grid.rules), 7.2))
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.08, top=0.88, wspace=0.35, hspace=0.4)
    axes = fig.subplots(2, len(grid.rules), squeeze=False)
    for col, rule in enumerate(grid.rules):
        _grid_heatmap(axes[0, col], grid, grid.best_p[rule], f"{rule}: best keep fraction p", "viridis", 0.0, 1.0)
        _grid_heatmap(
            axes[1, col], grid, grid.ratio[rule], f"{rule}: E(best p) / E(p=1)", "magma", None, 1.0, contour_at=0.99
        )
    fig.suptitle(f"{family}, rho* = {grid.rho_star:g}, lambda = {grid.lam:g} (contour: 1% gain)")
    fig.savefig(path, dpi=110)


def _winner_figure(grids, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.8))
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.12, top=0.78, wspace=0.3)
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, (family, grid) in zip(axes, grids):
        log_ratio = np.log2(grid.best_error["keep_hard"] / grid.best_error["keep_easy"])
        bound = max(float(np.nanmax(np.abs(log_ratio))), 1e-6)
        _grid_heatmap(
            ax, grid, log_ratio, f"{family}\nlog2 E(keep_hard) / E(keep_easy): < 0 keep-hard wins", "coolwarm",
            -bound, bound, contour_at=0.0,
        )
    fig.suptitle(f"Which rule wins (each at its best p), rho* = {grids[0][1].rho_star:g}")
    fig.savefig(path, dpi=110)


def _infinite_data_figure(theory, rho_star: float, path: Path) -> list[str]:
    """F(q) against p for keep-hard and keep-easy (Theorem 2); returns one summary line per rho."""
    import numpy as np
    from matplotlib.figure import Figure

    keep = np.geomspace(0.02, 1.0, 60)
    fig = Figure(figsize=(7, 4.8))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.11, top=0.9)
    ax = fig.subplots()
    lines = []
    for rho, colour in zip((1.0, 0.99, 0.9, 0.7), ("C0", "C1", "C2", "C3")):
        rho_g = float(theory.default_rho_g(rho, rho_star))
        hard = theory.infinite_data_error(rho, rho_star, rho_g, "keep_hard", keep)
        easy = theory.infinite_data_error(rho, rho_star, rho_g, "keep_easy", keep)
        ax.plot(keep, hard, color=colour, label=f"keep_hard, rho={rho:g}")
        ax.plot(keep, easy, color=colour, linestyle="--", label=f"keep_easy, rho={rho:g}")
        ax.axhline(np.arccos(rho) / np.pi, color=colour, linestyle=":", linewidth=0.8)
        hard_share = float(np.mean(hard[:-1] < easy[:-1]))
        winner = "keep_hard" if hard_share > 0.5 else "keep_easy"
        lines.append(
            f"  rho={rho:g}: keep_hard has the lower F(q) at {hard_share:.0%} of keep fractions p < 1 -> {winner}"
        )
    ax.set_xscale("log")
    ax.set_xlabel("keep fraction p")
    ax.set_ylabel("infinite-data error F(q)")
    ax.set_title(f"Theorem 2: infinite data, ridgeless, rho* = {rho_star:g} (dotted: all data)")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)
    return lines


def run_phase(args: argparse.Namespace) -> int:
    """``lessmore theory phase``: write phase.csv and the heatmaps under ``--out``."""
    import numpy as np

    from pipeline.theory import model as theory

    if args.grid < 2 or args.num_p < 2:
        return _fail("--grid and --num-p must be at least 2")
    if not 0 < args.n_over_d[0] < args.n_over_d[1]:
        return _fail(f"--n-over-d MIN MAX needs 0 < MIN < MAX (got {args.n_over_d[0]:g} {args.n_over_d[1]:g})")
    if not 0 <= args.rho_range[0] < args.rho_range[1] <= 1:
        return _fail(f"--rho-range MIN MAX needs 0 <= MIN < MAX <= 1 (got {args.rho_range[0]:g} {args.rho_range[1]:g})")
    try:
        grids = [
            (
                family,
                theory.phase_grid(
                    rho_star=args.rho_star,
                    lam=args.lam,
                    n_over_d=np.geomspace(*args.n_over_d, args.grid),
                    rho=np.linspace(*args.rho_range, args.grid),
                    keep_fractions=np.geomspace(0.02, 1.0, args.num_p),
                    rules=_PHASE_RULES,
                    label_aware=label_aware,
                ),
            )
            for label_aware, family in _FAMILIES
        ]
    except ValueError as error:
        return _fail(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "phase.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["label_aware", "rule", "rho", "n_over_d", "best_p", "best_error", "full_error", "ratio", "hard_beats_easy"]
        )
        for _, grid in grids:
            hard_wins = grid.winner() > 0
            for rule in grid.rules:
                for i, rho in enumerate(grid.rho):
                    for j, n_over_d in enumerate(grid.n_over_d):
                        writer.writerow(
                            [
                                int(grid.label_aware), rule, f"{rho:.6g}", f"{n_over_d:.6g}",
                                f"{grid.best_p[rule][i, j]:.6g}", f"{grid.best_error[rule][i, j]:.6g}",
                                f"{grid.full_error[i, j]:.6g}", f"{grid.ratio[rule][i, j]:.6g}", int(hard_wins[i, j]),
                            ]
                        )
    pictures = [args.out / "phase_label_agnostic.png", args.out / "phase_label_aware.png"]
    for (family, grid), path in zip(grids, pictures):
        _phase_figure(grid, family, path)
    winner_path = args.out / "phase_winner.png"
    _winner_figure(grids, winner_path)
    limit_path = args.out / "infinite_data_limit.png"
    summary = _infinite_data_figure(theory, args.rho_star, limit_path)
    print(f"wrote {csv_path}")
    for path in (*pictures, winner_path, limit_path):
        print(f"wrote {path}")
    print("Theorem 2 check (infinite data):")
    print("\n".join(summary))
    return 0


def run_advise(args: argparse.Namespace) -> int:
    """``lessmore theory advise``: print the recommended rule and keep fraction with the predicted gain."""
    from pipeline.theory import model as theory

    try:
        advice = theory.advise(
            pool_size=args.pool_size,
            generator_accuracy=args.generator_accuracy,
            oracle_accuracy=args.oracle_accuracy,
            dim=args.dim,
            lam=args.lam,
            allow_label_aware=not args.no_label_aware,
        )
    except ValueError as error:
        return _fail(str(error))
    print(
        f"generator accuracy {args.generator_accuracy:g} -> rho {advice.rho:.4f}; "
        f"oracle accuracy {args.oracle_accuracy:g} -> rho* {advice.rho_star:.4f}; "
        f"n/d = {advice.pool_size} / {advice.dim:g} = {advice.n_over_d:.3g}"
    )
    if advice.rule == "all" and not advice.label_aware:
        print("recommended: keep all data (no rule beats it by 1% or more)")
    else:
        kept = f"{advice.kept_examples} of {advice.pool_size} examples"
        if advice.label_aware:
            kept += ", then drop those the oracle marks wrong"
        print(f"recommended: {advice.label}, keep fraction p = {advice.keep_fraction:.3f} ({kept})")
    print(
        f"predicted error {advice.predicted_error:.4f} vs {advice.all_data_error:.4f} with all data: "
        f"gain {advice.gain:.1%} (ratio {1.0 - advice.gain:.3f})"
    )
    print("best keep fraction per rule:")
    for label, keep_fraction, error in advice.candidates:
        print(f"  {label:<18} p = {keep_fraction:.3f}  predicted error {error:.4f}")
    return 0


def run_collapse(args: argparse.Namespace) -> int:
    """``lessmore theory collapse``: write collapse.png and collapse.csv (error per round and rule)."""
    import numpy as np
    from matplotlib.figure import Figure

    from pipeline.theory import model as theory

    try:
        result = theory.collapse_loop(
            rho=args.rho,
            rho_star=args.rho_star,
            n_over_d=args.n_over_d,
            lam=args.lam,
            keep_fraction=args.keep_fraction,
            rounds=args.rounds,
            method="simulation" if args.simulate else "theory",
            dim=args.dim,
            seeds=args.seeds,
        )
    except ValueError as error:
        return _fail(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "collapse.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["round", *result.errors])
        for t in range(result.rounds + 1):
            writer.writerow([t, *(f"{errors[t]:.6g}" for errors in result.errors.values())])
    fig = Figure(figsize=(7, 4.8))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.11, top=0.86)
    ax = fig.subplots()
    rounds = np.arange(result.rounds + 1)
    for label, errors in result.errors.items():
        ax.plot(rounds, errors, marker="o", linestyle="--" if "correct" in label else "-", label=label)
    ax.set_xlabel("round (0 = initial generator)")
    ax.set_ylabel("test error")
    how = f"simulation, d = {args.dim}, {args.seeds} chains" if args.simulate else "deterministic equivalent"
    ax.set_title(
        f"Self-training collapse ({how})\nrho0={result.rho:g}, rho*={result.rho_star:g}, n/d={result.n_over_d:g}, "
        f"p={result.keep_fraction:g}, lambda={result.lam:g}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    png_path = args.out / "collapse.png"
    fig.savefig(png_path, dpi=110)
    print(f"wrote {csv_path}")
    print(f"wrote {png_path}")
    width = max(len(label) for label in result.errors)
    for label, errors in result.errors.items():
        print(f"  {label:<{width}}  " + " ".join(f"{e:.3f}" for e in errors))
    return 0

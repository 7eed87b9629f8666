"""The sweep report's figures (PNG): error against p, the phase diagram, the rule winner, the theory overlay, the
learning curve, oracle noise and the collapse loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.plots import heatmap, pyplot
from pipeline.sweep.calibrate import Calibration, quality_order, variant_label
from pipeline.sweep.measure import Measurements, bootstrap_mean, named_rng, round_matrix


def plot_error_vs_p(meas: Measurements, cal: Calibration, path: Path, group: str, reference_error: float | None):
    """``error_vs_p.png``: error against keep fraction on one group of problems, a panel per (generator, n),
    a line per rule (and oracle noise) with its bootstrap band."""
    plt = pyplot()
    variants = quality_order(meas, cal)
    sizes = meas.sizes()
    rules = [r for r in meas.rules() if r not in ("all", "correct_only")] or meas.rules()
    fig, axes = plt.subplots(len(variants), len(sizes), figsize=(3.6 * len(sizes), 2.9 * len(variants)),
                             squeeze=False, sharey=True)
    colors = {r: f"C{i}" for i, r in enumerate(sorted(set(rules) | {"all", "correct_only"}))}
    keep = sorted({k[4] for k in meas.cells})
    for i, variant in enumerate(variants):
        for j, n in enumerate(sizes):
            ax = axes[i][j]
            for rule in rules:
                for eta in sorted({k[5] for k in meas.cells if k[3] == rule}):
                    curve = meas.curve(variant, n, rule, eta)
                    if not any(p < 1 for p, _ in curve):
                        continue
                    stats = [meas.error(k, group) for _, k in curve]
                    ps = [math.log10(p) for p, _ in curve]  # a linear axis over log10 p: cheap ticks
                    label = rule if eta == 0 else f"{rule} eta={eta:g}"
                    ax.plot(ps, [s[0] for s in stats], "o-" if eta == 0 else "s--", color=colors[rule],
                            label=label, alpha=1.0 if eta == 0 else 0.6)
                    ax.fill_between(ps, [s[1] for s in stats], [s[2] for s in stats], color=colors[rule], alpha=0.15)
            if reference_error is not None:
                ax.axhline(reference_error, color="gray", ls=":", lw=1, label="student before training")
            ax.set_xticks([math.log10(p) for p in keep], [f"{p:g}" for p in keep], fontsize=7)
            ax.set_title(f"{variant_label(variant)}, n={n}", fontsize=9)
            if i == len(variants) - 1:
                ax.set_xlabel("keep fraction p (log scale)")
            if j == 0:
                ax.set_ylabel(f"error ({group})")
            ax.grid(alpha=0.3)
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(6, len(handles)),
               fontsize=8)
    fig.suptitle(f"Error against keep fraction ({group}; bands: {int(100 * meas.confidence)}% bootstrap over "
                 "seeds and problems)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_phase(tables, cal: Calibration, path: Path):
    """``phase_diagram.png``: per rule, best p and E(best p)/E(1) over (n, generator); False when nothing to draw."""
    plt = pyplot()
    if not tables:
        return False
    fig, axes = plt.subplots(len(tables), 2, figsize=(9, 2.4 + 1.4 * len(tables)), squeeze=False)
    for row, (rule, t) in enumerate(tables.items()):
        ylabels = [variant_label(v, cal) for v in t["variants"]]
        xlabels = [str(n) for n in t["sizes"]]
        text_p = [[("" if np.isnan(b) else f"{b:g}") for b in r] for r in t["best_p"]]
        text_r = [[("" if np.isnan(x) else f"{x:.2f}" + ("*" if s else "")) for x, s in zip(r, sr)]
                  for r, sr in zip(t["ratio"], t["significant"])]
        im = heatmap(axes[row][0], np.log10(t["best_p"]), f"{rule}: best p", "viridis", vmin=-2, vmax=0,
                     xlabels=xlabels, ylabels=ylabels, text=text_p)
        axes[row][0].set_xlabel("pool size n")
        fig.colorbar(im, ax=axes[row][0], label="log10 best p")
        im = heatmap(axes[row][1], t["ratio"], f"{rule}: E(best p)/E(1)  (* interval excludes 0)", "RdBu", vmin=0.8,
                     vmax=1.2, xlabels=xlabels, ylabels=ylabels, text=text_r)
        axes[row][1].set_xlabel("pool size n")
        fig.colorbar(im, ax=axes[row][1], label="ratio (<1: less is more)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_winner(tables, cal: Calibration, path: Path) -> bool:
    """``rule_winner.png``: E(keep-hard) - E(keep-easy) at matched p over (n, generator); False when unmeasured."""
    plt = pyplot()
    if not tables:
        return False
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.2), squeeze=False)
    for ax, (hard, easy, variants, sizes, grid) in zip(axes[0], tables):
        values = [[np.nan if w is None else w["mean_difference"] for w in row] for row in grid]
        text = [["" if w is None else f"{w['mean_difference']:+.3f}" + {1: " H", -1: " E", 0: ""}[w["sign"]]
                 for w in row] for row in grid]
        lim = max(0.02, np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.02)
        heatmap(ax, values, f"E({hard}) - E({easy})\n(H/E: significant winner at matched p)", "RdBu_r", -lim, lim,
                xlabels=[str(n) for n in sizes], ylabels=[variant_label(v, cal) for v in variants], text=text)
        ax.set_xlabel("pool size n")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_theory(over, phase, cal: Calibration, tolerance: float, path: Path) -> bool:
    """``theory_overlay.png``: the calibrated theory's keep-hard ratio, boundary and best p over (n, rho), measured
    keep-hard cells on top; False without a calibrated theory (``over`` is :func:`pipeline.sweep.predict.overlay`)."""
    plt = pyplot()
    if over is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x, y = over.pool_sizes, over.rho
    im = axes[0].pcolormesh(x, y, over.ratio, cmap="RdBu", vmin=0.6, vmax=1.4, shading="auto")
    if np.nanmin(over.ratio_vs_baseline) < 1 - tolerance < np.nanmax(over.ratio_vs_baseline):
        axes[0].contour(x, y, over.ratio_vs_baseline, levels=[1 - tolerance], colors="k", linewidths=1.5)
    axes[0].set_xscale("log")
    fig.colorbar(im, ax=axes[0], label="E(best p)/E(1)")
    axes[0].set_title(f"theory: keep_hard, d_eff={over.dim:.0f}, lambda={over.lam:g}, oracle: {over.oracle}\n"
                      "(black: where keep-hard beats p = 1 and random; squares: measured,\nthick edge: significant)",
                      fontsize=8)
    axes[0].set_xlabel("pool size n")
    axes[0].set_ylabel(f"generator cosine rho ({cal.task} map)")
    if phase is not None:
        for i, v in enumerate(phase["variants"]):
            for j, n in enumerate(phase["sizes"]):
                r = phase["ratio"][i, j]
                if np.isfinite(r) and v in cal.variants:
                    sig = phase["significant"][i, j]
                    axes[0].scatter([n], [cal.variants[v].rho], c=[r], cmap="RdBu", vmin=0.6, vmax=1.4, marker="s",
                                    s=160, edgecolors="k" if sig else "gray", linewidths=2 if sig else 0.8)
    im = axes[1].pcolormesh(x, y, np.log10(over.best_p), cmap="viridis", vmin=-2, vmax=0, shading="auto")
    axes[1].set_xscale("log")
    fig.colorbar(im, ax=axes[1], label="log10 predicted best p")
    axes[1].set_title("theory: best keep fraction", fontsize=9)
    axes[1].set_xlabel("pool size n")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_learning_curve(cal: Calibration, path: Path) -> bool:
    """``learning_curve.png``: each variant's random-subset learning curve, with the theory at its fitted d_eff and
    lambda where there is a fit; False without any curve."""
    from pipeline.theory import model as theory

    plt = pyplot()
    curves = {v: vc for v, vc in sorted(cal.variants.items()) if vc.curve}
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (variant, vc) in enumerate(curves.items()):
        xs, ys = zip(*vc.curve)
        ax.plot(xs, ys, "o", color=f"C{i}", label=f"{variant_label(variant, cal)} measured")
        ax.axhline(math.acos(min(vc.rho, 1.0)) / math.pi, color=f"C{i}", ls=":", lw=1)
        if vc.fit is None:
            continue
        grid = np.geomspace(min(xs) / 2, max(xs) * 2, 60)
        pred = theory.asymptotic_error_array(vc.dim / grid, vc.rho, 0.0, 0.0, "all", 1.0, vc.lam)
        ax.plot(grid, pred, "-", color=f"C{i}", label=f"theory, d_eff={vc.dim:.0f}, lambda={vc.lam:g}"
                + ("" if vc.fit["fit_ok"] else " (rejected)"))
    ax.set_xscale("log")
    ax.set_xlabel("training problems (random subsets)")
    ax.set_ylabel(f"error in theory units ({cal.task} map)")
    ax.set_title("learning curve and the fitted effective dimension (no line: under 4 sizes,\nnot fitted; dotted: "
                 "the generator's own error)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_oracle_noise(meas: Measurements, cal: Calibration, path: Path) -> bool:
    """``oracle_noise.png``: curated error against oracle noise eta; False without noisy cells."""
    plt = pyplot()
    noisy = sorted({k[:5] for k in meas.cells if k[5] > 0})
    if not noisy:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, base in enumerate(noisy):
        etas = sorted({k[5] for k in meas.cells if k[:5] == base})
        stats = [meas.error(base + (eta,)) for eta in etas]
        ax.errorbar(etas, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                    fmt="o-", color=f"C{i}", capsize=3, label=f"{base[0]} n={base[2]} {base[3]} p={base[4]:g}")
        full = meas.error(meas.baseline(base[:2], base[2], base[3]))
        ax.axhline(full[0], color=f"C{i}", ls=":", lw=1)
    ax.set_xlabel("oracle noise eta (fraction of random difficulty scores)")
    ax.set_ylabel("error (overall)")
    ax.set_title("curation under a noisier oracle (dotted: p = 1)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_loop(chains, problem_ids, reference_error, resamples, confidence, path: Path) -> bool:
    """``collapse_loop.png``: held-out accuracy per round of each loop chain; False without a loop."""
    plt = pyplot()
    if not chains:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (rule, rounds) in enumerate(sorted(chains.items())):
        m = round_matrix(rounds, problem_ids)
        stats = [bootstrap_mean(m[r][None, :], resamples, confidence, named_rng("loop-plot", rule, r))
                 for r in range(len(m))]
        xs = [e["round"] for e in rounds]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                    fmt="o-", capsize=3, color=f"C{i}", label=rule)
    if reference_error is not None:
        ax.axhline(1 - reference_error, color="gray", ls=":", lw=1, label="student before training")
    ax.set_xlabel("round (1: trained on the generator's data; t > 1: on round t-1's model's data)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("collapse loop", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True



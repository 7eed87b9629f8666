"""Plotting helpers shared by the reports and the theory commands: matplotlib on the Agg backend, and one heatmap."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: files only, no display (headless machines, Ray workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(ax, values, title: str, cmap: str, vmin=None, vmax=None, *, x=None, y=None, xlabels=None,
            ylabels=None, text=None, contour_at=None):
    """Draw ``values`` (rows along y, columns along x) as coloured cells on ``ax``; returns the mesh for a colour bar.

    Args:
        values: a 2-D array; NaN cells stay blank.
        title: the axes title.
        cmap, vmin, vmax: the colour map and its range (None: the data's range).
        x, y: cell centres (e.g. a log-spaced n/d axis); default 0, 1, 2, ... (categories).
        xlabels, ylabels: tick labels, one per column / row (categorical axes).
        text: rows x columns of strings written in the cells.
        contour_at: draw the level line at this value, when the values cross it.
    """
    import numpy as np

    raw = np.asarray(values, dtype=float)
    x = np.arange(raw.shape[1]) if x is None else x
    y = np.arange(raw.shape[0]) if y is None else y
    mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(raw), shading="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
    if contour_at is not None and np.nanmin(raw) < contour_at < np.nanmax(raw):
        ax.contour(x, y, raw, levels=[contour_at], colors="k", linewidths=1.0)
    if xlabels is not None:
        ax.set_xticks(x, xlabels, fontsize=8)
    if ylabels is not None:
        ax.set_yticks(y, ylabels, fontsize=8)
    for i, row in enumerate(text or ()):
        for j, cell in enumerate(row):
            ax.text(x[j], y[i], cell, ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    return mesh

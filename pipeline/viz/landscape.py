"""Figures of a network's loss landscape (pipeline.landscape): log-scaled contours and a 3-D surface of the loss
over the plane, every optimizer's path on them. Each returns a matplotlib Figure; nothing is saved here."""
from __future__ import annotations

from typing import Mapping

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from pipeline.viz.canvas import legend_outside
from pipeline.viz.styles import looks

Paths = Mapping[str, tuple[np.ndarray, np.ndarray]]  # label -> ((T, 2) coordinates, (T,) losses)


def axis_labels(explained: tuple[float, float] | None, kind: str) -> tuple[str, str]:
    """What each direction is: a principal direction and its share of the paths, or a random one."""
    if explained is None:
        return "random direction 1 (filter-normalised)", "random direction 2 (filter-normalised)"
    return f"PC1: {explained[0]:.0%} of the paths' variance", f"PC2: {explained[1]:.0%} of the paths' variance"


def _draw_paths(ax, paths: Paths, lift: bool = False) -> None:
    """Each path as a line with its end marked; the shared start once, in black."""
    styles = looks(list(paths))
    for label, (coords, losses) in paths.items():
        colour, line = styles[label]
        z = (np.log10(np.maximum(losses, 1e-12)),) if lift else ()
        ax.plot(coords[:, 0], coords[:, 1], *z, color=colour, linestyle=line, linewidth=2, label=label, zorder=10)
        ax.plot(coords[-1:, 0], coords[-1:, 1], *(zz[-1:] for zz in z), marker="*", markersize=12, color=colour,
                markeredgecolor="black", linestyle="none", zorder=11)
    first = next(iter(paths.values()))
    start = (np.log10(max(first[1][0], 1e-12)),) if lift else ()
    ax.plot(first[0][:1, 0], first[0][:1, 1], *start, marker="o", markersize=8, color="black",
            linestyle="none", label="start (shared)", zorder=12)


def contour_figure(xs: np.ndarray, ys: np.ndarray, loss: np.ndarray, paths: Paths, labels: tuple[str, str],
                   title: str) -> Figure:
    """Log-scaled filled contours of the loss over the plane, with every path (start and end marked)."""
    figure = Figure(figsize=(9, 6.5), layout="constrained")
    ax = figure.subplots()
    finite = loss[np.isfinite(loss)]
    low, high = max(float(finite.min()), 1e-12), max(float(finite.max()), 1e-12)
    levels = np.geomspace(low, max(high, low * 1.0001), 25)
    filled = ax.contourf(xs, ys, np.clip(loss, low, high), levels=levels, norm=colors.LogNorm(low, high),
                         cmap="viridis")
    ax.contour(xs, ys, np.clip(loss, low, high), levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
    figure.colorbar(filled, ax=ax, label="training loss (log scale)", format="%.3g")
    _draw_paths(ax, paths)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    figure.suptitle(title, fontsize=10)
    legend_outside(figure)
    return figure


def surface_figure(xs: np.ndarray, ys: np.ndarray, loss: np.ndarray, paths: Paths, labels: tuple[str, str],
                   title: str) -> Figure:
    """The loss over the plane as a 3-D surface (log10 height), every path lifted to its own loss."""
    figure = Figure(figsize=(9, 7), layout="constrained")
    ax = figure.add_subplot(projection="3d", computed_zorder=False)  # paths drawn over the surface, not under
    x, y = np.meshgrid(xs, ys)
    height = np.log10(np.maximum(np.where(np.isfinite(loss), loss, np.nanmax(loss[np.isfinite(loss)])), 1e-12))
    ax.plot_surface(x, y, height, cmap="viridis", alpha=0.6, linewidth=0, antialiased=True, zorder=1)
    _draw_paths(ax, paths, lift=True)
    ax.set_xlabel(labels[0], fontsize=8)
    ax.set_ylabel(labels[1], fontsize=8)
    ax.set_zlabel("log10 training loss", fontsize=8)
    figure.suptitle(title, fontsize=10)
    legend_outside(figure)
    return figure

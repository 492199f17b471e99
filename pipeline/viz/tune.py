"""Figures of a tune: lr sensitivity, seed bands, performance profiles and basin maps. Each returns a matplotlib
Figure and never saves or shows it."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from pipeline.viz.canvas import legend_outside
from pipeline.viz.styles import looks

Band = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, mean, min, max


def _panels(count: int, width: float = 5.5, height: float = 4.0) -> tuple[Figure, list]:
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def sensitivity_figure(lines: Mapping[str, Mapping[str, Sequence[tuple[float, float, bool]]]], ylabel: str,
                       log_y: bool) -> Figure:
    """Score against lr (log x), one line per optimizer and one panel per workload; pruned trials as x."""
    figure, axes = _panels(len(lines))
    style = looks(list(dict.fromkeys(name for per in lines.values() for name in per)))
    for ax, (workload, per) in zip(axes, lines.items()):
        for name, points in per.items():
            if not points:
                continue
            lr, score, pruned = (np.array(column) for column in zip(*points))
            ax.plot(lr, score, style[name][1], marker="o", ms=3, color=style[name][0], label=name)
            ax.plot(lr[pruned], score[pruned], "x", ms=8, color=style[name][0])
        ax.set(xscale="log", xlabel="learning rate", ylabel=ylabel, title=f"{workload}: score against lr "
               "(x = pruned)")
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    legend_outside(figure, axes[0], fontsize=8)
    return figure


def seeds_figure(panels: Mapping[str, Mapping[str, Band]], ylabel: str, log_y: bool = False) -> Figure:
    """Mean line and min-max band over seeds per optimizer; one panel per x axis and workload (their titles)."""
    figure, axes = _panels(len(panels))
    style = looks(list(dict.fromkeys(name for per in panels.values() for name in per)))
    for ax, (title, per) in zip(axes, panels.items()):
        for name, (x, mean, low, high) in per.items():
            ax.plot(x, mean, style[name][1], color=style[name][0], label=name)
            ax.fill_between(x, low, high, color=style[name][0], alpha=0.2, linewidth=0)
        xlabel = title.rsplit(" against ", 1)[-1]
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    legend_outside(figure, axes[0], fontsize=8)
    return figure


def profile_figure(taus: np.ndarray, curves: Mapping[str, np.ndarray], xlabel: str, log_x: bool) -> Figure:
    """Performance profiles: share of workloads within a factor tau of the best, per optimizer."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    style = looks(list(curves))
    for name, share in curves.items():
        ax.step(taus, share, style[name][1], where="post", color=style[name][0], label=name)
    ax.set(xlabel=xlabel, ylabel="share of workloads", ylim=(-0.02, 1.02),
           title="Performance profiles (higher and further left is better)")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    legend_outside(figure, fontsize=8)
    return figure


BASIN_MARGINS_IN = (0.6, 0.1, 0.35, 0.6)  # left, right, bottom, top of basins_figure: its labels and titles


def basins_figure(maps: Mapping[str, Mapping[str, np.ndarray]], windows: Mapping[str, tuple]) -> Figure:
    """One panel per workload (row) and optimizer (column): the starts that reached the global minimum. Laid out
    by hand with fixed room (in inches) for labels and titles: constrained layout took 2-3 s for a tune's 36
    panels, on the report's critical path; a row's panels share its window, so only the first labels y."""
    rows, columns = len(maps), max(len(per) for per in maps.values())
    figure = Figure(figsize=(max(2.2 * columns, 5.5), 2.4 * rows))  # at least the title's width
    axes = figure.subplots(rows, columns, squeeze=False, sharex="row", sharey="row")
    for row, (workload, per) in zip(axes, maps.items()):
        (x0, x1), (y0, y1) = windows[workload]
        for column, (ax, (name, reached)) in enumerate(zip(row, per.items())):
            ax.imshow(reached, origin="lower", extent=(x0, x1, y0, y1), cmap="Greens", vmin=0, vmax=1.4,
                      aspect="auto", interpolation="nearest")
            ax.set_title(f"{name}: {reached.mean():.0%}", fontsize=8)
            ax.tick_params(labelsize=6, left=column == 0, labelleft=column == 0)
        row[0].set_ylabel(workload)
        for ax in row[len(per):]:
            ax.set_visible(False)
    width, height = figure.get_size_inches()
    left, right, bottom, top = BASIN_MARGINS_IN
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                           wspace=0.12, hspace=0.45)
    figure.suptitle("Starts that reach the global minimum (green), tuned settings", fontsize=10)
    return figure

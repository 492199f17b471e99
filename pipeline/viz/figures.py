"""Figures for talks: every function returns a matplotlib Figure (or, for a GIF, its frames as images) and
never saves or shows it."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib import colors, ticker
from matplotlib.figure import Figure

from pipeline.viz.canvas import legend_outside
from pipeline.viz.styles import looks
from pipeline.workloads.toy.functions import Function2D

Paths = Mapping[str, np.ndarray]  # label -> (T, 2) positions
_GRID = 300  # points per axis for contours and surfaces
_FLOOR = 1e-12  # smallest gap to f_min drawn on log axes
PATH = "path"  # the gid of what draw_paths and surface_paths add (viz/paths.py draws them over a background)


def _finite(path: np.ndarray) -> np.ndarray:
    """The leading run of finite positions (a diverged path ends where it left the reals)."""
    ok = np.isfinite(path).all(axis=1)
    stop = len(ok) if ok.all() else int(np.argmin(ok))
    return path[:stop]


def bounds(fn: Function2D, paths: Paths) -> tuple[tuple[float, float], tuple[float, float]]:
    """The plot window widened to hold the paths, but never beyond three times its own size."""
    out = []
    for axis, (low, high) in enumerate(fn.window):
        span = high - low
        points = [p[:, axis] for p in map(_finite, paths.values()) if len(p)]
        lo = min([low] + [float(v.min()) for v in points])
        hi = max([high] + [float(v.max()) for v in points])
        margin = 0.05 * (hi - lo)
        out.append((max(lo - margin, low - span), min(hi + margin, high + span)))
    return out[0], out[1]


def grid_of(fn: Function2D, paths: Paths):
    (x0, x1), (y0, y1) = bounds(fn, paths)
    xs, ys = np.meshgrid(np.linspace(x0, x1, _GRID), np.linspace(y0, y1, _GRID))
    with np.errstate(over="ignore", invalid="ignore"):  # steep functions overflow far out; inf is fine
        return xs, ys, fn(xs, ys)


def _height(fn: Function2D, values: np.ndarray) -> np.ndarray:
    """What the surface plot draws: f itself, or log10(1 + f - f_min) for steep functions."""
    return np.log10(1.0 + np.maximum(values - fn.f_min, 0.0)) if fn.log_scale else values


def contour_figure(fn: Function2D, paths: Paths, title: str | None = None) -> Figure:
    """Filled contours of `fn` with each path, its start and end, and the known minima."""
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax = fig.add_subplot()
    grid = grid_of(fn, paths)
    contours(fig, [ax], fn, grid)
    draw_paths(ax, paths)
    _minima(ax, fn, grid, size=260)
    ax.set(xlabel="x", ylabel="y", title=title or f"{fn.title}: descent paths")
    legend_outside(fig, ax)
    return fig


def contours(fig: Figure, axes: Sequence, fn: Function2D, grid: tuple) -> None:
    """The same filled contours of `fn` on every axes (log gap to f_min for steep functions), one colour bar."""
    xs, ys, zs = grid
    if fn.log_scale:
        gap = np.maximum(zs - fn.f_min, _FLOOR)
        # Whole decades at the ends, so the colour bar's ticks land on powers of ten.
        low, high = np.floor(np.log10(max(gap.min(), 1e-3))), np.ceil(np.log10(gap.max()))
        levels = np.logspace(low, high, int(4 * (high - low)) + 1)
        for ax in axes:
            filled = ax.contourf(xs, ys, gap, levels=levels, norm=colors.LogNorm(), cmap="viridis", extend="min")
        fig.colorbar(filled, ax=axes, label="f(x, y) − f_min (log scale)", ticks=ticker.LogLocator(),
                     format=ticker.LogFormatterSciNotation())
    else:
        for ax in axes:
            filled = ax.contourf(xs, ys, zs, levels=30, cmap="viridis")
        fig.colorbar(filled, ax=axes, label="f(x, y)")
    for ax in axes:
        ax.contour(xs, ys, zs, levels=filled.levels if not fn.log_scale else fn.f_min + levels,
                   colors="white", linewidths=0.3, alpha=0.5)


def _minima(ax, fn: Function2D, grid: tuple, size: float) -> None:
    """The global minima as stars, and the grid's window as the limits (not autoscaling: a path that left for
    1e308 would overflow the tick arithmetic)."""
    minima, (xs, ys, _) = np.asarray(fn.minima), grid
    ax.scatter(minima[:, 0], minima[:, 1], marker="*", s=size, c="gold", edgecolors="black", zorder=5,
               label="global minimum")
    ax.set(xlim=(xs.min(), xs.max()), ylim=(ys.min(), ys.max()))


def panels_figure(fn: Function2D, paths: Paths) -> Figure:
    """Small multiples: one contour panel per path, the same colour scale in all, so no path hides another."""
    columns = min(4, len(paths))
    rows = -(-len(paths) // columns)
    fig = Figure(figsize=(3.4 * columns + 1.2, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    grid = grid_of(fn, paths)
    contours(fig, list(axes[: len(paths)]), fn, grid)
    for ax, (label, path) in zip(axes, paths.items()):
        draw_paths(ax, {label: path}, looks(list(paths))[label])
        _minima(ax, fn, grid, size=120)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(paths):]:
        ax.set_visible(False)
    fig.suptitle(f"{fn.title}: one panel per optimizer")
    return fig


def draw_paths(ax, paths: Paths, style: tuple[str, str] | None = None) -> None:
    """Each path on a contour plot's axes, with its start and end (and their legend entries)."""
    styles = looks(list(paths))
    for label, raw in paths.items():
        path, (color, dashes) = _finite(raw), style or styles[label]
        if not len(path):
            continue
        ax.plot(path[:, 0], path[:, 1], dashes, color=color, lw=1.8, label=label, zorder=3, gid=PATH)
        ax.scatter(*path[0], marker="o", s=70, color=color, edgecolors="black", zorder=4, gid=PATH)
        ax.scatter(*path[-1], marker="X", s=110, color=color, edgecolors="black", zorder=4, gid=PATH)
    ax.scatter([], [], marker="o", c="lightgray", edgecolors="black", label="start", gid=PATH)
    ax.scatter([], [], marker="X", c="lightgray", edgecolors="black", label="end", gid=PATH)


def surface_figure(fn: Function2D, paths: Paths, title: str | None = None) -> Figure:
    """A 3-D surface of `fn` with each path drawn on it."""
    fig = Figure(figsize=(8.0, 6.5), layout="constrained")
    # computed_zorder=False: draw in call order, so the paths stay on top of the surface.
    ax = fig.add_subplot(projection="3d", computed_zorder=False)
    xs, ys, zs = grid_of(fn, paths)
    surface = _height(fn, zs)
    ax.plot_surface(xs, ys, surface, cmap="viridis", alpha=0.55, linewidth=0, antialiased=True,
                    rcount=80, ccount=80)
    surface_paths(ax, fn, (xs, ys), paths)
    minima = np.asarray(fn.minima)
    ax.scatter(minima[:, 0], minima[:, 1], _height(fn, np.full(len(minima), fn.f_min)), marker="*", s=200,
               c="gold", edgecolors="black", label="global minimum")
    # The surface's box, not autoscaling: a path that left for 1e308 would overflow the tick arithmetic.
    finite = surface[np.isfinite(surface)]
    pad = 0.02 * (finite.max() - finite.min() or 1.0)
    ax.set(xlim=(xs.min(), xs.max()), ylim=(ys.min(), ys.max()), zlim=(finite.min() - pad, finite.max() + pad))
    zlabel = "log10(1 + f − f_min)" if fn.log_scale else "f(x, y)"
    ax.set(xlabel="x", ylabel="y", zlabel=zlabel, title=title or f"{fn.title}: surface and paths")
    ax.view_init(elev=35, azim=-60)
    legend_outside(fig, ax)
    return fig


def surface_paths(ax, fn: Function2D, grid: tuple, paths: Paths) -> None:
    """Each path on the surface's axes, with its start and end."""
    (xs, ys), styles = grid, looks(list(paths))
    for label, raw in paths.items():
        path, (color, dashes) = _finite(raw), styles[label]
        if not len(path):
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            heights = _height(fn, fn(path[:, 0], path[:, 1]))
        # 3-D axes draw past their box: blank (NaN) what lies outside the surface's window instead.
        inside = ((xs.min() <= path[:, 0]) & (path[:, 0] <= xs.max()) & (ys.min() <= path[:, 1])
                  & (path[:, 1] <= ys.max()))
        px, py, pz = (np.where(inside, values, np.nan) for values in (path[:, 0], path[:, 1], heights))
        ax.plot(px, py, pz, dashes, color=color, lw=2.2, label=label, zorder=10, gid=PATH)
        ax.scatter(px[0], py[0], pz[0], marker="o", s=50, color=color, edgecolors="black", gid=PATH)
        ax.scatter(px[-1], py[-1], pz[-1], marker="X", s=80, color=color, edgecolors="black", gid=PATH)


def loss_figure(fn: Function2D, losses: Mapping[str, np.ndarray], title: str | None = None,
                frame: tuple[int, float] | None = None) -> Figure:
    """Gap to the minimum, f - f_min, against step on a log axis, one line per label; `frame` (last step,
    largest gap) fixes the axes instead of fitting them to the lines (viz/paths.loss_png draws run after run)."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    loss_lines(ax, fn, losses)
    ax.set_yscale("log")
    # No minor ticks: over the 10-14 decades a descent spans they are a smear, and drawing them was half the
    # figure's time (0.13 of 0.23 s; a tune draws one for each seed run).
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.set(xlabel="step", ylabel="f(x, y) − f_min (log scale)", title=title or f"{fn.title}: loss")
    if frame is not None:
        ax.set(xlim=(0, frame[0]), ylim=(_FLOOR, frame[1]))
    ax.grid(True, which="major", alpha=0.3)
    legend_outside(fig, ax)
    return fig


def loss_lines(ax, fn: Function2D, losses: Mapping[str, np.ndarray]) -> None:
    """One line of f - f_min per label, against step."""
    styles = looks(list(losses))
    for label, loss in losses.items():
        gap = np.asarray(loss, dtype=float) - fn.f_min
        # Clipped to 1e30 (a diverging run's 1e300 would overflow the log axis), floored for log(0).
        gap = np.where(np.isfinite(gap), np.clip(gap, _FLOOR, 1e30), np.nan)
        ax.plot(np.arange(len(gap)), gap, styles[label][1], color=styles[label][0], lw=1.8, label=label, gid=PATH)


def curves_figure(histories: Mapping[str, Sequence[Mapping[str, float]]], title: str = "Training curves") -> Figure:
    """Loss and accuracy against epoch, train dashed and validation solid, one colour per label."""
    fig = Figure(figsize=(11.0, 4.5), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    styles = looks(list(histories))
    for label, history in histories.items():
        color = styles[label][0]
        epochs = np.arange(1, len(history) + 1)
        for split, style in (("train", "--"), ("val", "-")):
            loss_ax.plot(epochs, [row[f"{split}_loss"] for row in history], style, color=color, marker="o",
                         ms=3, label=f"{label} {split}")
            acc_ax.plot(epochs, [100 * row[f"{split}_acc"] for row in history], style, color=color, marker="o",
                        ms=3, label=f"{label} {split}")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Row-normalised confusion matrix (true class per row) with the counts written in each cell."""
    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(8.0, 7.0), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    for row, col in np.ndindex(confusion.shape):
        ax.text(col, row, str(confusion[row, col]), ha="center", va="center", fontsize=8,
                color="white" if rates[row, col] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return fig


def overlay_figure(lines: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
                   title: str, percent: bool = False, integer_x: bool = True) -> Figure:
    """One line per label (e.g. per optimizer) of one metric, with a legend: the notebook's overlay plots."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    styles = looks(list(lines))
    for label, (xs, ys) in lines.items():
        ys = np.asarray(ys, dtype=float) * (100 if percent else 1)
        ax.plot(xs, ys, styles[label][1], marker="o", color=styles[label][0], ms=3.5, lw=1.8, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel + (" (%)" if percent else ""), title=title)
    if integer_x:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    legend_outside(fig, ax)
    return fig


def paths_frames(fn: Function2D, paths: Paths, frames: int = 60) -> list:
    """Frames (PIL images) of every path growing over the contour plot, for a GIF.

    The figure is laid out and drawn once without the paths; each frame then restores that background and draws
    only the paths, the markers over them and the title (blitting): 60 frames of 12 paths took 1.2 s against
    14.8 s redrawing the whole figure per frame (docs/performance.md), and no frame shifts as the paths grow.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig = contour_figure(fn, paths, title=f"{fn.title}: descent paths")
    canvas = FigureCanvasAgg(fig)
    ax = fig.axes[0]
    trimmed = {label: _finite(path) for label, path in paths.items()}
    lines = [line for line in ax.get_lines() if line.get_label() in trimmed]
    markers = sorted((c for c in ax.collections if c.get_zorder() > 3), key=lambda c: c.get_zorder())
    longest = max((len(path) for path in trimmed.values()), default=1)
    cut = np.unique(np.linspace(1, longest, min(frames, longest)).astype(int))
    for line in lines:
        line.set_visible(False)
    ax.title.set_alpha(0.0)  # keeps its place in the layout, but each frame writes its own text
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    for line in lines:
        line.set_visible(True)
    ax.title.set_alpha(1.0)
    images = []
    for end in cut:
        canvas.restore_region(background)
        for line in lines:
            path = trimmed[line.get_label()]
            line.set_data(path[:end, 0], path[:end, 1])
            ax.draw_artist(line)
        for artist in markers:
            ax.draw_artist(artist)
        ax.title.set_text(f"{fn.title}: step {end - 1} of {longest - 1}")
        ax.draw_artist(ax.title)
        images.append(Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB"))
    return images

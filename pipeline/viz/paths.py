"""One optimizer's path over a function's contour plot and surface, drawn fast for run after run (toy runs, tune's
seed runs): a function's figure is laid out and drawn once without a path, and each run's picture restores that
background and draws only its path, start, end, the minima over them and the legend (blitting, as
figures.paths_frames does for a GIF's frames). 0.02 s a picture against 0.2-0.3 s drawn in full.

The picture is figures.contour_figure's and surface_figure's for one path, but for its layout: the legend's room
is that of the longest optimizer name, so every run's axes have one size. A path that leaves the function's
window goes over a background whose window reaches further, by the first of REACH that holds it (the full
figures fit theirs to the path instead): each such background is drawn once too, so no path costs a full figure
(half of a tune's seed runs left the window, and their pictures took two thirds of the time).
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.optim.registry import optimizer_names
from pipeline.viz import figures
from pipeline.workloads.toy.functions import Function2D


@dataclass
class _Background:
    """A drawn figure without a path: its canvas, the saved pixels, its axes, what goes over a path."""

    figure: Figure
    canvas: FigureCanvasAgg
    pixels: Any
    ax: Any
    on_top: list  # artists the full figure draws after the paths (the minima)
    labels: list[str]  # the legend's entries in the full figure's order, the path's label first
    anchor: tuple[float, float]  # the legend's upper left corner, in figure coordinates


def contour_png(fn: Function2D, label: str, path: np.ndarray) -> bytes:
    """figures.contour_figure(fn, {label: path}) as PNG bytes."""
    return _picture(fn, label, path, "contour")


def surface_png(fn: Function2D, label: str, path: np.ndarray) -> bytes:
    """figures.surface_figure(fn, {label: path}) as PNG bytes."""
    return _picture(fn, label, path, "surface")


def loss_png(fn: Function2D, label: str, losses: np.ndarray, steps: int) -> bytes:
    """figures.loss_figure(fn, {label: losses}) as PNG bytes, on axes fixed at steps 0..`steps` and gaps from the
    floor to the largest in the window (every seed run of a tune on the same axes, the line cut off above)."""
    return _picture(fn, label, losses, "loss", steps)


def _loss_figure(fn: Function2D, losses: Mapping[str, np.ndarray], steps: int) -> Figure:
    """loss_figure framed to hold any descent from a start in the window: up to 10x its largest gap."""
    values = figures.grid_of(fn, {})[2] - fn.f_min
    return figures.loss_figure(fn, losses, frame=(steps, 10 * float(values[np.isfinite(values)].max())))


_FULL: dict[str, Callable[..., Figure]] = {"contour": figures.contour_figure, "surface": figures.surface_figure,
                                           "loss": _loss_figure}
# How far a picture's window reaches past the function's on each side, as a share of the window's span: none,
# then wider for paths that leave it. The last is figures.bounds' own limit (what lies beyond is cut off there too).
REACH = (0.0, 0.25, 0.5, 1.0)


def corners(fn: Function2D, reach: float) -> np.ndarray:
    """A placeholder path whose figures.bounds is the window widened by `reach` of its span on every side."""
    (x0, x1), (y0, y1) = fn.window
    dx, dy = reach * (x1 - x0), reach * (y1 - y0)
    return np.array([[x0 - dx, y0 - dy], [x1 + dx, y1 + dy]])


def reach_for(fn: Function2D, path: np.ndarray) -> float:
    """The first of REACH whose window holds `path` (its finite part) as figures.bounds frames it, else the last."""
    needed = figures.bounds(fn, {"": path})
    for reach in REACH:
        have = figures.bounds(fn, {"": corners(fn, reach)})
        if all(h[0] <= n[0] and n[1] <= h[1] for h, n in zip(have, needed)):
            return reach
    return REACH[-1]


def _picture(fn: Function2D, label: str, data: np.ndarray, kind: str, steps: int = 0) -> bytes:
    """`data` (a path, or losses for kind "loss") drawn over its background: the window that holds a path
    (REACH), or a loss axis of `steps` steps."""
    setting = steps if kind == "loss" else reach_for(fn, data)
    back = _background(fn, kind, setting)
    back.canvas.restore_region(back.pixels)
    ax, before = back.ax, (list(back.ax.lines), list(back.ax.collections))
    if kind == "contour":
        figures.draw_paths(ax, {label: data})
    elif kind == "loss":
        figures.loss_lines(ax, fn, {label: data})
    else:
        (xs, ys, _) = figures.grid_of(fn, {"": corners(fn, setting)})
        figures.surface_paths(ax, fn, (xs, ys), {label: data})
    added = [a for a in ax.lines if a not in before[0]] + [a for a in ax.collections if a not in before[1]]
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    labels = [label, *back.labels[1:]]
    legend = back.figure.legend([handles[name] for name in labels], labels, loc="upper left", fontsize="small",
                                bbox_to_anchor=back.anchor, borderaxespad=0.0)
    back.figure.legends.pop()
    try:
        for artist in [*added, *back.on_top]:
            if hasattr(artist, "do_3d_projection"):
                artist.do_3d_projection()
            ax.draw_artist(artist)
        back.figure.draw_artist(legend)
        return _encode(back.canvas)
    finally:
        for artist in added:
            artist.remove()


@functools.lru_cache(maxsize=None)
def _background(fn: Function2D, kind: str, setting: float) -> _Background:
    """The full figure for a placeholder path across the window widened by `setting` (REACH), or for a
    placeholder loss over `setting` steps, labelled with the longest optimizer name: laid out once (then frozen),
    and drawn again without the path and legend."""
    placeholder = max(optimizer_names(), key=len)
    if kind == "loss":
        figure = _FULL[kind](fn, {placeholder: np.full(2, fn.f_min + 1.0)}, int(setting))
    else:
        figure = _FULL[kind](fn, {placeholder: corners(fn, setting)})
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # the constrained layout, with room for the legend
    figure.set_layout_engine("none")
    ax, (legend,) = figure.axes[0], figure.legends
    box = legend.get_window_extent(canvas.get_renderer()).transformed(figure.transFigure.inverted())
    labels = [text.get_text() for text in legend.texts]
    path_artists = [a for a in [*ax.lines, *ax.collections] if a.get_gid() == figures.PATH]
    on_top = [a for a in ax.collections if a.get_label() == "global minimum"] if kind == "surface" else []
    for artist in [*path_artists, *on_top, *figure.legends]:
        artist.set_visible(False)
    canvas.draw()
    pixels = canvas.copy_from_bbox(figure.bbox)
    for artist in path_artists:
        artist.remove()
    figure.legends.clear()
    for artist in on_top:
        artist.set_visible(True)
    return _Background(figure, canvas, pixels, ax, on_top, labels, (box.x0, box.y1))


def _encode(canvas: FigureCanvasAgg) -> bytes:
    from PIL import Image  # noqa: PLC0415

    buffer = io.BytesIO()
    # RGB (every figure is opaque) at zlib level 1: the same pixels in half the time of RGBA at PIL's default
    # level 6, and smaller files (Ackley's contour 29 -> 15 ms, 239 -> 235 kB; its surface 47 -> 23 ms)
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    image.save(buffer, format="png", compress_level=1)
    return buffer.getvalue()

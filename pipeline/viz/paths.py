"""One optimizer's path over a function's contour plot and surface, drawn fast for run after run (toy runs, tune's
seed runs): a function's figure is laid out and drawn once without a path, and each run's picture restores that
background and draws only its path, start, end, the minima over them and the legend (blitting, as
figures.paths_frames does for a GIF's frames). 0.02 s a picture against 0.2-0.3 s drawn in full.

The picture is figures.contour_figure's and surface_figure's for one path, but for its layout: the legend's room
is that of the longest optimizer name, so every run's axes have one size. A path that leaves the function's
window (the full figures widen theirs to hold it) is drawn in full.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any, Callable

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


_FULL: dict[str, Callable[..., Figure]] = {"contour": figures.contour_figure, "surface": figures.surface_figure}


def _picture(fn: Function2D, label: str, path: np.ndarray, kind: str) -> bytes:
    if figures.bounds(fn, {label: path}) != figures.bounds(fn, {}):
        return _png(_FULL[kind](fn, {label: path}))
    back = _background(fn, kind)
    back.canvas.restore_region(back.pixels)
    ax, before = back.ax, (list(back.ax.lines), list(back.ax.collections))
    if kind == "contour":
        figures.draw_paths(ax, {label: path})
    else:
        (xs, ys, _) = figures.grid_of(fn, {})
        figures.surface_paths(ax, fn, (xs, ys), {label: path})
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
def _background(fn: Function2D, kind: str) -> _Background:
    """The full figure for a placeholder path inside the window, labelled with the longest optimizer name: laid
    out once (then frozen), and drawn again without the path and legend."""
    placeholder = max(optimizer_names(), key=len)
    start = np.asarray(fn.minima[0], dtype=float)
    figure = _FULL[kind](fn, {placeholder: np.stack([start, start])})
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
    Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).save(buffer, format="png")
    return buffer.getvalue()


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

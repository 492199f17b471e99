"""Figures stay drawable whatever the paths hold, and the sweep's GIF shows the paths growing."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline import compare
from pipeline.viz import figures
from pipeline.workloads.toy.functions import get_function


def test_a_path_that_ran_off_to_1e308_still_draws_inside_the_window():
    fn = get_function("rosenbrock")
    paths = {"fled": np.array([[-1.2, 1.0], [50.0, 50.0], [1e308, -1e308]]),
             "home": np.array([[0.0, 0.0], [1.0, 1.0]])}
    for figure in (figures.contour_figure(fn, paths), figures.surface_figure(fn, paths)):
        figure.savefig(io.BytesIO(), format="png")  # before: numpy.arange overflowed in the tick locator
        ax = figure.axes[0]
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert -10 < x0 < x1 < 10 and -10 < y0 < y1 < 10  # the plot window (widened at most 3x), not 1e308


def _pixels(figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def test_gif_frames_grow_the_paths_and_end_on_the_full_contour_plot(tmp_path):
    fn = get_function("ackley")
    paths = {"long": np.linspace([-3.0, 3.0], [0.0, 0.0], 40), "short": np.linspace([3.0, -2.0], [0.5, 0.5], 25)}
    frames = figures.paths_frames(fn, paths, frames=10)
    assert len(frames) == 10 and {frame.size for frame in frames} == {frames[0].size}
    full = _pixels(figures.contour_figure(fn, paths))
    below_title = slice(int(0.06 * full.shape[0]), None)  # each frame writes its own title

    def changed(image: np.ndarray) -> float:
        return float((np.abs(image - full)[below_title].sum(axis=2) > 30).mean())

    first, last = (np.asarray(frames[i]).astype(int) for i in (0, -1))
    assert last.shape == full.shape and changed(last) < 0.002  # blitting drew what the still figure draws
    assert changed(first) > 5 * max(changed(last), 1e-4)  # the first frame lacks most of each path

    gif = tmp_path / "paths.gif"
    compare.write_gif(frames, gif, fps=12)
    with Image.open(gif) as stored:
        # 1000/12 ms per frame, stored in whole centiseconds
        assert stored.n_frames == 10 and stored.info["duration"] == 80 and stored.info["loop"] == 0
        stored.seek(9)
        error = np.abs(np.asarray(stored.convert("RGB")).astype(int) - last).sum(axis=2)
    assert np.percentile(error, 99.9) < 60  # one shared palette keeps every path's colour


def test_every_optimizer_has_its_own_colour_and_the_legend_stays_off_the_data():
    from pipeline.optim.registry import optimizer_names
    from pipeline.viz.styles import looks

    names = optimizer_names()
    styles = looks(names)
    assert len(set(styles.values())) == len(names) == 19  # a colour and line style of its own
    assert len({color for color, _ in list(styles.values())[:12]}) == 12  # the first twelve by colour alone
    assert looks(["radam", "adam"]) == {"radam": styles["radam"], "adam": styles["adam"]}  # the same in every plot
    lines = {name: ([1, 2, 3], [0.1 * i, 0.2 * i, 0.3 * i]) for i, name in enumerate(names)}
    fig = figures.overlay_figure(lines, "epoch", "val_acc", "nineteen")
    (ax,) = fig.axes
    drawn = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in ax.get_lines()}
    assert len(set(drawn.values())) == 19 and ax.get_legend() is None and len(fig.legends) == 1


def test_small_multiples_draw_one_panel_per_path_on_one_colour_scale():
    from pipeline.workloads.toy.functions import get_function

    fn = get_function("ackley")
    paths = {name: np.array([[-3.0, 3.0], [-2.0, 2.0]]) for name in ("sgd", "asgd", "adam")}  # sgd = asgd
    fig = figures.panels_figure(fn, paths)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["sgd", "asgd", "adam"]
    assert all(len(ax.get_lines()) == 1 for ax in panels)  # each panel its own path, none hidden
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1


def _png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def test_a_path_drawn_over_the_cached_background_is_the_full_figure():
    """viz/paths.py: the same picture as contour_figure and surface_figure drawn in full, but for the legend's
    room (the longest optimizer name's), so only a narrow band of the axes differs; again for a second path (the
    first's artists are gone); and a path that leaves the window goes over a background widened to hold it, the
    full figure of that window."""
    from pipeline.viz import paths

    fn = get_function("rosenbrock")
    for label, path in (("adafactor", np.array([[-1.5, 2.0], [-1.0, 1.0], [0.5, 0.3], [0.9, 0.8]])),
                        ("sgd", np.array([[1.5, -0.5], [0.0, 0.0]]))):
        for fast, full in ((paths.contour_png, figures.contour_figure), (paths.surface_png, figures.surface_figure)):
            drawn, expected = _png_pixels(fast(fn, label, path)), _png_pixels(_png(full(fn, {label: path})))
            assert drawn.shape == expected.shape
            if label == "adafactor":  # the longest name: the same layout as the full figure
                assert (np.abs(drawn - expected).max(axis=2) > 40).mean() < 0.01, label
    (x0, x1), (y0, y1) = fn.window
    out = np.array([[-1.5, 2.0], [x1 + 0.2 * (x1 - x0), y0 - 0.1 * (y1 - y0)], [0.9, 0.8]])  # out and back in
    assert paths.reach_for(fn, out[:1]) == 0.0 and paths.reach_for(fn, out) == 0.25
    assert paths.reach_for(fn, np.array([[0.0, 0.0], [1e6, 0.0]])) == paths.REACH[-1]  # held up to bounds' cap
    for kind, fast, full in (("contour", paths.contour_png, figures.contour_figure),
                             ("surface", paths.surface_png, figures.surface_figure)):
        drawn = _png_pixels(fast(fn, "adafactor", out))
        window = paths._background(fn, kind, 0.25).ax
        assert window.get_xlim()[1] > out[1, 0] and window.get_ylim()[0] < out[1, 1]
        expected = _png_pixels(_png(full(fn, {"adafactor": out, "": paths.corners(fn, 0.25)})))
        assert (np.abs(drawn - expected).max(axis=2) > 40).mean() < 0.03, kind
    losses = np.geomspace(100.0, 1e-6, 301) + fn.f_min  # a seed run's loss: on the axes of its steps budget
    drawn = _png_pixels(paths.loss_png(fn, "adafactor", losses, 400))
    expected = _png_pixels(_png(paths._loss_figure(fn, {"adafactor": losses}, 400)))
    assert drawn.shape == expected.shape and (np.abs(drawn - expected).max(axis=2) > 40).mean() < 0.01


@pytest.mark.parametrize("optimizers,workloads", [(1, 1), (3, 2), (18, 2)])
def test_the_basin_maps_laid_out_by_hand_keep_every_label_and_title_inside_the_picture(optimizers, workloads):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pipeline.optim.registry import optimizer_names
    from pipeline.viz.tune import basins_figure

    names, windows = optimizer_names()[:optimizers], {"rosenbrock": ((-2, 2), (-1, 3)), "ackley": ((-5, 5), (-5, 5))}
    maps = {w: {n: np.eye(41, dtype=bool) for n in names} for w in list(windows)[:workloads]}
    figure = basins_figure(maps, {w: windows[w] for w in maps})
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    box = figure.bbox
    assert len(figure.axes) == optimizers * workloads
    # what each panel draws (its map, ticks, tick labels, title, the row's label), and the figure's title
    for extent in [ax.get_tightbbox(renderer) for ax in figure.axes] + [figure._suptitle.get_window_extent(renderer)]:
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, extent
    titles = [ax.title.get_window_extent(renderer) for ax in figure.axes]
    assert all(not a.overlaps(b) for i, a in enumerate(titles) for b in titles[i + 1:])  # readable apart

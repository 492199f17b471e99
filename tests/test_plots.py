"""Figures stay drawable whatever the paths hold (they are not saved here, only rendered in memory)."""
import io

import numpy as np

from pipeline import plots
from pipeline.functions import get_function


def test_a_path_that_ran_off_to_1e308_still_draws_inside_the_window():
    fn = get_function("rosenbrock")
    paths = {"fled": np.array([[-1.2, 1.0], [50.0, 50.0], [1e308, -1e308]]),
             "home": np.array([[0.0, 0.0], [1.0, 1.0]])}
    for figure in (plots.contour_figure(fn, paths), plots.surface_figure(fn, paths)):
        figure.savefig(io.BytesIO(), format="png")  # before: numpy.arange overflowed in the tick locator
        ax = figure.axes[0]
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert -10 < x0 < x1 < 10 and -10 < y0 < y1 < 10  # the plot window (widened at most 3x), not 1e308

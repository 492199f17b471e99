"""What every figure shares: the headless backend (CI, servers and `mlflow run` have no display), set once before
any figure is drawn, and the legend placed beside the axes, never over the data."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402


def legend_outside(figure: Figure, ax=None, columns: int = 1, fontsize: str | int = "small") -> None:
    """The legend of `ax` (or of every labelled artist of the figure) at the figure's upper right, outside."""
    if ax is None:
        figure.legend(loc="outside right upper", fontsize=fontsize, ncols=columns)
        return
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize=fontsize, ncols=columns)

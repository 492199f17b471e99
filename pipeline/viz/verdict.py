"""Figures of a tune's verdict: the expected best score against the number of trials (Dodge et al. 2019) and the
time-to-target performance profile behind AlgoPerf's benchmark score. Each returns a Figure and never saves or
shows it."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from pipeline.viz.canvas import legend_outside
from pipeline.viz.styles import looks

TAU_MAX = 4.0  # AlgoPerf integrates the profile up to a time 4 times the best


def budget_figure(curves: Mapping[str, Sequence[float]], metric: str, workload: str) -> Figure:
    """Expected best `metric` after k trials drawn from the search, k = 1 .. K, one line per optimizer."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    style = looks(list(curves))
    for name, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, style[name][1], marker="o", ms=3, color=style[name][0],
                label=name)
    ax.set(xlabel="trials (k)", ylabel=f"expected best {metric}",
           title=f"{workload}: expected best {metric} of k trials (Dodge et al. 2019)")
    ax.grid(alpha=0.3)
    legend_outside(figure, ax, fontsize=8)
    return figure


def profile_time_figure(taus: Sequence[float], curves: Mapping[str, Sequence[float]]) -> Figure:
    """rho(tau): the share of workloads an optimizer reached the target within tau times the best time."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    style = looks(list(curves))
    for name, share in curves.items():
        ax.step(taus, share, style[name][1], where="post", color=style[name][0], label=name)
    ax.set(xlabel="tau (time to target over the best time)", ylabel="share of workloads", xlim=(1.0, TAU_MAX),
           ylim=(-0.02, 1.02), title="Time-to-target profiles (the benchmark score is the area, over 3)")
    ax.grid(alpha=0.3)
    legend_outside(figure, ax, fontsize=8)
    return figure

"""What `tune` scores a toy setting by, and the basin map of a setting: batched descents, numbers out. No I/O.

A toy trial's score is f - f_min after `steps`, averaged over a batch of random starts, so a tuned lr does not
overfit the one start that gets plotted. Each start's gap is capped at the worst gap inside the function's plot
window, and a start that diverged counts as that cap: one runaway start cannot make the mean infinite, and
diverging is never better than standing still anywhere in the window.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from pipeline.optim.registry import OptimizerSettings
from pipeline.workloads.toy.descent import COMPILE_FROM, Trajectory, run_descent, run_descents, starting_points
from pipeline.workloads.toy.functions import Function2D

CAP_GRID = 201  # points a side of the grid whose worst gap caps every start's gap
BASIN_GRID = 41  # starts a side of the basin map
# ... for an optimizer whose starts descend one tensor each (a library class: descent._Points): 441 starts
# instead of 1,681 keep its map at seconds (65 us per start and step on 2 CPU cores)
BASIN_GRID_PER_START = 21
BASIN_RADIUS = 0.01  # a start reached the global minimum when it ends this close to one (share of the window)


@functools.lru_cache(maxsize=None)
def gap_cap(fn: Function2D) -> float:
    """The largest f - f_min on a grid over the function's plot window."""
    (x0, x1), (y0, y1) = fn.window
    x, y = torch.meshgrid(torch.linspace(x0, x1, CAP_GRID, dtype=torch.float64),
                          torch.linspace(y0, y1, CAP_GRID, dtype=torch.float64), indexing="xy")
    values = fn(x, y) - fn.f_min
    return float(values[torch.isfinite(values)].max())


def capped_gaps(fn: Function2D, traj: Trajectory) -> np.ndarray:
    """(T, N) gaps f - f_min, each in [0, cap]; non-finite (diverged) ones are the cap."""
    cap = gap_cap(fn)
    gaps = traj.losses - fn.f_min
    return np.where(np.isfinite(gaps), np.clip(gaps, 0.0, cap), cap)


def score_curve(fn: Function2D, settings: OptimizerSettings, starts: int, seed: int, steps: int,
                tolerance: float) -> np.ndarray:
    """The mean capped gap over `starts` seeded random starts at every step 0..steps (the score is the last).

    A descent whose every start converged or diverged early is held at its last value to the end."""
    return score_curves(fn, [settings], starts, [seed], steps, tolerance)[0]


def score_curves(fn: Function2D, settings: Sequence[OptimizerSettings], starts: int, seeds: Sequence[int],
                 steps: int, tolerance: float) -> list[np.ndarray]:
    """score_curve of each (settings, seed) pair (one optimizer, e.g. a study's trials), descended together;
    compiled where the batch is large enough to pay for the compile."""
    return scored_descents(fn, settings, starts, seeds, steps, tolerance)[0]


def scored_descents(fn: Function2D, settings: Sequence[OptimizerSettings], starts: int, seeds: Sequence[int],
                    steps: int, tolerance: float, also: Sequence[tuple[OptimizerSettings, torch.Tensor]] = ()
                    ) -> tuple[list[np.ndarray], list[Trajectory]]:
    """score_curves, and in the same batched descent one more descent per (settings, starts (n, 2)) pair of
    `also` (a tune's seed runs: the start each plots, the basin grid); returns (the curves, the trajectories of
    `also`), each trajectory as run_descent records it alone."""
    batch = [starting_points(fn, starts, seed) for seed in seeds]
    compiled = (starts * len(seeds) + sum(len(group) for _, group in also)) * steps >= COMPILE_FROM
    trajs = run_descents(fn, [*settings, *(s for s, _ in also)], [*batch, *(group for _, group in also)], steps,
                         tolerance, compiled)
    curves = [capped_gaps(fn, traj).mean(axis=1) for traj in trajs[: len(batch)]]
    return [np.concatenate([curve, np.full(steps + 1 - len(curve), curve[-1])]) for curve in curves], \
        trajs[len(batch):]


def basin_starts(fn: Function2D, settings: OptimizerSettings, size: int | None = None) -> torch.Tensor:
    """The regular grid of starts a basin map descends from, rows y and columns x over the plot window: `size`
    a side, by default BASIN_GRID (BASIN_GRID_PER_START for optimizers whose starts descend one tensor each)."""
    size = size or (BASIN_GRID if settings.spec.elementwise or settings.spec.rows else BASIN_GRID_PER_START)
    (x0, x1), (y0, y1) = fn.window
    x, y = np.meshgrid(np.linspace(x0, x1, size), np.linspace(y0, y1, size))
    return torch.tensor(np.column_stack([x.ravel(), y.ravel()]), dtype=torch.float64)


def basin_of(fn: Function2D, traj: Trajectory) -> np.ndarray:
    """(size, size) booleans from a descent of basin_starts: which starts ended within BASIN_RADIUS of the window
    of a global minimum (or converged)."""
    (x0, x1), (y0, y1) = fn.window
    final = traj.distances[-1]
    reached = (np.isfinite(final) & (final <= BASIN_RADIUS * min(x1 - x0, y1 - y0))) | (traj.converged_step >= 0)
    size = round(len(reached) ** 0.5)
    return reached.reshape(size, size)


def basin_map(fn: Function2D, settings: OptimizerSettings, steps: int, tolerance: float,
              size: int | None = None) -> np.ndarray:
    """basin_of one batched descent from basin_starts (a tune's seed batch descends the grid alongside its own)."""
    return basin_of(fn, run_descent(fn, settings, basin_starts(fn, settings, size), steps, tolerance))


def basin_text(reached: np.ndarray) -> str:
    """A basin map as text of 0s and 1s, row after row (an Optuna user attr: JSON)."""
    return "".join("1" if flag else "0" for flag in reached.ravel())


def basin_from_text(text: str) -> np.ndarray:
    """basin_text's map again."""
    size = round(len(text) ** 0.5)
    return np.array([char == "1" for char in text], dtype=bool).reshape(size, size)

"""Row 'toy': batched descent from many starts at once against the notebook's per-point numpy loop."""
from __future__ import annotations

import time

import numpy as np
import torch

from bench.baselines import notebook_descent_many
from bench.machine import best_seconds, interleaved_best, log
from bench.table import Row, met, rate, times
from pipeline.optim.registry import OptimizerSettings
from pipeline.workloads.toy.descent import Trajectory, run_descent, starting_points
from pipeline.workloads.toy.functions import get_function

FUNCTION = "ackley"  # the notebook's function
OPTIMIZER = "sgd"  # plain gradient descent: the same update as the notebook's loop, so the work compares
LR = 0.01
TARGET = 100.0  # ours / baseline, in point-steps per second
CHECKED = 4  # starts run by both, whose paths must agree


def _ours(starts: torch.Tensor, steps: int) -> Trajectory:
    """All starts at once, compiled; tolerance 0 so every point runs every step (nothing stops early)."""
    return run_descent(get_function(FUNCTION), OptimizerSettings(OPTIMIZER, lr=LR), starts, steps, tolerance=0.0,
                       compiled=True)


def _baseline(starts: np.ndarray, steps: int) -> np.ndarray:
    """The notebook's loop over points, then steps; returns (points, steps + 1, 2)."""
    return notebook_descent_many(get_function(FUNCTION), starts, LR, steps)


def _agreement(traj: Trajectory, path: np.ndarray) -> float:
    """Largest gap between the two methods' final positions on the starts both ran."""
    ours = traj.positions[-1, :CHECKED]
    return float(np.abs(ours - path[:CHECKED, -1]).max())


def toy_row(points: int, steps: int, baseline_points: int, rounds: int, device: torch.device) -> Row:
    """Point-steps per second of run_descent over `points` starts vs the notebook's loop over a few of them."""
    fn = get_function(FUNCTION)
    starts = starting_points(fn, points, seed=0).to(device)  # float64, as the toy entry point
    few = starts[:baseline_points].cpu().numpy()
    began = time.perf_counter()
    _ours(starts, 2)  # warm-up: torch.compile builds the kernel for this shape (a one-off, reported in the notes)
    compile_s = time.perf_counter() - began
    log(f"toy: run_descent {points} starts vs notebook loop {baseline_points} starts, {steps} steps, "
        f"best of {rounds} rounds")
    cpu = torch.device("cpu")
    best = interleaved_best({
        "ours": lambda: points * steps / best_seconds(lambda: _ours(starts, steps), 1, device),
        "notebook": lambda: baseline_points * steps / best_seconds(lambda: _baseline(few, steps), 1, cpu),
    }, rounds)
    gap = _agreement(_ours(starts[:CHECKED], steps), _baseline(few[:CHECKED], steps))
    notes = (f"{FUNCTION}, {OPTIMIZER} lr={LR}, {steps} steps, tolerance 0, float64; ours: {points} starts in one "
             f"tensor on {device.type} (pipeline.workloads.toy.descent.run_descent, compiled=True; its one-off compile took "
             f"{compile_s:.1f} s, not timed), notebook: {baseline_points} starts one by one; best of {rounds} "
             f"alternating rounds",
             f"same paths: final positions of {CHECKED} shared starts differ by at most {gap:.1e}")
    ratio = best["ours"] / best["notebook"]
    return Row(f"toy {points} starts", rate(best["ours"], "point-steps/s"), rate(best["notebook"], "point-steps/s"),
               times(ratio), f">= {TARGET:.0f}x", met(ratio >= TARGET), notes)


def toy_rows(device: torch.device, quick: bool) -> list[Row]:
    """4096 starts (a typical grid of starts) and, in the full run, 65,536 (where arithmetic, not dispatch, rules)."""
    if quick:
        return [toy_row(points=4096, steps=100, baseline_points=4, rounds=1, device=device)]
    return [toy_row(points=4096, steps=500, baseline_points=16, rounds=3, device=device),
            toy_row(points=65536, steps=100, baseline_points=16, rounds=3, device=device)]

"""Batched descent on a 2-D test function: many starting points, one optimizer, positions out. No I/O."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.functions import Function2D
from pipeline.optimizers import build_optimizer


@dataclass(frozen=True)
class Trajectory:
    """What one descent recorded; the time axis has one entry per evaluated position (start included)."""

    positions: np.ndarray  # (T, N, 2)
    losses: np.ndarray  # (T, N)
    grad_norms: np.ndarray  # (T, N): |grad f| at each position
    distances: np.ndarray  # (T, N): distance to the nearest global minimum
    converged_step: np.ndarray  # (N,): first step with loss - f_min <= tolerance, -1 if never
    diverged_step: np.ndarray  # (N,): first step with a non-finite loss or position, -1 if never

    @property
    def steps_taken(self) -> int:
        """Optimizer steps between the first and the last recorded position."""
        return self.positions.shape[0] - 1


def _first_true(flags: torch.Tensor) -> np.ndarray:
    """Index of the first True along dim 0 for each column, -1 where there is none."""
    hit = flags.any(0)
    first = flags.to(torch.int8).argmax(0)
    return torch.where(hit, first, torch.full_like(first, -1)).cpu().numpy()


CHECK_EVERY = 8  # steps between stopping checks: each check reads back one flag (a host sync on GPUs)


def run_descent(fn: Function2D, optimizer: str, starts: torch.Tensor, steps: int, tolerance: float,
                **hparams: float | None) -> Trajectory:
    """Descend from each row of `starts` (N, 2) until all converge or diverge, or `steps` run out.

    The points share one parameter tensor; every registered optimizer is element-wise, so this equals N
    independent runs. The record ends at the step where the last point converged or diverged.
    """
    point = torch.nn.Parameter(starts.detach().clone())
    opt = build_optimizer(optimizer, [point], **hparams)
    positions = torch.empty(steps + 1, *starts.shape, dtype=starts.dtype, device=starts.device)
    losses = torch.empty(steps + 1, starts.shape[0], dtype=starts.dtype, device=starts.device)
    grad_norms = torch.empty_like(losses)
    done = torch.zeros(starts.shape[0], dtype=torch.bool, device=starts.device)
    checked = stop = 0
    for stop in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = fn.on_points(point)
        loss.sum().backward()  # each point's gradient depends on its own loss only
        positions[stop], losses[stop] = point.detach(), loss.detach()
        torch.linalg.vector_norm(point.grad, dim=1, out=grad_norms[stop])
        if stop == steps or (stop + 1 - checked) >= CHECK_EVERY:
            window = losses[checked: stop + 1]
            done |= (~torch.isfinite(window) | (window - fn.f_min <= tolerance)).any(0)
            checked = stop + 1
            if bool(done.all()):
                break
        opt.step()
    traj = _finish(fn, positions[: stop + 1], losses[: stop + 1], grad_norms[: stop + 1], tolerance)
    ended = np.maximum(traj.converged_step, traj.diverged_step)
    if (ended >= 0).all() and ended.max() < stop:  # all finished before the check noticed: trim the extra steps
        last = int(ended.max()) + 1
        traj = Trajectory(traj.positions[:last], traj.losses[:last], traj.grad_norms[:last], traj.distances[:last],
                          traj.converged_step, traj.diverged_step)
    return traj


def _finish(fn: Function2D, positions: torch.Tensor, losses: torch.Tensor, grad_norms: torch.Tensor,
            tolerance: float) -> Trajectory:
    """Derive per-point convergence and divergence steps and move everything to numpy."""
    finite = torch.isfinite(losses) & torch.isfinite(positions).all(2)
    return Trajectory(
        positions=positions.cpu().numpy(),
        losses=losses.cpu().numpy(),
        grad_norms=grad_norms.cpu().numpy(),
        distances=fn.distance_to_min(positions).cpu().numpy(),
        converged_step=_first_true(finite & (losses - fn.f_min <= tolerance)),
        diverged_step=_first_true(~finite),
    )


def starting_points(fn: Function2D, count: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`count` seeded random starts, uniform inside the function's plot window."""
    gen = torch.Generator().manual_seed(seed)
    (x_low, x_high), (y_low, y_high) = fn.window
    unit = torch.rand(count, 2, generator=gen, dtype=dtype)
    low = torch.tensor([x_low, y_low], dtype=dtype)
    high = torch.tensor([x_high, y_high], dtype=dtype)
    return low + unit * (high - low)

"""Batched descent on a 2-D test function: many starting points, one optimizer, positions out. No I/O."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.optim.registry import OptimizerSettings, build_optimizer, set_mode
from pipeline.workloads.toy.functions import Function2D


@dataclass(frozen=True)
class Trajectory:
    """What one descent recorded; the time axis has one entry per evaluated position (start included)."""

    positions: np.ndarray  # (T, N, 2)
    losses: np.ndarray  # (T, N)
    grad_norms: np.ndarray  # (T, N): |grad f| at each position
    distances: np.ndarray  # (T, N): distance to the nearest global minimum
    # Exclusive per point (at most one of the two is >= 0): whichever came first ends that point's descent.
    converged_step: np.ndarray  # (N,): first step with loss - f_min <= tolerance, -1 if never or diverged first
    diverged_step: np.ndarray  # (N,): first step with a non-finite loss or position, -1 if never or converged first

    @property
    def steps_taken(self) -> int:
        """Optimizer steps between the first and the last recorded position."""
        return self.positions.shape[0] - 1


def _first_true(flags: torch.Tensor) -> np.ndarray:
    """Index of the first True along dim 0 for each column, -1 where there is none."""
    hit = flags.any(0)
    first = flags.to(torch.int8).argmax(0)
    return torch.where(hit, first, torch.full_like(first, -1)).cpu().numpy()


def _outcome_steps(finite: torch.Tensor, reached: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(converged step, diverged step) per point from (T, N) flags, -1 for the outcome that did not come first."""
    converged, diverged = _first_true(finite & reached), _first_true(~finite)
    # A converged point is done: non-finite values from the steps run until the next stopping check are no
    # divergence; a point that diverged first never counts as converged. The two never share a step.
    never = finite.shape[0]
    converged_at = np.where(converged >= 0, converged, never)
    diverged_at = np.where(diverged >= 0, diverged, never)
    return np.where(converged_at < diverged_at, converged, -1), np.where(diverged_at < converged_at, diverged, -1)


CHECK_EVERY = 8  # steps between stopping checks: each check reads back one flag (a host sync on GPUs)


def _summed(fn: Function2D) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """points (2, N) -> (the sum of their losses, the losses): each point's gradient depends on its own loss."""
    def summed(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = fn(point[0], point[1])
        return loss.sum(), loss

    return summed


def _record(point: torch.Tensor, values: torch.Tensor, grad: torch.Tensor, position: torch.Tensor,
            loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """Write one step's row of the record; returns the gradient."""
    position.copy_(point)
    loss.copy_(values)
    torch.hypot(grad[0], grad[1], out=grad_norm)  # vector_norm over dim 0 is 40x slower here
    return grad


def _evaluator(fn: Function2D) -> Callable[..., torch.Tensor]:
    """(points (2, N), position/loss/grad-norm rows to fill) -> gradient (2, N), with plain autograd.

    Coordinates are rows, so x and y are each contiguous (a compiled kernel then vectorises over points).
    """
    summed = _summed(fn)

    def evaluate(point: torch.Tensor, *rows: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = point.detach().requires_grad_(True)
            total, values = summed(leaf)
            (grad,) = torch.autograd.grad(total, leaf)
        return _record(point, values.detach(), grad, *rows)

    return evaluate


@functools.lru_cache(maxsize=None)
def _compiled_evaluator(fn: Function2D) -> Callable[..., torch.Tensor]:
    """The same through torch.func and torch.compile; one per function, kept (a fresh closure would recompile)."""
    grad_and_loss = torch.func.grad_and_value(_summed(fn), has_aux=True)

    def evaluate(point: torch.Tensor, *rows: torch.Tensor) -> torch.Tensor:
        grad, (_, values) = grad_and_loss(point)
        return _record(point, values, grad, *rows)

    return torch.compile(evaluate, dynamic=False)


class _Points:
    """The N points an optimizer moves. An element-wise optimizer gets them as one (2, N) tensor (N independent
    runs in one); any other (Adafactor's update scaled to the tensor's RMS, SOAP, Shampoo, library classes) gets
    one (2,) tensor per point, so that no point's update depends on another's."""

    def __init__(self, settings: OptimizerSettings, starts: torch.Tensor) -> None:
        self.shared = settings.spec.elementwise
        self.params = [torch.nn.Parameter(starts.detach().T.contiguous())] if self.shared else \
            [torch.nn.Parameter(row.clone()) for row in starts.detach()]

    def gather(self) -> torch.Tensor:
        """The points as one (2, N) tensor."""
        return self.params[0].detach() if self.shared else torch.stack([p.detach() for p in self.params], 1)

    def scatter(self, grad: torch.Tensor) -> None:
        """Hand each parameter its part of the (2, N) gradient."""
        if self.shared:
            self.params[0].grad = grad
        else:
            for param, row in zip(self.params, grad.T.contiguous()):
                param.grad = row


def run_descent(fn: Function2D, optimizer: OptimizerSettings, starts: torch.Tensor, steps: int, tolerance: float,
                compiled: bool = False) -> Trajectory:
    """Descend from each row of `starts` (N, 2) until all converge or diverge, or `steps` run out: N independent
    runs (see _Points). The record ends at the step where the last point converged or diverged.
    `compiled=True` runs the function and its gradient through torch.compile: it pays a compile of a few
    seconds once per function and shape, then steps 2-3x faster (worth it from some 10^7 point-steps).
    """
    count, dtype, device = starts.shape[0], starts.dtype, starts.device
    points = _Points(optimizer, starts)
    opt = build_optimizer(optimizer, points.params)
    set_mode(opt, training=True)  # schedule-free: gradients at its y sequence; other optimizers have no modes
    evaluate = _compiled_evaluator(fn) if compiled else _evaluator(fn)
    positions = torch.empty(steps + 1, 2, count, dtype=dtype, device=device)
    losses = torch.empty(steps + 1, count, dtype=dtype, device=device)
    grad_norms = torch.empty_like(losses)
    done = torch.zeros(count, dtype=torch.bool, device=device)
    checked = stop = 0
    for stop in range(steps + 1):
        with torch.no_grad():
            points.scatter(evaluate(points.gather(), positions[stop], losses[stop], grad_norms[stop]))
        if stop == steps or (stop + 1 - checked) >= CHECK_EVERY:
            window = losses[checked: stop + 1]
            done |= (~torch.isfinite(window) | (window - fn.f_min <= tolerance)).any(0)
            checked = stop + 1
            if bool(done.all()):
                break
        opt.step()
    traj = _finish(fn, positions[: stop + 1].transpose(1, 2), losses[: stop + 1], grad_norms[: stop + 1],
                   tolerance)
    ended = np.maximum(traj.converged_step, traj.diverged_step)  # exclusive: the one outcome's step, else -1
    if (ended >= 0).all() and ended.max() < stop:  # all finished before the check noticed: trim the extra steps
        last = int(ended.max()) + 1
        traj = Trajectory(traj.positions[:last], traj.losses[:last], traj.grad_norms[:last], traj.distances[:last],
                          traj.converged_step, traj.diverged_step)
    return traj


def _finish(fn: Function2D, positions: torch.Tensor, losses: torch.Tensor, grad_norms: torch.Tensor,
            tolerance: float) -> Trajectory:
    """Derive per-point convergence and divergence steps and move everything to numpy."""
    finite = torch.isfinite(losses) & torch.isfinite(positions).all(2)
    converged, diverged = _outcome_steps(finite, losses - fn.f_min <= tolerance)
    return Trajectory(
        positions=positions.cpu().numpy(),
        losses=losses.cpu().numpy(),
        grad_norms=grad_norms.cpu().numpy(),
        distances=fn.distance_to_min(positions).cpu().numpy(),
        converged_step=converged,
        diverged_step=diverged,
    )


def starting_points(fn: Function2D, count: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`count` seeded random starts, uniform inside the function's plot window."""
    gen = torch.Generator().manual_seed(seed)
    (x_low, x_high), (y_low, y_high) = fn.window
    unit = torch.rand(count, 2, generator=gen, dtype=dtype)
    low = torch.tensor([x_low, y_low], dtype=dtype)
    high = torch.tensor([x_high, y_high], dtype=dtype)
    return low + unit * (high - low)

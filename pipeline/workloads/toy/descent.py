"""Batched descent on a 2-D test function: many starting points, one optimizer, positions out. No I/O."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from pipeline.optim.registry import TUNABLE, OptimizerSettings, OptimizerSpec, build_optimizer, set_mode
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
    """The points of one descent, in groups: one per setting (its own param group, so its own lr), each holding
    its starts as the optimizer's spec says they can be held with the same maths as one tensor per start: one
    vector (x's, then y's) for an element-wise optimizer; the rows of one (n, 2) tensor for one with a row-wise
    twin (optim/rowwise.py); else one (2,) tensor per point. Either way no point's update depends on another's."""

    def __init__(self, spec: OptimizerSpec, starts: Sequence[torch.Tensor]) -> None:
        self.layout = "vector" if spec.elementwise else "rows" if spec.rows else "each"
        self.sizes = [len(group) for group in starts]
        self.groups = [self._hold(group.detach()) for group in starts]

    def _hold(self, starts: torch.Tensor) -> list[torch.nn.Parameter]:
        if self.layout == "vector":
            return [torch.nn.Parameter(starts.T.contiguous().reshape(-1))]
        if self.layout == "rows":
            return [torch.nn.Parameter(starts.clone())]
        return [torch.nn.Parameter(row.clone()) for row in starts]

    def _view(self, params: list[torch.nn.Parameter], count: int) -> torch.Tensor:
        if self.layout == "vector":
            return params[0].detach().view(2, count)
        if self.layout == "rows":
            return params[0].detach().T
        return torch.stack([p.detach() for p in params], 1)

    def gather(self) -> torch.Tensor:
        """Every point as one contiguous (2, N) tensor, the groups in order."""
        views = [self._view(params, count) for params, count in zip(self.groups, self.sizes)]
        return views[0].contiguous() if len(views) == 1 else torch.cat(views, 1)

    def scatter(self, grad: torch.Tensor) -> None:
        """Hand each parameter its part of the (2, N) gradient."""
        for params, part in zip(self.groups, grad.split(self.sizes, 1)):
            if self.layout == "vector":
                params[0].grad = part.reshape(-1)
            elif self.layout == "rows":
                params[0].grad = part.T.contiguous()
            else:
                for param, row in zip(params, part.T.contiguous()):
                    param.grad = row


def _optimizer(settings: Sequence[OptimizerSettings], points: _Points) -> torch.optim.Optimizer:
    """One optimizer over every group, each group with its own settings (they may differ in lr, momentum and
    weight decay only: the rest is the optimizer's, the same for all)."""
    names = {s.name for s in settings}
    if len(names) != 1:
        raise ValueError(f"one descent takes one optimizer, got {sorted(names)}")
    groups = [{"params": params, **{k: v for k, v in s.kwargs.items() if k in TUNABLE}}
              for s, params in zip(settings, points.groups)]
    return build_optimizer(settings[0], groups, rows=points.layout == "rows")


COMPILE_FROM = 10**7  # point-steps in one descent from which the compiled evaluator pays for its compile
# Points from which a descent's element-wise ops are worth torch's intra-op threads. Below, one thread: an op on
# a few thousand float64s takes microseconds, and splitting it (exp and sqrt split from some 2,000 elements) waits
# for the other thread to be scheduled: 6 ms an op, 1,000 times slower, on 2 cores with anything else running.
PARALLEL_FROM = 16384


def run_descent(fn: Function2D, optimizer: OptimizerSettings, starts: torch.Tensor, steps: int, tolerance: float,
                compiled: bool = False) -> Trajectory:
    """Descend from each row of `starts` (N, 2) until all converge or diverge, or `steps` run out: N independent
    runs (see _Points). The record ends at the step where the last point converged or diverged.
    `compiled=True` runs the function and its gradient through torch.compile: it pays a compile of a few
    seconds once per function and shape, then steps 2-3x faster (worth it from some COMPILE_FROM point-steps).
    """
    return run_descents(fn, [optimizer], [starts], steps, tolerance, compiled)[0]


def run_descents(fn: Function2D, settings: Sequence[OptimizerSettings], starts: Sequence[torch.Tensor], steps: int,
                 tolerance: float, compiled: bool = False) -> list[Trajectory]:
    """Several descents of one optimizer at once, one per (settings, starts (n, 2)) pair (e.g. the trials of a
    study: one lr each): every point of every group steps together, one optimizer step for all, and each
    group's trajectory is what run_descent would have recorded for it alone. Pairs of equal settings (a tune's
    seed reruns) descend as one group: the optimizer's per-group work is paid once per distinct setting."""
    members: dict[OptimizerSettings, list[int]] = {}  # each distinct setting -> the pairs that have it, in order
    for index, setting in enumerate(settings):
        members.setdefault(setting, []).append(index)
    merged = [torch.cat([starts[i] for i in pairs]) for pairs in members.values()]
    count, device = sum(len(group) for group in starts), starts[0].device
    with _threads(1 if count < PARALLEL_FROM and device.type == "cpu" else torch.get_num_threads()):
        traj, stop = _descend(fn, list(members), merged, steps, tolerance, compiled, count)
    order = [i for pairs in members.values() for i in pairs]  # the pairs' points as the record holds them
    begins = dict(zip(order, np.cumsum([0, *(len(starts[i]) for i in order)])))
    return [_trimmed(_columns(traj, begins[i], begins[i] + len(group)), stop) for i, group in enumerate(starts)]


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's intra-op threads for the block (process-wide), then as they were."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _descend(fn: Function2D, settings: Sequence[OptimizerSettings], starts: Sequence[torch.Tensor], steps: int,
             tolerance: float, compiled: bool, count: int) -> tuple[Trajectory, int]:
    """Every point of every group descended together: the whole record (untrimmed) and the last step run."""
    first = starts[0]
    dtype, device = first.dtype, first.device
    points = _Points(settings[0].spec, starts)
    opt = _optimizer(settings, points)
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
    kept = (positions[: stop + 1].transpose(1, 2), losses[: stop + 1], grad_norms[: stop + 1])
    return _finish(fn, *kept, tolerance), stop


def _columns(traj: Trajectory, begin: int, end: int) -> Trajectory:
    """The record of points begin..end-1."""
    return Trajectory(traj.positions[:, begin:end], traj.losses[:, begin:end], traj.grad_norms[:, begin:end],
                      traj.distances[:, begin:end], traj.converged_step[begin:end], traj.diverged_step[begin:end])


def _trimmed(traj: Trajectory, stop: int) -> Trajectory:
    """A record whose points all finished before the last step recorded ends at the step the last one did."""
    ended = np.maximum(traj.converged_step, traj.diverged_step)  # exclusive: the one outcome's step, else -1
    if not ((ended >= 0).all() and ended.max() < stop):
        return traj
    last = int(ended.max()) + 1
    return Trajectory(traj.positions[:last], traj.losses[:last], traj.grad_norms[:last], traj.distances[:last],
                      traj.converged_step, traj.diverged_step)


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

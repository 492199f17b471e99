"""The loss of the real network over a plane of weights (landscape.py) and along the recorded paths, on a fixed
sample of training images, batched on the device under torch.inference_mode().

BatchNorm: Li et al. evaluate in eval mode with the running statistics stored with the model at the plane's
centre, and keep BatchNorm's scale and shift out of their random directions. Here the centre is the shared
untrained start, whose stored statistics fit no other point, so every point gets its own: its BatchNorm
statistics are measured at its weights on the same images (a training-mode pass with no update, as
train.recompute_batchnorm does for schedule-free runs), then the loss is evaluated in eval mode."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pipeline.landscape.plane import Plane
from pipeline.training.loop import Batches, Precision, evaluate, recompute_batchnorm


@dataclass(frozen=True)
class Figures:
    """The loss and accuracy over the grid, (len(ys), len(xs)): rows y, columns x."""

    xs: torch.Tensor
    ys: torch.Tensor
    loss: torch.Tensor
    acc: torch.Tensor


def _set_weights(model: nn.Module, vector: torch.Tensor) -> None:
    """Put a flat float32 weight vector into the model's parameters (in registration order)."""
    torch.nn.utils.vector_to_parameters(vector.to(next(model.parameters()).device, torch.float32),
                                        list(model.parameters()))


def loss_at(model: nn.Module, weights: torch.Tensor, batches: Batches, precision: Precision) -> tuple[float, float]:
    """(loss, accuracy) of the model at `weights`, with BatchNorm statistics measured there first."""
    with torch.no_grad():
        _set_weights(model, weights)
        recompute_batchnorm(model, batches, precision)
    metrics, _ = evaluate(model, batches, precision, show_progress=False)
    return metrics["val_loss"], metrics["val_acc"]


def grid_figures(model: nn.Module, origin: torch.Tensor, plane: Plane, axes: tuple[torch.Tensor, torch.Tensor],
                 batches: Batches, precision: Precision,
                 progress: Callable[[int, int], None] | None = None) -> Figures:
    """Loss and accuracy at origin + x * d1 + y * d2 for every (x, y) of the grid."""
    xs, ys = axes
    device = next(model.parameters()).device
    origin, directions = origin.to(device), plane.directions.to(device)
    loss, acc = torch.empty(len(ys), len(xs)), torch.empty(len(ys), len(xs))
    for row, y in enumerate(ys.tolist()):
        for column, x in enumerate(xs.tolist()):
            loss[row, column], acc[row, column] = loss_at(model, origin + x * directions[0] + y * directions[1],
                                                          batches, precision)
        if progress is not None:
            progress(row + 1, len(ys))
    return Figures(xs, ys, loss, acc)


def path_losses(model: nn.Module, origin: torch.Tensor, deltas: list[torch.Tensor], batches: Batches,
                precision: Precision) -> list[float]:
    """The loss at each recorded point of a path (its real weights, off the plane as they may be)."""
    origin = origin.to(next(model.parameters()).device)
    return [loss_at(model, origin + delta.to(origin.device, torch.float32), batches, precision)[0]
            for delta in deltas]

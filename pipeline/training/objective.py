"""What a workload's batches are scored by, for the training loop: the summed loss of a batch, how many elements
it sums over, the hits that make an accuracy (if any), and the score a run is judged by with its target (the
clock of `time_to_target`). The loop itself names no workload."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional


def cross_entropy_sum(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of logits (..., classes) against class indices (...): images or tokens alike."""
    return functional.cross_entropy(outputs.float().flatten(0, -2), targets.flatten(), reduction="sum")


def argmax_hits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many predictions (the largest logit) are right."""
    return (outputs.argmax(-1) == targets).sum()


def output_sum(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The model's own per-example losses, summed (a model that is its loss: the noisy quadratic)."""
    return outputs.float().sum()


@dataclass(frozen=True)
class Objective:
    """How the loop scores a batch: `loss_sum(outputs, targets)` and `count(targets)` (elements summed over;
    train_loss and val_loss are their ratio), `hits` for train_acc / val_acc (None: no accuracy) and `classes`
    (> 0: evaluation also counts a confusion matrix)."""

    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    count: Callable[[torch.Tensor], int]
    hits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    classes: int = 0


def _rows(targets: torch.Tensor) -> int:
    return targets.shape[0]


def _elements(targets: torch.Tensor) -> int:
    return targets.numel()


CLASSIFIER = Objective(cross_entropy_sum, _rows, argmax_hits, classes=10)  # CIFAR-10 images
NEXT_TOKEN = Objective(cross_entropy_sum, _elements, argmax_hits)  # language models: per token
OWN_LOSS = Objective(output_sum, _rows)  # models that return their per-example loss


@dataclass(frozen=True)
class Target:
    """The score a run is judged by and the value whose first crossing `time_to_target` records."""

    metric: str  # a validation metric: val_acc, val_loss
    direction: str  # max | min
    value: float

    def reached(self, metrics: dict[str, float]) -> bool:
        score = metrics.get(self.metric)
        if score is None:
            return False
        return score >= self.value if self.direction == "max" else score <= self.value

    def better(self, score: float, best: float | None) -> bool:
        return best is None or (score > best if self.direction == "max" else score < best)

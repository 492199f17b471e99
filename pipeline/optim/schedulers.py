"""The learning-rate schedule registry: name -> frozen spec -> a torch scheduler stepped once per batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


Scheduler = torch.optim.lr_scheduler.LRScheduler


def _cosine(optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def _onecycle(optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
    group = optimizer.param_groups[0]
    # OneCycle also cycles momentum, but only optimizers that have one (SGD momentum > 0, Adam's beta1).
    cycles = "betas" in group or group.get("momentum", 0) > 0
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=group["lr"], total_steps=total_steps,
                                               cycle_momentum=cycles)


@dataclass(frozen=True)
class SchedulerSpec:
    """How to build one named schedule over a run's total optimizer steps (None: a constant lr)."""

    name: str
    summary: str
    build: Callable[[torch.optim.Optimizer, int], Scheduler | None]


SCHEDULERS: dict[str, SchedulerSpec] = {
    spec.name: spec
    for spec in (
        SchedulerSpec("none", "constant lr, as the notebook", lambda optimizer, total_steps: None),
        SchedulerSpec("cosine", "cosine decay from lr to 0 over the run", _cosine),
        SchedulerSpec("onecycle", "one cycle: warm up to lr (the peak), then anneal", _onecycle),
    )
}


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler | None:
    """The schedule called `name` (validated by the config) over `total_steps` optimizer steps."""
    return SCHEDULERS[name].build(optimizer, total_steps)

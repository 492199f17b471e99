"""The workload contract: what a workload is (`Workload`: name, source, objective, target, two budgets, and how
to build its data and model from a seed), the data it hands the loop (`WorkloadData`) and step-drawn training
batches (`StepBatches`). docs/workloads.md describes it for writing your own."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from pipeline.training.objective import Objective, Target


class StepBatches:
    """`per_epoch` batches an iteration, drawn by `draw(generator)` from one seeded generator that goes on from
    one iteration to the next: an "epoch" of the loop is the stretch between two evaluations."""

    def __init__(self, draw: Callable[[torch.Generator], tuple], per_epoch: int, seed: int) -> None:
        self.draw, self.per_epoch = draw, per_epoch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[tuple]:
        for _ in range(self.per_epoch):
            yield self.draw(self.generator)


@dataclass
class WorkloadData:
    """What `Workload.data` hands the loop: training batches, the fixed validation batches, and what the model
    must be built with (a vocabulary size, ...)."""

    train: StepBatches
    val: list[tuple]
    model_args: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # kept for the logged model (a corpus's vocabulary)


Budget = Mapping[str, Any]  # steps, batch_size, eval_every, eval_batches, scheduler, size (the model's shape)


@dataclass(frozen=True)
class Workload:
    """One problem optimizers are compared on."""

    name: str
    summary: str
    source: str  # the paper or project it comes from
    objective: Objective
    target: Target  # the score a sweep ranks by, with the value time_to_target and steps_to_target record
    quick: Budget
    full: Budget
    cifar_model: str = ""  # a CIFAR-10 workload: the cifar entry point's model
    build: Callable[[int, WorkloadData, Budget], nn.Module] | None = None  # (seed, data, budget) -> model
    data: Callable[[str, bool, int, Budget], WorkloadData] | None = None  # (data_dir, download, seed, budget)
    serves: str = ""  # what its logged model answers: images, text; empty: it logs no model
    hidden_matrices: bool = True  # weight matrices between input and output (Muon's part): the quadratic's
    # one vector and logistic regression's one layer have none

    def __post_init__(self) -> None:
        object.__setattr__(self, "quick", MappingProxyType(dict(self.quick)))
        object.__setattr__(self, "full", MappingProxyType(dict(self.full)))

    def budget(self, name: str) -> Budget:
        return self.full if name == "full" else self.quick

"""Your own workload, as `train`, `compare` and `tune` take it: `workload=examples.spirals:workload` from the
project folder (or any module on PYTHONPATH, `package.module:function`). Two interleaved spirals of 2-D points,
generated from the seed, classified by a small MLP: a complete example of the contract in docs/workloads.md."""
import math

import torch
from torch import nn

from pipeline.training.objective import CLASSIFIER, Objective, Target
from pipeline.workloads.spec import StepBatches, Workload, WorkloadData


def _points(generator: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` points on two spirals (class 0 and 1), with a little noise."""
    labels = torch.randint(2, (count,), generator=generator)
    radius = torch.rand(count, generator=generator) * 3 * math.pi
    angle = radius + math.pi * labels
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1) / (3 * math.pi)
    return points + 0.02 * torch.randn(count, 2, generator=generator), labels


def _data(data_dir: str, download: bool, seed: int, budget) -> WorkloadData:
    """Training batches drawn afresh every step; a fixed validation set (nothing read from data_dir)."""
    fixed = torch.Generator().manual_seed(seed + 1)
    train = StepBatches(lambda generator: _points(generator, budget["batch_size"]), budget["eval_every"], seed)
    return WorkloadData(train, [_points(fixed, 512) for _ in range(budget["eval_batches"])])


def _model(seed: int, data: WorkloadData, budget) -> nn.Module:
    torch.manual_seed(seed)
    width = budget["size"]["width"]
    return nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2))


def workload() -> Workload:
    """The spec: what `workload=examples.spirals:workload` resolves to."""
    budget = {"steps": 300, "batch_size": 64, "eval_every": 100, "eval_batches": 1, "scheduler": "none",
              "size": {"width": 32}}
    return Workload(
        name="spirals", summary="two interleaved 2-D spirals, a 3-layer tanh MLP", source="optlab's example",
        objective=Objective(CLASSIFIER.loss_sum, CLASSIFIER.count, CLASSIFIER.hits),  # no confusion matrix
        target=Target("val_acc", "max", 0.9), quick=budget, full={**budget, "steps": 3000},
        build=_model, data=_data)

"""The `train` entry point's config: any workload (workloads/registry.py) with one optimizer, at a budget
(`auto`: full with CUDA, quick without) whose steps, epochs and batch size the params override."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pipeline.config.tasks import DEVICES, MAX_SEED, MAX_STEPS, check_experiment
from pipeline.core.values import require
from pipeline.optim.registry import OptimizerSettings, check_runs
from pipeline.optim.schedulers import SCHEDULERS

BUDGETS = ("auto", "quick", "full")


@dataclass(frozen=True)
class TrainConfig:
    """One optimizer training one workload."""

    workload: str  # a registered name, or package.module:function (your own)
    optimizer: str
    lr: float | None
    momentum: float | None
    weight_decay: float | None
    budget: str  # auto | quick | full
    steps: int  # 0: the budget's (step-trained workloads)
    epochs: int  # 0: the budget's (CIFAR-10 workloads)
    batch_size: int  # 0: the budget's
    eval_every: int  # 0: the budget's
    scheduler: str  # budget: the budget's; or none | cosine | onecycle
    max_seconds: float  # 0: no limit; else training stops at the first evaluation past it
    data_dir: str
    download: bool
    seed: int
    device: str
    log_model: bool
    experiment: str

    def __post_init__(self) -> None:
        _ = self.spec  # resolves the name now: one line for one that does not
        check_runs(self.optimizer_settings, "cifar")
        require(self.budget in BUDGETS, "budget", self.budget, f"one of {', '.join(BUDGETS)}")
        for name, most in (("steps", MAX_STEPS), ("epochs", 10_000), ("batch_size", 1_000_000),
                           ("eval_every", MAX_STEPS)):
            require(0 <= getattr(self, name) <= most, name, getattr(self, name), f"an integer in [0, {most}] "
                    "(0: the budget's)")
        require(self.scheduler == "budget" or self.scheduler in SCHEDULERS, "scheduler", self.scheduler,
                f"budget or one of {', '.join(SCHEDULERS)}")
        require(self.max_seconds >= 0, "max_seconds", self.max_seconds, "a number >= 0 (0: no limit)")
        require(bool(self.data_dir.strip()), "data_dir", self.data_dir, "a folder")
        require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        check_experiment(self.experiment)

    @functools.cached_property
    def spec(self):
        """The workload (a user's is imported here, once)."""
        from pipeline.workloads.registry import get_workload  # noqa: PLC0415 - loads torch models

        return get_workload(self.workload)

    @functools.cached_property
    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(self.optimizer, self.lr, self.momentum, self.weight_decay)

    def resolved_budget(self, cuda: bool) -> dict[str, Any]:
        """The budget in force: the named one (auto: full with CUDA), with the params that override it."""
        name = self.budget if self.budget != "auto" else ("full" if cuda else "quick")
        budget = dict(self.spec.budget(name))
        for key in ("steps", "epochs", "batch_size", "eval_every"):
            if getattr(self, key):
                budget[key] = getattr(self, key)
        if self.scheduler != "budget":
            budget["scheduler"] = self.scheduler
        budget["name"] = name
        return budget

"""The optimizer registry shared by the toy and CIFAR tasks: name -> frozen spec -> torch optimizer."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import torch

from pipeline.errors import UsageError

# Hyper-parameters a user may set from the command line; everything else stays at the spec's value.
TUNABLE = ("lr", "momentum", "weight_decay")


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one named optimizer: the torch class, fixed settings and what the user may tune."""

    name: str
    cls: type[torch.optim.Optimizer]
    summary: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # settings that define the variant
    tunable: frozenset[str] = frozenset({"lr", "weight_decay"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))

    @property
    def default_lr(self) -> float:
        """The learning rate used when the user sets none: the spec's own, else torch's default."""
        if "lr" in self.fixed:
            return float(self.fixed["lr"])
        return float(inspect.signature(self.cls).parameters["lr"].default)


_WITH_MOMENTUM = frozenset({"lr", "momentum", "weight_decay"})

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("sgd", torch.optim.SGD, "plain stochastic gradient descent", tunable=_WITH_MOMENTUM),
        OptimizerSpec("momentum", torch.optim.SGD, "SGD with heavy-ball momentum 0.9 (the notebook's 'SGD')",
                      {"momentum": 0.9}, _WITH_MOMENTUM),
        OptimizerSpec("nesterov", torch.optim.SGD, "SGD with Nesterov momentum 0.9",
                      {"momentum": 0.9, "nesterov": True}, _WITH_MOMENTUM),
        OptimizerSpec("adam", torch.optim.Adam, "Adam (Kingma & Ba)"),
        OptimizerSpec("adamw", torch.optim.AdamW, "Adam with decoupled weight decay"),
        OptimizerSpec("adamax", torch.optim.Adamax, "Adam with the infinity norm"),
        OptimizerSpec("adagrad", torch.optim.Adagrad, "per-coordinate rates from summed squared gradients"),
        OptimizerSpec("adadelta", torch.optim.Adadelta, "Adagrad with a running window, unit-corrected"),
        OptimizerSpec("asgd", torch.optim.ASGD, "averaged SGD"),
        OptimizerSpec("rmsprop", torch.optim.RMSprop, "running mean of squared gradients",
                      tunable=_WITH_MOMENTUM),
        OptimizerSpec("nadam", torch.optim.NAdam, "Adam with Nesterov momentum"),
        OptimizerSpec("radam", torch.optim.RAdam, "Adam with a rectified warm-up of the variance"),
    )
}


# The notebook's comparison, in its order ("SGD" there is SGD with momentum 0.9); it promised nesterov too.
NOTEBOOK_OPTIMIZERS = ("momentum", "adam", "adadelta", "adagrad", "adamw", "adamax", "asgd")


def optimizer_names() -> list[str]:
    """Every registered optimizer name, in registry order."""
    return list(OPTIMIZERS)


def get_spec(name: str) -> OptimizerSpec:
    """The spec for `name`, or a UsageError listing the valid names."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise UsageError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}") from None


def resolve_hparams(name: str, **overrides: float | None) -> dict[str, Any]:
    """The keyword arguments the optimizer class gets: fixed settings, then the user's non-None overrides."""
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(TUNABLE))
    if unknown:
        raise ValueError(f"not a tunable hyper-parameter: {', '.join(unknown)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    refused = sorted(set(given) - spec.tunable)
    if refused:
        raise UsageError(f"optimizer {name!r} does not take {', '.join(refused)}; "
                         f"it takes: {', '.join(sorted(spec.tunable))}")
    kwargs = {"lr": spec.default_lr, **spec.fixed, **given}
    if kwargs.get("lr", 0) <= 0:
        raise UsageError(f"lr: expected a number > 0, got {kwargs['lr']!r}")
    return kwargs


def fast_kwargs(name: str) -> dict[str, bool]:
    """The quickest implementation torch has for this optimizer on CUDA: fused kernels, else foreach."""
    accepted = inspect.signature(get_spec(name).cls).parameters
    if "fused" in accepted:
        return {"fused": True}
    return {"foreach": True} if "foreach" in accepted else {}


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter] | Iterable[dict], fast: bool = False,
                    **overrides: float | None) -> torch.optim.Optimizer:
    """Build the named optimizer over `params`; overrides left None keep the optimizer's own defaults.

    fast=True (for CUDA) asks for fused or foreach kernels: the same maths in fewer kernel launches.
    """
    return get_spec(name).cls(params, **resolve_hparams(name, **overrides), **(fast_kwargs(name) if fast else {}))


def build_scheduler(name: str, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """An lr schedule stepped once per batch over `total_steps`: none, cosine (to 0) or onecycle (peak = lr)."""
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        group = optimizer.param_groups[0]
        # OneCycle also cycles momentum, but only optimizers that have one (SGD momentum > 0, Adam's beta1).
        cycles = "betas" in group or group.get("momentum", 0) > 0
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=group["lr"], total_steps=total_steps,
                                                   cycle_momentum=cycles)
    raise UsageError(f"unknown scheduler {name!r}; choose one of: none, cosine, onecycle")

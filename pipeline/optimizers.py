"""The optimizer registry shared by the toy and CIFAR tasks: name -> frozen spec -> torch optimizer."""
from __future__ import annotations

import functools
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


@dataclass(frozen=True)
class OptimizerSettings:
    """One optimizer as the user set it (None: its own default), validated once: the value the toy and cifar
    configs share, whose `kwargs` are logged, written to config.json and passed to the builder."""

    name: str
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        spec = get_spec(self.name)
        _check(self.lr is None or self.lr > 0, "lr", self.lr, "a number > 0")
        _check(self.momentum is None or 0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay is None or self.weight_decay >= 0, "weight_decay", self.weight_decay,
               "a number >= 0")
        refused = sorted(key for key in TUNABLE if getattr(self, key) is not None and key not in spec.tunable)
        if refused:
            raise UsageError(f"optimizer {self.name!r} does not take {', '.join(refused)}; "
                             f"it takes: {', '.join(sorted(spec.tunable))}")

    @property
    def spec(self) -> OptimizerSpec:
        """The registry entry."""
        return OPTIMIZERS[self.name]

    @functools.cached_property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments the optimizer class gets: its fixed settings, then the user's non-None ones."""
        given = {key: getattr(self, key) for key in TUNABLE if getattr(self, key) is not None}
        return {"lr": self.spec.default_lr, **self.spec.fixed, **given}


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise UsageError(f"{name}: expected {expected}, got {value!r}")


def fast_kwargs(spec: OptimizerSpec) -> dict[str, bool]:
    """The quickest implementation torch has for this optimizer on CUDA: fused kernels, else foreach."""
    accepted = inspect.signature(spec.cls).parameters
    if "fused" in accepted:
        return {"fused": True}
    return {"foreach": True} if "foreach" in accepted else {}


def build_optimizer(settings: OptimizerSettings, params: Iterable[torch.nn.Parameter] | Iterable[dict],
                    fast: bool = False) -> torch.optim.Optimizer:
    """Build the optimizer over `params` from validated settings.

    fast=True (for CUDA) asks for fused or foreach kernels: the same maths in fewer kernel launches.
    """
    return settings.spec.cls(params, **settings.kwargs, **(fast_kwargs(settings.spec) if fast else {}))

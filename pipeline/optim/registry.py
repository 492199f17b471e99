"""The optimizer registry shared by the toy and CIFAR tasks: name -> frozen spec -> torch optimizer. Beside the
curated names, `torch:<Class>`, `pytorch_optimizer:<name>` and `schedulefree:<Class>` name any optimizer of
those libraries (optim/libraries.py)."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import torch

from pipeline.core.errors import UsageError, one_line
from pipeline.core.values import require
from pipeline.optim.libraries import find_class, import_path, resolve, summary_of
from pipeline.optim.muon import MuonAdamW

# Hyper-parameters a user may set from the command line; everything else stays at the spec's value.
TUNABLE = ("lr", "momentum", "weight_decay")


@runtime_checkable
class SplitOptimizer(Protocol):
    """An optimizer that hands parameters to several parts (Muon: hidden matrices to Muon, the rest to AdamW) and
    says how many went where, for the run's params."""

    def counts(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one named optimizer: where its class lives, fixed settings, what the user may tune, and
    what a loop must know about it."""

    name: str
    path: str | type  # the class, or 'module.Class' imported only when it is used (libraries load lazily)
    summary: str
    paper: str = ""  # where the method comes from
    fixed: Mapping[str, Any] = field(default_factory=dict)  # settings that define the variant
    tunable: frozenset[str] = frozenset({"lr", "weight_decay"})
    source: str = ""  # the implementation, as the listing shows it; empty: `path`
    why_not_toy: str = ""  # why it cannot descend a 2-D point; empty: it can
    # How toy descends many starts at once with the same maths as one tensor per start: `elementwise` (each
    # coordinate of a vector updated on its own) as one vector; else `rows`, a twin that updates each row of one
    # (N, 2) tensor as the class updates a vector (optim/rowwise.py); else one tensor per start.
    elementwise: bool = True
    rows: str = ""
    schedule_free: bool = False  # optimizer.train() / .eval(): evaluate (and keep) its averaged weights

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))
        object.__setattr__(self, "source", self.source or (self.path if isinstance(self.path, str) else
                                                            import_path(self.path)))

    @property
    def cls(self) -> type[torch.optim.Optimizer]:
        """The optimizer class."""
        return resolve(self.path) if isinstance(self.path, str) else self.path

    @property
    def rows_cls(self) -> type[torch.optim.Optimizer] | None:
        """The row-wise twin (see `rows`), if it has one."""
        return resolve(self.rows) if self.rows else None

    @property
    def default_lr(self) -> float | None:
        """The learning rate used when the user sets none: the spec's own, else the class's default (None when
        the class has none)."""
        if "lr" in self.fixed:
            return float(self.fixed["lr"])
        default = inspect.signature(self.cls).parameters.get("lr")
        value = None if default is None else default.default
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


_WITH_MOMENTUM = frozenset({"lr", "momentum", "weight_decay"})

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("sgd", "torch.optim.SGD", "plain stochastic gradient descent", "Robbins & Monro 1951",
                      tunable=_WITH_MOMENTUM),
        OptimizerSpec("momentum", "torch.optim.SGD", "SGD with heavy-ball momentum 0.9 (the notebook's 'SGD')",
                      "Polyak 1964", {"momentum": 0.9}, _WITH_MOMENTUM),
        OptimizerSpec("nesterov", "torch.optim.SGD", "SGD with Nesterov momentum 0.9",
                      "Nesterov 1983; Sutskever et al. 2013", {"momentum": 0.9, "nesterov": True}, _WITH_MOMENTUM),
        OptimizerSpec("adam", "torch.optim.Adam", "running first and second moments of the gradient", "Kingma & Ba 2015"),
        OptimizerSpec("adamw", "torch.optim.AdamW", "Adam with decoupled weight decay", "Loshchilov & Hutter 2019"),
        OptimizerSpec("adamax", "torch.optim.Adamax", "Adam with the infinity norm", "Kingma & Ba 2015"),
        OptimizerSpec("adagrad", "torch.optim.Adagrad", "per-coordinate rates from summed squared gradients",
                      "Duchi, Hazan & Singer 2011"),
        OptimizerSpec("adadelta", "torch.optim.Adadelta", "Adagrad with a running window, unit-corrected",
                      "Zeiler 2012"),
        OptimizerSpec("asgd", "torch.optim.ASGD", "averaged SGD", "Polyak & Juditsky 1992"),
        OptimizerSpec("rmsprop", "torch.optim.RMSprop", "running mean of squared gradients",
                      "Tieleman & Hinton 2012", tunable=_WITH_MOMENTUM),
        OptimizerSpec("nadam", "torch.optim.NAdam", "Adam with Nesterov momentum", "Dozat 2016"),
        OptimizerSpec("radam", "torch.optim.RAdam", "Adam with a rectified warm-up of the variance",
                      "Liu et al. 2020"),
        OptimizerSpec("nadamw", "torch.optim.NAdam", "NAdam with decoupled weight decay 0.01: AlgoPerf's baseline",
                      "Dozat 2016; Loshchilov & Hutter 2019; AlgoPerf, Dahl et al. 2023",
                      {"decoupled_weight_decay": True, "weight_decay": 0.01},
                      source="torch.optim.NAdam(decoupled_weight_decay=True)"),
        OptimizerSpec("adafactor", "torch.optim.Adafactor", "factored second moments, update scaled to the weights",
                      "Shazeer & Stern 2018", elementwise=False, rows="pipeline.optim.rowwise.RowwiseAdafactor"),
        OptimizerSpec("muon", MuonAdamW, "orthogonalised momentum on hidden matrices, AdamW on the "
                      "rest", "Jordan et al. 2024; Liu et al. 2025", {"adjust_lr_fn": "match_rms_adamw"},
                      _WITH_MOMENTUM, "torch.optim.Muon + torch.optim.AdamW",
                      why_not_toy="it updates weight matrices (Newton-Schulz orthogonalisation) and a 2-D point has none; "
                          "use it with task=cifar", elementwise=False),
        OptimizerSpec("lion", "pytorch_optimizer.Lion", "sign of interpolated momentum (lr ~1/10 of AdamW's)",
                      "Chen et al. 2023", source="pytorch_optimizer.Lion"),
        OptimizerSpec("sfadamw", "schedulefree.AdamWScheduleFree", "Schedule-Free AdamW: iterate averaging, no "
                      "schedule", "Defazio et al. 2024", schedule_free=True),
        OptimizerSpec("soap", "pytorch_optimizer.SOAP", "Adam in the eigenbasis of Shampoo's preconditioner",
                      "Vyas et al. 2024"),  # element-wise on a vector: it preconditions only matrices (precondition_1d)
        OptimizerSpec("shampoo", "pytorch_optimizer.Shampoo", "Kronecker-factored preconditioner per tensor dimension",
                      "Gupta, Koren & Singer 2018", tunable=_WITH_MOMENTUM, elementwise=False,
                      rows="pipeline.optim.rowwise.RowwiseShampoo"),
    )
}


# The notebook's comparison, in its order ("SGD" there is SGD with momentum 0.9); it promised nesterov too.
NOTEBOOK_OPTIMIZERS = ("momentum", "adam", "adadelta", "adagrad", "adamw", "adamax", "asgd")
# What researchers compare today, with AdamW and Nesterov as the references they are measured against.
MODERN_OPTIMIZERS = ("nadamw", "adafactor", "muon", "lion", "sfadamw", "soap", "shampoo", "adamw", "nesterov")


def optimizer_names() -> list[str]:
    """Every registered optimizer name, in registry order."""
    return list(OPTIMIZERS)


def named_set(name: str, task: str) -> list[str] | None:
    """The optimizers a set name stands for on `task` (those that cannot run on it left out), None if `name` is
    no set: default (toy: every registered one; cifar: notebook), notebook (its seven and nesterov), modern, all."""
    sets = {"notebook": (*NOTEBOOK_OPTIMIZERS, "nesterov"), "modern": MODERN_OPTIMIZERS, "all": tuple(OPTIMIZERS)}
    sets["default"] = sets["notebook"] if task == "cifar" else sets["all"]
    if name not in sets:
        return None
    return [n for n in sets[name] if task != "toy" or not OPTIMIZERS[n].why_not_toy]


SET_NAMES = ("default", "notebook", "modern", "all")


@functools.lru_cache(maxsize=256)
def _library_spec(text: str) -> OptimizerSpec:
    """A spec for `<library>:<name>`, from the class itself: its defaults, and the tunable settings it takes."""
    name, cls = find_class(text)
    accepted = inspect.signature(cls).parameters
    if "lr" not in accepted:
        raise UsageError(f"optimizer {text!r} takes no lr, which optlab's schedules, logs and tune all set")
    library = name.split(":")[0]
    return OptimizerSpec(name, import_path(cls), summary_of(cls), tunable=frozenset(k for k in TUNABLE if k in accepted),
                         source=f"{'torch.optim' if library == 'torch' else library}.{cls.__name__}",
                         elementwise=False, schedule_free=keeps_two_sequences(cls))


def get_spec(name: str) -> OptimizerSpec:
    """The spec for `name` (a registered name or `<library>:<name>`), or a UsageError listing the valid names."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    if ":" in name:
        return _library_spec(name)
    raise UsageError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)} "
                     "(or torch:<Class>, pytorch_optimizer:<name>, schedulefree:<Class>)")


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
        require(self.lr is None or self.lr > 0, "lr", self.lr, "a number > 0")
        require(self.momentum is None or 0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        require(self.weight_decay is None or self.weight_decay >= 0, "weight_decay", self.weight_decay,
               "a number >= 0")
        refused = sorted(key for key in TUNABLE if getattr(self, key) is not None and key not in spec.tunable)
        if refused:
            raise UsageError(f"optimizer {self.name!r} does not take {', '.join(refused)}; "
                             f"it takes: {', '.join(sorted(spec.tunable))}")
        if self.lr is None and spec.default_lr is None:
            raise UsageError(f"optimizer {self.name!r} has no default lr; set lr")

    @property
    def spec(self) -> OptimizerSpec:
        """The registry entry (or the library class's spec)."""
        return get_spec(self.name)

    @functools.cached_property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments the optimizer class gets: its fixed settings, then the user's non-None ones."""
        given = {key: getattr(self, key) for key in TUNABLE if getattr(self, key) is not None}
        return {"lr": self.spec.default_lr, **self.spec.fixed, **given}


def fast_kwargs(spec: OptimizerSpec) -> dict[str, bool]:
    """The quickest implementation the class has on CUDA: fused kernels, else foreach."""
    accepted = inspect.signature(spec.cls).parameters
    if "fused" in accepted:
        return {"fused": True}
    return {"foreach": True} if "foreach" in accepted else {}


def preload() -> None:
    """Import now what torch.optim imports when it builds its first optimizer (torch._dynamo: 1-3 s on a CPU): a
    command's workers do it as they start, not in their first trial, whose timing it would swell and where a
    Ctrl-C would land inside the import (the interpreter then ends by SIGINT, not exit 130)."""
    import torch._dynamo  # noqa: F401, PLC0415


def build_optimizer(settings: OptimizerSettings, params: Iterable[torch.nn.Parameter] | Iterable[dict],
                    fast: bool = False, rows: bool = False) -> torch.optim.Optimizer:
    """Build the optimizer over `params` (in the model's registration order: Muon splits them by place) from
    validated settings. fast=True (for CUDA) asks for fused or foreach kernels: the same maths, fewer launches.
    rows=True builds the spec's row-wise twin instead (`OptimizerSpec.rows`)."""
    cls = settings.spec.rows_cls if rows else settings.spec.cls
    return cls(params, **settings.kwargs, **(fast_kwargs(settings.spec) if fast else {}))


def keeps_two_sequences(optimizer: torch.optim.Optimizer | type) -> bool:
    """Whether an optimizer (or its class) is schedule-free: it has train() and eval(), which swap the point
    where gradients are taken and the averaged weights in and out of the model."""
    return callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))


def set_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    """A schedule-free optimizer holds two weight sequences: train() puts the point where gradients are taken in
    the model, eval() the averaged weights that are evaluated and kept. A no-op for every other optimizer."""
    if keeps_two_sequences(optimizer):
        getattr(optimizer, "train" if training else "eval")()


def check_runs(settings: OptimizerSettings, task: str) -> None:
    """One UsageError, before any run, for an optimizer that cannot run `task`: a registered one that says so
    (Muon on a 2-D point), or a library class optlab's loops cannot drive (it needs a closure, a second backward
    pass, 2-D tensors only, ...), found by building it on small stand-in tensors and stepping it once."""
    if settings.spec.why_not_toy and task == "toy":
        raise UsageError(f"optimizer {settings.name!r} cannot run toy: {settings.spec.why_not_toy}")
    if settings.spec.name in OPTIMIZERS:
        return
    shapes = [(2,)] if task == "toy" else [(8, 3, 3, 3), (8,), (8, 8, 3, 3), (8,), (10, 8), (10,)]
    params = [torch.nn.Parameter(torch.full(shape, 0.5)) for shape in shapes]
    try:
        optimizer = build_optimizer(settings, params)
        set_mode(optimizer, training=True)
        for param in params:
            param.grad = torch.full_like(param, 0.1)
        optimizer.step()
    except Exception as error:  # noqa: BLE001 - whatever a foreign class raises, it cannot run here
        raise UsageError(f"optimizer {settings.name!r} cannot run {task} here ({one_line(error)})") from None

"""The `compare` entry point's config: its own params, validated up front, and one validated task config per
optimizer, built from every other param passed through; and the optimizer lists sweeps (compare, tune) share."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.config.tasks import PARAMS_FILE, TASKS, check_experiment, build_config
from pipeline.core.errors import UsageError
from pipeline.core.values import UNSET, require
from pipeline.optim.registry import SET_NAMES, TUNABLE, get_spec, named_set, optimizer_names


@dataclass(frozen=True)
class CompareConfig:
    """A sweep: one child run of `task` per optimizer, under one parent run."""

    task: str  # toy | cifar
    optimizers: str  # comma list of names and sets (default, notebook, modern, all)
    rerun: bool  # train again even where a finished run with the same config and code exists
    from_runs: str  # a compare run id or an experiment name: redraw from stored runs, train nothing
    lockstep: bool  # cifar: train all children in one process on the very same batches
    seeds: int  # runs per optimizer, on seeds seed .. seed+seeds-1
    experiment: str
    workloads: str  # names or the set suite: a sweep of workloads x optimizers (train's budgets) instead of task
    children: tuple = ()  # each optimizer's validated task config, filled by build_compare
    skipped: tuple = ()  # (workload, optimizer, why) pairs a workloads sweep leaves out

    def __post_init__(self) -> None:
        require(self.task in TASKS, "task", self.task, f"one of {', '.join(TASKS)}")
        check_experiment(self.experiment)
        require(self.task == "cifar" or not self.lockstep, "lockstep", self.lockstep, "false for task=toy "
                 "(toy runs are batched already)")
        require(1 <= self.seeds <= 1000, "seeds", self.seeds, "an integer in [1, 1000]")
        if self.workloads:
            for name, value, wanted in (("lockstep", self.lockstep, False), ("seeds", self.seeds, 1),
                                        ("from_runs", self.from_runs, "")):
                require(value == wanted, name, value, f"{wanted!r} with workloads= (one run per workload and "
                        "optimizer)")

    def optimizer_list(self) -> list[str]:
        """The optimizers to compare, validated, without repeats, in the order given (sets as for cifar in a
        sweep of workloads)."""
        return optimizer_list(self.optimizers, "cifar" if self.workloads else self.task)


def optimizer_list(text: str, task: str) -> list[str]:
    """A sweep's `optimizers` param: a comma list of names and set names, validated, without repeats, in the order
    given. Sets: default (toy: every registered optimizer that runs on a 2-D point; cifar: notebook), notebook (its
    seven plus nesterov), modern (today's, with adamw and nesterov as references), all."""
    parts = [part.strip() for part in (text.strip() or "default").split(",") if part.strip()]
    if not parts:  # ",", " , ": a list with no name in it, not the default
        raise UsageError(f"optimizers: expected a comma list of optimizer names or sets ({', '.join(SET_NAMES)}), "
                         f"got {text!r}; leave it empty for the default set")
    names = list(dict.fromkeys(name for part in parts for name in named_set(part, task) or [part]))
    for name in names:
        try:
            get_spec(name)
        except UsageError as error:
            raise UsageError(f"optimizers: {error}; or a set: {', '.join(SET_NAMES)}") from None
    return names


def _accepted(passed: Mapping[str, str], optimizer: str) -> dict[str, str]:
    """A sweep's shared params minus the hyper-parameters this optimizer does not take (e.g. momentum)."""
    tunable = get_spec(optimizer).tunable
    return {k: v for k, v in passed.items() if k not in TUNABLE or k in tunable}


def split_sweep(section: str, cls: type, overrides: Mapping[str, str] | None,
                params_file: Path) -> tuple[Any, dict[str, str]]:
    """A sweep's own config (compare, tune: its fields, validated) and every other param, to pass through to each
    child's task config."""
    own_names = {f.name for f in dataclasses.fields(cls)} - {"children"}
    overrides = dict(overrides or {})
    own = {key: value for key, value in overrides.items() if key in own_names}
    passed = {key: value for key, value in overrides.items() if key not in own_names}
    return build_config(section, own, params_file, cls=cls), passed


def build_compare(overrides: Mapping[str, str] | None = None, params_file: Path = PARAMS_FILE) -> CompareConfig:
    """The sweep's own params, plus every other param passed through to each child's task config."""
    config, passed = split_sweep("compare", CompareConfig, overrides, params_file)
    if "optimizer" in passed:
        raise UsageError("compare takes optimizers=a,b,c (a list), not optimizer")
    if config.workloads:
        return _workload_sweep(config, passed, params_file)
    if config.task == "cifar":  # the champion alias needs registered models
        passed.setdefault("register", passed.get("log_model", "true"))
    names = config.optimizer_list()
    _check_taken(passed, names)
    children = tuple(build_config(config.task, {**_accepted(passed, name), "optimizer": name,
                                                "experiment": config.experiment}, params_file)
                     for name in names)
    if any(getattr(child, "nproc", 1) > 1 for child in children):
        raise UsageError("nproc: compare trains its children one after another in this process; use nproc with "
                         "cifar, or lockstep=true to train every optimizer together")
    if config.seeds > 1 and config.task == "toy" and children[0].start != "random":
        raise UsageError(f"seeds: toy runs differ by seed only with start=random (got start={children[0].start!r})")
    return dataclasses.replace(config, children=children)


def _check_taken(passed: Mapping[str, str], names: list[str]) -> None:
    """A hyper-parameter given to a sweep must reach at least one of its optimizers, not vanish silently."""
    for key in TUNABLE:
        if key not in passed or str(passed[key]).strip().lower() in UNSET:
            continue
        if not any(key in get_spec(name).tunable for name in names):
            takers = [name for name in optimizer_names() if key in get_spec(name).tunable]
            raise UsageError(f"{key}: none of {', '.join(names)} takes it; it is for {', '.join(takers)} "
                             "(drop it, or add one of those to optimizers)")


def _workload_sweep(config: CompareConfig, passed: dict[str, str], params_file: Path) -> CompareConfig:
    """One `train` config per workload and optimizer; pairs that cannot run (Muon on a workload without weight
    matrices) are left out, each with the reason."""
    names = config.optimizer_list()
    _check_taken(passed, names)
    passed.pop("task", None)
    children, skipped = workload_children(config.workloads, names, passed, config.experiment, params_file)
    return dataclasses.replace(config, children=tuple(child for _, child in children), skipped=skipped)


def workload_children(workloads: str, names: list[str], passed: Mapping[str, str], experiment: str,
                      params_file: Path) -> tuple[list[tuple[str, Any]], tuple]:
    """A sweep of workloads (compare, tune): ([(optimizer, train config)] per workload and optimizer, the pairs
    left out as (workload, optimizer, why): Muon on a workload without hidden weight matrices)."""
    from pipeline.config.train import TrainConfig  # noqa: PLC0415
    from pipeline.workloads.registry import get_workload, workload_list  # noqa: PLC0415

    children, skipped = [], []
    for workload in workload_list(workloads):
        for name in names:
            if get_spec(name).why_not_toy and not get_workload(workload).hidden_matrices:
                skipped.append((workload, name, f"it updates hidden weight matrices and {workload} has none"))
                continue
            children.append((name, build_config("train", {**_accepted(passed, name), "workload": workload,
                                                          "optimizer": name, "experiment": experiment},
                                                params_file, cls=TrainConfig)))
    return children, tuple(skipped)

"""The `tune` entry point's config: its own params, validated up front, and one validated task config per
(optimizer, workload) study, built from every other param passed through (as `compare` passes them)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.config.compare import _check_taken, optimizer_list, split_sweep, workload_children
from pipeline.config.tasks import PARAMS_FILE, TASKS, check_experiment, build_config
from pipeline.core.errors import UsageError
from pipeline.core.values import require
from pipeline.optim.registry import get_spec
from pipeline.workloads.toy.functions import get_function

SAMPLERS = ("qmc", "grid", "random", "tpe")
PRUNERS = ("none", "hyperband")
SEARCHES = {"lr": ("lr",), "lr,weight_decay": ("lr", "weight_decay")}
STORAGE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql")
# Params tune sets itself for every trial and seed run: passing them would be ignored, so they are refused.
SET_BY_TUNE = {"lr": "tune searches lr between lr_min and lr_max; set those instead",
               "nproc": "tune runs its trials in worker processes of its own: set workers=N (one per GPU)",
               "optimizer": "tune takes optimizers=a,b,c (a list)",
               "resume": "tune resumes by itself: run the same command again",
               "start": "toy trials score a batch of random starts (starts=N); seed runs plot one random start each"}
# What does not change which study a command joins: the budget can grow, and workers come and go.
NOT_IN_KEY = ("trials", "seeds", "workers", "storage", "heartbeat_s", "verbose", "children", "skipped")


@dataclass(frozen=True)
class StudyPlan:
    """One optimizer on one workload (a toy function, a cifar model, or a workload of the registry): an Optuna
    study of its own."""

    optimizer: str
    workload: str
    base: Any  # the validated toy, cifar or train config at the optimizer's defaults; trials and seeds replace
    # lr, seed, ...
    dims: tuple[str, ...]  # the searched dimensions this optimizer takes

    @property
    def label(self) -> str:
        return f"{self.optimizer}-{self.workload}"


@dataclass(frozen=True)
class TuneConfig:
    """K trials per optimizer and workload from one search space, then S seeds of the best setting."""

    task: str  # toy | cifar
    optimizers: str  # comma list, or "default"
    functions: str  # toy: comma list of workloads (empty: the `function` param)
    models: str  # cifar: comma list of workloads (empty: the `model` param)
    trials: int  # K, counted: finished or pruned
    seeds: int  # S reruns of the best setting, on seeds seed+1 .. seed+S
    sampler: str
    pruner: str
    search: str
    lr_min: float
    lr_max: float
    weight_decay_min: float
    weight_decay_max: float
    starts: int  # toy: random starts scored together per trial
    workers: int  # local worker processes; 0: one per visible GPU (cifar, 2+ GPUs), else 1
    storage: str  # Optuna storage URL; empty: optuna.db beside the tracking store
    heartbeat_s: int  # seconds between a worker's heartbeats; silent for 3x this, its trial is failed and retried
    experiment: str
    verbose: bool  # a line per trial besides the progress bar
    workloads: str  # names or the set suite: studies of train runs, each scored by its workload's target
    children: tuple = ()  # StudyPlan per (optimizer, workload), filled by build_tune
    skipped: tuple = ()  # (workload, optimizer, why) pairs a tune of workloads leaves out

    def __post_init__(self) -> None:
        require(self.task in TASKS, "task", self.task, f"one of {', '.join(TASKS)}")
        require(1 <= self.trials <= 10_000, "trials", self.trials, "an integer in [1, 10000]")
        require(1 <= self.seeds <= 1000, "seeds", self.seeds, "an integer in [1, 1000]")
        require(self.sampler in SAMPLERS, "sampler", self.sampler, f"one of {', '.join(SAMPLERS)}")
        require(self.pruner in PRUNERS, "pruner", self.pruner, f"one of {', '.join(PRUNERS)}")
        require(self.pruner == "none" or self.kind == "cifar", "pruner", self.pruner,
                "none for task=toy and with workloads= (hyperband prunes cifar trials on per-epoch val_acc)")
        require(self.search_key() in SEARCHES, "search", self.search, f"one of {', '.join(SEARCHES)}")
        require(0 < self.lr_min < self.lr_max <= 1e30, "lr_min, lr_max", (self.lr_min, self.lr_max),
                "0 < lr_min < lr_max <= 1e30")
        require(0 < self.weight_decay_min < self.weight_decay_max <= 1e30, "weight_decay_min, weight_decay_max",
                (self.weight_decay_min, self.weight_decay_max), "0 < weight_decay_min < weight_decay_max <= 1e30")
        require(1 <= self.starts <= 100_000, "starts", self.starts, "an integer in [1, 100000]")
        require(0 <= self.workers <= 64, "workers", self.workers, "an integer in [0, 64] (0: one per visible GPU)")
        require(1 <= self.heartbeat_s <= 3600, "heartbeat_s", self.heartbeat_s, "an integer in [1, 3600]")
        _check_storage(self.storage)
        require(not (self.kind == "cifar" and self.functions.strip()), "functions", self.functions,
                "empty for task=cifar (use models=...)")
        require(not (self.kind == "toy" and self.models.strip()), "models", self.models,
                "empty for task=toy (use functions=...)")
        for name in ("functions", "models"):
            require(not (self.workloads.strip() and getattr(self, name).strip()), name, getattr(self, name),
                    "empty with workloads= (each workload is its own study)")
        check_experiment(self.experiment)

    @property
    def kind(self) -> str:
        """What the trials are: toy or cifar runs (task=), or train runs of workloads (workloads=)."""
        return "train" if self.workloads.strip() else self.task

    def score_of(self, plan: StudyPlan) -> tuple[str, str]:
        """(metric, direction) a study ranks its trials by: the toy gap, cifar's val_acc, or the workload's."""
        if self.kind == "train":
            return plan.base.spec.target.metric, plan.base.spec.target.direction
        return ("val_acc", "max") if self.kind == "cifar" else ("score", "min")

    def search_key(self) -> str:
        return ",".join(sorted(part.strip() for part in self.search.split(",") if part.strip()))

    @property
    def dims(self) -> tuple[str, ...]:
        return SEARCHES[self.search_key()]

    def optimizer_list(self) -> list[str]:
        """The optimizers to tune, validated, without repeats, in the order given."""
        return optimizer_list(self.optimizers, "cifar" if self.kind == "train" else self.task)

    def key(self) -> str:
        """What names this tune's studies: every setting that changes a score (not the budget, not workers)."""
        own = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_IN_KEY}
        if not own["workloads"]:  # the key of a toy or cifar tune is what it was before workloads= existed
            del own["workloads"]
        # `mlflow run --experiment-name/-id` chooses the experiment through the environment: a study per experiment
        own["experiment"] = os.environ.get("MLFLOW_EXPERIMENT_ID") or os.environ.get("MLFLOW_EXPERIMENT_NAME") or \
            self.experiment
        children = [(p.optimizer, p.workload, dataclasses.asdict(p.base)) for p in self.children]
        blob = json.dumps({"own": own, "children": children}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def study_name(self, plan: StudyPlan, phase: str = "trials") -> str:
        return f"optlab-tune-{self.key()}:{plan.label}:{phase}"


def _check_storage(url: str) -> None:
    """Empty, or a database URL every worker can share: SQLite only with a file path (each connection to an
    in-memory database is a new, empty one)."""
    scheme = url.split(":", 1)[0]
    require(not url or scheme in STORAGE_SCHEMES, "storage", url, "empty (optuna.db beside the tracking store) or "
            "a database URL: " + ", ".join(f"{s}://..." for s in STORAGE_SCHEMES[:3]))
    if scheme != "sqlite":
        return
    path, _, query = url[len("sqlite:"):].removeprefix("///").partition("?")
    in_memory = not url.startswith("sqlite:///") or path.strip() in ("", ":memory:") or \
        path.startswith("file::memory:") or "mode=memory" in query
    require(not in_memory, "storage", url, "a file path, e.g. sqlite:///optuna.db or sqlite:////abs/path/optuna.db "
            "(an in-memory SQLite database is not shared between workers nor kept for the next run), or empty")


def _workloads(config: TuneConfig, passed: Mapping[str, str], params_file: Path) -> list[str]:
    """The workloads named by functions= / models=, else the single function / model param."""
    listed = config.functions if config.task == "toy" else config.models
    names = list(dict.fromkeys(n.strip() for n in listed.split(",") if n.strip()))
    if config.task == "toy":
        for name in names:
            get_function(name)
        return names or [passed.get("function") or build_config("toy", {}, params_file).function]
    from pipeline.workloads.cifar.models import MODELS  # noqa: PLC0415 - torchvision only for cifar

    for name in names:
        require(name in MODELS, "models", name, f"names from {', '.join(MODELS)}")
    return names or [passed.get("model") or build_config("cifar", {}, params_file).model]


def build_tune(overrides: Mapping[str, str] | None = None, params_file: Path = PARAMS_FILE) -> TuneConfig:
    """The tune's own params, plus every other param passed through to each study's task config."""
    config, passed = split_sweep("tune", TuneConfig, overrides, params_file)
    for key, why in SET_BY_TUNE.items():
        if key in passed:
            raise UsageError(f"{key}: {why}")
    if "weight_decay" in config.dims and "weight_decay" in passed:
        raise UsageError("weight_decay: search=lr,weight_decay searches it; set weight_decay_min/_max instead")
    if config.kind == "cifar":
        passed.setdefault("register", "false")
    names = config.optimizer_list()
    _check_taken(passed, names)
    if config.kind == "train":
        return _workload_tune(config, names, passed, params_file)
    field = "function" if config.task == "toy" else "model"
    plans = []
    for name in names:
        taken = {k: v for k, v in passed.items() if k not in ("momentum", "weight_decay")
                 or k in get_spec(name).tunable}
        dims = tuple(d for d in config.dims if d in get_spec(name).tunable)
        for workload in _workloads(config, passed, params_file):
            base = build_config(config.task, {**taken, field: workload, "optimizer": name,
                                              "experiment": config.experiment}, params_file)
            plans.append(StudyPlan(name, workload, base, dims))
    return dataclasses.replace(config, children=tuple(plans))


def _workload_tune(config: TuneConfig, names: list[str], passed: dict[str, str], params_file: Path) -> TuneConfig:
    """A study per optimizer and workload of train runs (a user's workload labelled by its spec's name)."""
    passed.pop("task", None)
    passed.setdefault("log_model", "false")  # trials and seed reruns are measurements, not models to serve
    pairs, skipped = workload_children(config.workloads, names, passed, config.experiment, params_file)
    plans = tuple(StudyPlan(name, base.spec.name, base, tuple(d for d in config.dims if d in get_spec(name).tunable))
                  for name, base in pairs)
    return dataclasses.replace(config, children=plans, skipped=skipped)

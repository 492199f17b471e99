"""Typed, frozen configs per entry point: params.yaml defaults, then overrides, validated once up front."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.core.errors import UsageError
from pipeline.core.provenance import PROJECT_ROOT
from pipeline.core.values import coerce, parse_point, require, short
from pipeline.optim.registry import OptimizerSettings, check_runs
from pipeline.optim.schedulers import SCHEDULERS
from pipeline.workloads.toy.functions import get_function

PARAMS_FILE = PROJECT_ROOT / "params.yaml"

MAX_STEPS = 1_000_000  # toy steps: each logs 3 metric values
MAX_SEED = 2**32 - 1  # the range every seeded generator here accepts (torch takes int64, seed + 1 included)
MAX_CIFAR_LR = 1e30  # cifar weights are float32 (max 3.4e38): a larger lr or decay overflows inside torch
MAX_EXPERIMENT_NAME = 256  # experiments.name is VARCHAR(256) in MLflow's SQL schema


@dataclass(frozen=True)
class ToyConfig:
    """One optimizer descending one 2-D test function."""

    optimizer: str
    function: str
    lr: float | None  # None: the optimizer's own default
    momentum: float | None
    weight_decay: float | None
    steps: int
    start: str  # "x,y", "default" (the function's own start) or "random" (seeded, inside the plot window)
    tolerance: float  # converged once loss - f_min <= tolerance
    seed: int
    experiment: str

    def __post_init__(self) -> None:
        get_function(self.function)
        check_runs(self.optimizer_settings, "toy")
        require(1 <= self.steps <= MAX_STEPS, "steps", self.steps, f"an integer in [1, {MAX_STEPS}]")
        require(self.tolerance >= 0, "tolerance", self.tolerance, "a number >= 0")
        require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        check_experiment(self.experiment)
        if self.start not in ("default", "random"):
            parse_point(self.start)

    @functools.cached_property
    def optimizer_settings(self) -> OptimizerSettings:
        """The optimizer as set, validated: what is logged and built."""
        return OptimizerSettings(self.optimizer, self.lr, self.momentum, self.weight_decay)

    def start_point(self) -> tuple[float, float] | None:
        """The explicit start as (x, y), or None for 'default' / 'random'."""
        return None if self.start in ("default", "random") else parse_point(self.start)


DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class CifarConfig:
    """One optimizer training one model on CIFAR-10."""

    optimizer: str
    lr: float | None  # None: the optimizer's own default
    momentum: float | None
    weight_decay: float | None
    scheduler: str  # none | cosine | onecycle, stepped every batch
    model: str
    pretrained: bool
    data_dir: str
    download: bool
    train_limit: int  # images, 0 = all
    val_limit: int
    batch_size: int
    epochs: int
    seed: int  # initial weights, data order and augmentation
    device: str  # auto | cuda | cpu
    bf16: bool  # bf16 autocast of training steps where bf16 is native (CUDA; CPUs with AVX-512 BF16 or AMX)
    channels_last: bool  # on CUDA only
    compile: bool  # torch.compile the model (minutes of compiling first; pays off on long GPU runs)
    nproc: int  # training processes (DistributedDataParallel; torchrun starts them here when > 1)
    sync_bn: bool  # with several processes: BatchNorm over the global batch, as one process would
    landscape: bool | None  # draw the loss landscape with the path; None: on for one-process CUDA runs
    landscape_grid: int  # points a side of its grid
    landscape_images: int  # fixed training images every point is evaluated on
    landscape_directions: str  # pca (of the paths) or random (filter-normalised)
    target_acc: float  # val_acc (a fraction) whose first crossing time_to_target records
    resume: bool  # continue the latest unfinished run with this config from its checkpoint
    checkpoint_every_s: float  # training seconds between checkpoints (0 = after every epoch)
    system_metrics: bool  # CPU/GPU/memory figures in the run, every 10 s
    log_model: bool  # log the trained model with mlflow.pytorch.log_model
    register: bool  # also register it in the model registry under model_name
    model_name: str
    experiment: str

    def __post_init__(self) -> None:
        from pipeline.workloads.cifar.models import MODELS  # torchvision loads lazily: only cifar configs need it

        check_runs(self.optimizer_settings, "cifar")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            require(value is None or value <= MAX_CIFAR_LR, name, value, f"a number <= {MAX_CIFAR_LR:g}")
        require(self.scheduler in SCHEDULERS, "scheduler", self.scheduler, f"one of {', '.join(SCHEDULERS)}")
        require(self.scheduler == "none" or not self.optimizer_settings.spec.schedule_free, "scheduler",
                self.scheduler, f"none for {self.optimizer} (schedule-free: it replaces the schedule by averaging)")
        require(self.model in MODELS, "model", self.model, f"one of {', '.join(MODELS)}")
        if self.pretrained and not MODELS[self.model].has_pretrained:
            with_weights = ", ".join(name for name, spec in MODELS.items() if spec.has_pretrained)
            raise UsageError(f"pretrained: model {self.model!r} has no pretrained weights; only {with_weights}")
        require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        require(bool(self.data_dir.strip()), "data_dir", self.data_dir, "a folder")
        for name in ("train_limit", "val_limit"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0 (0 = all)")
        require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        self._check_processes()
        require(3 <= self.landscape_grid <= 201, "landscape_grid", self.landscape_grid, "an integer in [3, 201]")
        require(2 <= self.landscape_images <= 50_000, "landscape_images", self.landscape_images,
                "an integer in [2, 50000]")
        require(self.landscape_directions in ("pca", "random"), "landscape_directions", self.landscape_directions,
                "pca or random")
        require(0 < self.target_acc <= 1, "target_acc", self.target_acc, "a fraction in (0, 1]")
        require(0 <= self.checkpoint_every_s <= 1e9, "checkpoint_every_s", self.checkpoint_every_s,
                 "a number of seconds >= 0 (0 = after every epoch)")
        check_experiment(self.experiment)
        require(bool(re.fullmatch(r"[A-Za-z0-9][\w.-]{0,99}", self.model_name)), "model_name", self.model_name,
                 "a name of letters, digits, '_', '.', '-'")
        require(self.log_model or not self.register, "register", self.register, "false when log_model=false")

    def _check_processes(self) -> None:
        """nproc and what it needs: every process trains at least 2 images (BatchNorm) of every batch it gets,
        and gets some in every epoch (distributed.ShardedBatches drops a batch too small to give each two)."""
        require(1 <= self.nproc <= 64, "nproc", self.nproc, "an integer in [1, 64] (processes on this machine)")
        require(not (self.landscape and self.nproc > 1), "landscape", self.landscape, "false or unset with nproc > 1 "
                "(one process draws it; run it with nproc=1)")
        require(self.nproc == 1 or self.batch_size >= 2 * self.nproc, "batch_size", self.batch_size,
                f"at least 2 per process (>= {2 * self.nproc} with nproc={self.nproc}): batch_size is the global batch")
        require(self.nproc == 1 or self.train_limit == 0 or self.train_limit >= 2 * self.nproc, "train_limit",
                self.train_limit, f"0 (all) or at least 2 per process (>= {2 * self.nproc} with nproc={self.nproc}): "
                "a process with fewer trains no image")

    @functools.cached_property
    def optimizer_settings(self) -> OptimizerSettings:
        """The optimizer as set, validated: what is logged and built."""
        return OptimizerSettings(self.optimizer, self.lr, self.momentum, self.weight_decay)


@dataclass(frozen=True)
class PredictConfig:
    """Classify images with a logged model."""

    model_uri: str  # runs:/<run id>/model, models:/<name>@<alias>, models:/<name>/<version>, ...
    input: str  # an image file, a folder of images, or a CIFAR batch file
    batch_size: int
    experiment: str
    prompt: str  # a language model's prompt (shakespeare_gpt): its continuation is printed instead
    length: int  # characters the language model adds to the prompt
    temperature: float  # sampling temperature; 0: the most likely character each time
    seed: int  # the sampling's seed

    def __post_init__(self) -> None:
        require(bool(self.model_uri.strip()), "model_uri", self.model_uri,
                 "a model URI such as runs:/<run_id>/model or models:/optlab-cifar@champion")
        require(bool(self.input.strip()) != bool(self.prompt), "input", self.input, "an image file, a folder or a "
                "CIFAR batch file (or prompt=... for a language model, not both)")
        require(1 <= self.length <= 100_000, "length", self.length, "an integer in [1, 100000]")
        require(0 <= self.temperature <= 100, "temperature", self.temperature, "a number in [0, 100]")
        require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check_experiment(self.experiment)


TASKS = ("toy", "cifar")
CONFIGS: dict[str, type] = {"toy": ToyConfig, "cifar": CifarConfig, "predict": PredictConfig}  # sweeps: *_config.py


def check_experiment(name: str) -> None:
    """An experiment name every MLflow store takes: non-empty, and within the SQL stores' column of
    MAX_EXPERIMENT_NAME characters (MLflow itself checks 500; PostgreSQL refuses past 256)."""
    require(bool(name.strip()), "experiment", name, "a non-empty name")
    require(len(name) <= MAX_EXPERIMENT_NAME, "experiment", name, f"a name of at most {MAX_EXPERIMENT_NAME} "
             f"characters (got {len(name)})")


def load_defaults(section: str, params_file: Path = PARAMS_FILE, cls: type | None = None) -> dict[str, Any]:
    """The defaults for one entry point from params.yaml: a mapping of known params, else one UsageError.
    `cls` is the section's config class, when it is not in CONFIGS (sweep configs that build on these)."""
    try:
        document = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{params_file}: cannot be read ({type(error).__name__}); restore it from git") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"{params_file}: not valid YAML{line} ({getattr(error, 'problem', None) or 'parse error'})"
                         "; fix it or restore it from git") from None
    if not isinstance(document, dict) or not isinstance(document.get(section), dict):
        found = type(document.get(section) if isinstance(document, dict) else document).__name__
        raise UsageError(f"{params_file}: section {section!r} must be a mapping of param: value, got {found}")
    values = document[section]
    fields = {f.name for f in dataclasses.fields(cls or CONFIGS[section])} - {"children"}
    for key in values:
        if key not in fields:
            raise UsageError(f"{params_file}: {_unknown(key, section, fields)}")
    return dict(values)


def _unknown(key: Any, section: str, fields: set[str]) -> str:
    """'unknown param ...' with the closest valid name and the valid ones."""
    hint = difflib.get_close_matches(str(key), fields, n=1)
    maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown param {short(key)} for {section}{maybe}; valid: {', '.join(sorted(fields))}"


def build_config(section: str, overrides: Mapping[str, str] | None = None,
                 params_file: Path = PARAMS_FILE, cls: type | None = None) -> Any:
    """params.yaml's section, overridden by `overrides`, as the section's frozen, validated config."""
    cls = cls or CONFIGS[section]
    fields = {f.name for f in dataclasses.fields(cls)}
    values = load_defaults(section, params_file, cls)
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise UsageError(_unknown(key, section, fields))
        values[key] = value
    missing = {f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} - set(values)
    if missing:
        raise UsageError(f"{params_file} lacks {section}.{', '.join(sorted(missing))}")
    hints = typing.get_type_hints(cls)
    typed = {name: coerce(name, values[name], hints[name]) for name in fields if name in values}
    return cls(**typed)


def as_params(config: Any) -> dict[str, str]:
    """The config as flat string params for logging."""
    return {key: "" if value is None else str(value) for key, value in dataclasses.asdict(config).items()}


def logged_params(config: Any) -> dict[str, str]:
    """A toy or cifar config's params as used: unset optimizer settings replaced by the values they resolve to
    (the optimizer's real lr, its fixed momentum, ...)."""
    resolved = config.optimizer_settings.kwargs
    return {**as_params(config), **{key: str(value) for key, value in resolved.items()}}

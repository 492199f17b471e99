"""Typed, frozen configs per entry point: params.yaml defaults, then overrides, validated once up front."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.errors import UsageError
from pipeline.functions import get_function
from pipeline.optimizers import NOTEBOOK_OPTIMIZERS, get_spec, optimizer_names, resolve_hparams

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = PROJECT_ROOT / "params.yaml"

# Strings that mean "not set" for optional params (e.g. `-P lr=` or `-P lr=default`).
_UNSET = {"", "none", "null", "default"}
_TRUE = {"true", "yes", "1", "on"}
MAX_STEPS = 1_000_000  # toy steps: each logs 3 metric values
MAX_SEED = 2**32 - 1  # the range every seeded generator here accepts (torch takes int64, seed + 1 included)
MAX_CIFAR_LR = 1e30  # cifar weights are float32 (max 3.4e38): a larger lr or decay overflows inside torch
_FALSE = {"false", "no", "0", "off"}
MAX_EXPERIMENT_NAME = 256  # experiments.name is VARCHAR(256) in MLflow's SQL schema
MAX_TEXT = 1000  # characters of any text param: paths, URIs, lists (MLflow stores params of up to 6000)


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
        _check_hparams(self.lr, self.momentum, self.weight_decay)
        resolve_hparams(self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        _require(1 <= self.steps <= MAX_STEPS, "steps", self.steps, f"an integer in [1, {MAX_STEPS}]")
        _require(self.tolerance >= 0, "tolerance", self.tolerance, "a number >= 0")
        _require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        _check_experiment(self.experiment)
        if self.start not in ("default", "random"):
            parse_point(self.start)

    def start_point(self) -> tuple[float, float] | None:
        """The explicit start as (x, y), or None for 'default' / 'random'."""
        return None if self.start in ("default", "random") else parse_point(self.start)


SCHEDULERS = ("none", "cosine", "onecycle")
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
    target_acc: float  # val_acc (a fraction) whose first crossing time_to_target records
    resume: bool  # continue the latest unfinished run with this config from its checkpoint
    checkpoint_every_s: float  # training seconds between checkpoints (0 = after every epoch)
    system_metrics: bool  # CPU/GPU/memory figures in the run, every 10 s
    log_model: bool  # log the trained model with mlflow.pytorch.log_model
    register: bool  # also register it in the model registry under model_name
    model_name: str
    experiment: str

    def __post_init__(self) -> None:
        from pipeline.models import MODELS  # torchvision loads lazily: only cifar configs need it

        _check_hparams(self.lr, self.momentum, self.weight_decay)
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            _require(value is None or value <= MAX_CIFAR_LR, name, value, f"a number <= {MAX_CIFAR_LR:g}")
        resolve_hparams(self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        _require(self.scheduler in SCHEDULERS, "scheduler", self.scheduler, f"one of {', '.join(SCHEDULERS)}")
        _require(self.model in MODELS, "model", self.model, f"one of {', '.join(MODELS)}")
        if self.pretrained and not MODELS[self.model].has_pretrained:
            with_weights = ", ".join(name for name, spec in MODELS.items() if spec.has_pretrained)
            raise UsageError(f"pretrained: model {self.model!r} has no pretrained weights; only {with_weights}")
        _require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        _require(bool(self.data_dir.strip()), "data_dir", self.data_dir, "a folder")
        for name in ("train_limit", "val_limit"):
            _require(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0 (0 = all)")
        _require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _require(0 < self.target_acc <= 1, "target_acc", self.target_acc, "a fraction in (0, 1]")
        _require(0 <= self.checkpoint_every_s <= 1e9, "checkpoint_every_s", self.checkpoint_every_s,
                 "a number of seconds >= 0 (0 = after every epoch)")
        _check_experiment(self.experiment)
        _require(bool(re.fullmatch(r"[A-Za-z0-9][\w.-]{0,99}", self.model_name)), "model_name", self.model_name,
                 "a name of letters, digits, '_', '.', '-'")
        _require(self.log_model or not self.register, "register", self.register, "false when log_model=false")


@dataclass(frozen=True)
class PredictConfig:
    """Classify images with a logged model."""

    model_uri: str  # runs:/<run id>/model, models:/<name>@<alias>, models:/<name>/<version>, ...
    input: str  # an image file, a folder of images, or a CIFAR batch file
    batch_size: int
    experiment: str

    def __post_init__(self) -> None:
        _require(bool(self.model_uri.strip()), "model_uri", self.model_uri,
                 "a model URI such as runs:/<run_id>/model or models:/optlab-cifar@champion")
        _require(bool(self.input.strip()), "input", self.input, "an image file, a folder or a CIFAR batch file")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check_experiment(self.experiment)


TASKS = ("toy", "cifar")


@dataclass(frozen=True)
class CompareConfig:
    """A sweep: one child run of `task` per optimizer, under one parent run."""

    task: str  # toy | cifar
    optimizers: str  # comma list, or "default"
    rerun: bool  # train again even where a finished run with the same config and code exists
    from_runs: str  # a compare run id or an experiment name: redraw from stored runs, train nothing
    lockstep: bool  # cifar: train all children in one process on the very same batches
    experiment: str
    children: tuple = ()  # each optimizer's validated task config, filled by build_compare

    def __post_init__(self) -> None:
        _require(self.task in TASKS, "task", self.task, f"one of {', '.join(TASKS)}")
        _check_experiment(self.experiment)
        _require(self.task == "cifar" or not self.lockstep, "lockstep", self.lockstep, "false for task=toy "
                 "(toy runs are batched already)")

    def optimizer_list(self) -> list[str]:
        """The optimizers to compare, validated, without repeats, in the order given."""
        if self.optimizers.strip() in ("", "default"):
            return list(NOTEBOOK_OPTIMIZERS) + ["nesterov"] if self.task == "cifar" else optimizer_names()
        names = list(dict.fromkeys(name.strip() for name in self.optimizers.split(",") if name.strip()))
        for name in names:
            get_spec(name)
        return names


CONFIGS: dict[str, type] = {"toy": ToyConfig, "cifar": CifarConfig, "compare": CompareConfig,
                             "predict": PredictConfig}


def _accepted(passed: Mapping[str, str], optimizer: str) -> dict[str, str]:
    """A sweep's shared params minus the hyper-parameters this optimizer does not take (e.g. momentum)."""
    tunable = get_spec(optimizer).tunable
    return {k: v for k, v in passed.items() if k not in ("lr", "momentum", "weight_decay") or k in tunable}


def build_compare(overrides: Mapping[str, str] | None = None, params_file: Path = PARAMS_FILE) -> CompareConfig:
    """The sweep's own params, plus every other param passed through to each child's task config."""
    own_names = {f.name for f in dataclasses.fields(CompareConfig)} - {"children"}
    overrides = dict(overrides or {})
    own = {key: value for key, value in overrides.items() if key in own_names}
    passed = {key: value for key, value in overrides.items() if key not in own_names}
    config = build_config("compare", own, params_file)
    if "optimizer" in passed:
        raise UsageError("compare takes optimizers=a,b,c (a list), not optimizer")
    if config.task == "cifar":  # the champion alias needs registered models
        passed.setdefault("register", passed.get("log_model", "true"))
    names = config.optimizer_list()
    _check_taken(passed, names)
    children = tuple(build_config(config.task, {**_accepted(passed, name), "optimizer": name,
                                                "experiment": config.experiment}, params_file)
                     for name in names)
    return dataclasses.replace(config, children=children)


def _check_taken(passed: Mapping[str, str], names: list[str]) -> None:
    """A hyper-parameter given to a sweep must reach at least one of its optimizers, not vanish silently."""
    for key in ("lr", "momentum", "weight_decay"):
        if key not in passed or str(passed[key]).strip().lower() in _UNSET:
            continue
        if not any(key in get_spec(name).tunable for name in names):
            takers = [name for name in optimizer_names() if key in get_spec(name).tunable]
            raise UsageError(f"{key}: none of {', '.join(names)} takes it; it is for {', '.join(takers)} "
                             "(drop it, or add one of those to optimizers)")


# Settings that change where or how a run is recorded, not what it computes.
_NOT_IN_HASH = {"resume", "checkpoint_every_s", "system_metrics", "log_model", "register", "model_name", "experiment"}


def config_hash(config: Any) -> str:
    """A short hash of everything that decides a run's numbers: equal hashes, equal training."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_HASH}
    fields["entry"] = type(config).__name__
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def code_version() -> str:
    """A short hash of the package's source: runs with equal hashes ran the same code."""
    digest = hashlib.sha256()
    for source in sorted((PROJECT_ROOT / "pipeline").glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


def parse_point(text: str) -> tuple[float, float]:
    """'x,y' -> (x, y) with both finite, else a UsageError."""
    parts = text.split(",")
    try:
        x, y = (float(part) for part in parts)
    except ValueError:
        raise UsageError(f"start: expected two numbers 'x,y' (or 'default', 'random'), got {_short(text)}") \
            from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise UsageError(f"start: both coordinates must be finite, got {_short(text)}")
    return x, y


def _check_hparams(lr: float | None, momentum: float | None, weight_decay: float | None) -> None:
    """Ranges of the tunable optimizer hyper-parameters (None: the optimizer's own default)."""
    _require(lr is None or lr > 0, "lr", lr, "a number > 0")
    _require(momentum is None or 0 <= momentum < 1, "momentum", momentum, "a number in [0, 1)")
    _require(weight_decay is None or weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0")


def _check_experiment(name: str) -> None:
    """An experiment name every MLflow store takes: non-empty, and within the SQL stores' column of
    MAX_EXPERIMENT_NAME characters (MLflow itself checks 500; PostgreSQL refuses past 256)."""
    _require(bool(name.strip()), "experiment", name, "a non-empty name")
    _require(len(name) <= MAX_EXPERIMENT_NAME, "experiment", name, f"a name of at most {MAX_EXPERIMENT_NAME} "
             f"characters (got {len(name)})")


def _require(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise UsageError(f"{name}: expected {expected}, got {_short(value)}")


def _short(value: Any) -> str:
    """repr(value), cut to 80 characters: error lines stay readable for a 400-digit number."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    """Turn a YAML value or a command-line string into the field's type, or raise a UsageError."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind):
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _UNSET):
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    text = str(raw).strip()
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise UsageError(f"{name}: expected true or false, got {_short(raw)}")
    if kind is int:
        # ASCII digits only: str.isdigit() also passes '²' and '+-5', which int() then rejects
        if isinstance(raw, bool) or not re.fullmatch(r"[+-]?[0-9]{1,4000}", text):
            raise UsageError(f"{name}: expected an integer, got {_short(raw)}")
        return int(text)
    if kind is float:
        try:
            number = float(text) if not isinstance(raw, bool) else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise UsageError(f"{name}: expected a finite number, got {_short(raw)}")
        return number
    if len(text) > MAX_TEXT:
        raise UsageError(f"{name}: expected at most {MAX_TEXT} characters, got {len(text)}")
    return text


def load_defaults(section: str, params_file: Path = PARAMS_FILE) -> dict[str, Any]:
    """The defaults for one entry point from params.yaml: a mapping of known params, else one UsageError."""
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
    fields = {f.name for f in dataclasses.fields(CONFIGS[section])} - {"children"}
    for key in values:
        if key not in fields:
            raise UsageError(f"{params_file}: {_unknown(key, section, fields)}")
    return dict(values)


def _unknown(key: Any, section: str, fields: set[str]) -> str:
    """'unknown param ...' with the closest valid name and the valid ones."""
    hint = difflib.get_close_matches(str(key), fields, n=1)
    maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown param {_short(key)} for {section}{maybe}; valid: {', '.join(sorted(fields))}"


def build_config(section: str, overrides: Mapping[str, str] | None = None,
                 params_file: Path = PARAMS_FILE) -> Any:
    """params.yaml's section, overridden by `overrides`, as the section's frozen, validated config."""
    cls = CONFIGS[section]
    fields = {f.name for f in dataclasses.fields(cls)}
    values = load_defaults(section, params_file)
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise UsageError(_unknown(key, section, fields))
        values[key] = value
    missing = {f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} - set(values)
    if missing:
        raise UsageError(f"{params_file} lacks {section}.{', '.join(sorted(missing))}")
    hints = typing.get_type_hints(cls)
    typed = {name: _coerce(name, values[name], hints[name]) for name in fields if name in values}
    return cls(**typed)


def as_params(config: Any) -> dict[str, str]:
    """The config as flat string params for logging."""
    return {key: "" if value is None else str(value) for key, value in dataclasses.asdict(config).items()}

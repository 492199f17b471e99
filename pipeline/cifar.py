"""The `cifar` entry point: one optimizer trains one model on CIFAR-10, tracked as one MLflow run."""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.checkpoint import FILE_NAME, restore_checkpoint
from pipeline.config import CifarConfig, logged_params
from pipeline.data import CIFAR_CLASSES, CifarArrays, CifarLoader, UnofficialDataWarning, load_cifar10
from pipeline.errors import EXIT_OK, UsageError
from pipeline.logger import RunHooks
from pipeline.models import build_model
from pipeline.optimizers import build_optimizer
from pipeline.provenance import code_version, config_hash
from pipeline.runlog import RunLog
from pipeline.schedulers import build_scheduler
from pipeline.train import FitState, Member, Precision, fit, schedule_free

CHECKPOINT = f"checkpoints/{FILE_NAME}"
BN_SAMPLE = 4096  # training images a schedule-free run measures BatchNorm statistics on, before each evaluation


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without one is a usage error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device: cuda was asked for but torch sees no CUDA device; use device=auto or cpu")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def load_data(cfg: CifarConfig) -> CifarArrays:
    """The data, before any run starts: a missing folder is a usage error; unofficial files a one-line warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnofficialDataWarning)
        arrays = load_cifar10(cfg.data_dir, cfg.download, cfg.train_limit, cfg.val_limit)
    for warning in caught:
        print(f"warning: {warning.message}; using it anyway ({len(arrays.train_y)} train, "
              f"{len(arrays.test_y)} test images)")
    return arrays


@dataclass
class Trainer:
    """Everything one training run moves forward: model, optimizer, schedule, loaders and precision."""

    model: torch.nn.Module  # the plain module: checkpoints and the logged model come from it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    train_batches: CifarLoader
    val_batches: CifarLoader
    precision: Precision
    forward: torch.nn.Module | None = None  # torch.compile'd model when compile=true; shares the parameters
    bn_batches: CifarLoader | None = None  # schedule-free only: fixed training images for BatchNorm statistics

    def member(self) -> Member:
        """The model as train.py steps it: compiled when asked for, same parameters either way."""
        return Member(self.forward or self.model, self.optimizer, self.scheduler)

    def split_params(self) -> dict[str, str]:
        """Params saying which parameters went to which part of a split optimizer (Muon: muon_tensors, ...)."""
        counts = getattr(self.optimizer, "counts", None)
        return {key: str(value) for key, value in counts().items()} if callable(counts) else {}


def build_loaders(cfg: CifarConfig, arrays: CifarArrays, device: torch.device) -> tuple[CifarLoader, CifarLoader]:
    """Train (seeded order and augmentation) and test loaders, the data held as uint8 on the device."""
    train = CifarLoader(arrays.train_x, arrays.train_y, cfg.batch_size, train=True, seed=cfg.seed, device=device)
    return train, CifarLoader(arrays.test_x, arrays.test_y, cfg.batch_size, train=False, device=device)


def build_trainer(cfg: CifarConfig, loaders: tuple[CifarLoader, CifarLoader], device: torch.device) -> Trainer:
    """Seeded model (the same initial weights for every optimizer), optimizer and schedule over `loaders`."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(CIFAR_CLASSES), cfg.pretrained).to(device)
    precision = Precision(device, bf16=cfg.bf16, channels_last=cfg.channels_last)
    if precision.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer_settings, model.parameters(), fast=device.type == "cuda")
    train, val = loaders
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs * len(train))
    forward = torch.compile(model) if cfg.compile else None
    bn = train.sample(BN_SAMPLE) if schedule_free(optimizer) else None
    return Trainer(model, optimizer, scheduler, train, val, precision, forward, bn)


def start_info(cfg: CifarConfig, arrays: CifarArrays, device: torch.device,
               train: CifarLoader) -> tuple[dict, dict]:
    """Params (as used) and tags for a fresh run."""
    params = {**logged_params(cfg), "train_images": str(len(arrays.train_y)), "val_images": str(len(arrays.test_y)),
              "train_images_per_epoch": str(train.images_per_epoch)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    autocast = Precision(device, bf16=cfg.bf16).autocast_bf16
    tags = {"task": "cifar", "config_hash": config_hash(cfg), "code_version": code_version(), "device": name,
            "train_precision": "bf16 autocast" if autocast else "fp32",
            "data_official": str(arrays.official).lower(), "data_digest": arrays.digest}
    return params, tags


def resume_target(cfg: CifarConfig) -> str | None:
    """The run `resume=true` continues: the one `mlflow run --run-id` names, else the newest unfinished one."""
    if not cfg.resume:
        return None
    handed = tracking.handed_run_tags()  # the run `mlflow run` made or was told to continue, if any
    if handed is not None and "config_hash" in handed:
        return None  # mlflow run --run-id <an earlier run of ours>: continued as it is
    found = tracking.find_resumable_run(cfg.experiment, config_hash(cfg))
    if handed is not None:
        hint = f"; to continue run {found}, add --run-id {found}" if found else ""
        raise UsageError("resume: `mlflow run` started a new run, which has nothing to resume" + (
            hint or " (no unfinished run with this config in the experiment it chose); run without resume=true"))
    if found is None:
        raise UsageError(f"resume: no unfinished run with this config in experiment {cfg.experiment!r}; "
                         "run without resume=true to start one")
    return found


def main(cfg: CifarConfig) -> int:
    """The `cifar` entry point: one tracked training run; exit code 3 if the loss diverged."""
    device = resolve_device(cfg.device)
    return run_cifar(cfg, load_data(cfg), device)[1]


def _restore(log: RunLog, trainer: Trainer, run_id: str, scratch: str) -> FitState | None:
    """The progress a resumed run continues from: its checkpoint's, or None to start over."""
    log.resuming(tracking.last_step(run_id, "train_loss"), tracking.last_step(run_id, "time_to_target") > 0)
    saved = tracking.download(run_id, CHECKPOINT, scratch)
    if saved is None:
        print(f"resuming run {run_id} from its start: it crashed before its first checkpoint")
        return None
    state = restore_checkpoint(saved, trainer.model, trainer.optimizer, trainer.scheduler, trainer.train_batches,
                               f"{CHECKPOINT} of run {run_id}")
    log.restored(state)
    print(f"resuming run {run_id} after epoch {state.epoch}")
    return state


def _epoch_callback(log: RunLog, hooks: RunHooks):
    """The run log's per-epoch call, then the hooks' (which may end training early)."""
    if hooks.on_epoch is None:
        return log.on_epoch

    def on_epoch(epoch: int, metrics: dict, confusion: torch.Tensor, state: FitState) -> None:
        log.on_epoch(epoch, metrics, confusion, state)
        hooks.on_epoch(epoch, metrics)

    return on_epoch


def run_cifar(cfg: CifarConfig, arrays: CifarArrays, device: torch.device, parent: tracking.Run | None = None,
              hooks: RunHooks = RunHooks()) -> tuple[str, int]:
    """Train one optimizer (a new run, or a resumed one), log every epoch and the model; returns (run id,
    exit code)."""
    run_id = resume_target(cfg) if parent is None else None
    loaders = build_loaders(cfg, arrays, device)
    params, tags = start_info(cfg, arrays, device, loaders[0])
    with tracking.open_run(cfg.experiment, hooks.name or f"{cfg.optimizer}-{cfg.model}", {**tags, **hooks.tags},
                           parent=parent, run_id=run_id, system_metrics=cfg.system_metrics) as run, \
            tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
        hooks.opened(run)
        trainer = build_trainer(cfg, loaders, device)
        log = RunLog(cfg, run, trainer, Path(scratch))
        log.begin({**params, **trainer.split_params()}, arrays)
        state = _restore(log, trainer, run.run_id, scratch) if cfg.resume else None
        (state,) = fit([trainer.member()], trainer.train_batches, trainer.val_batches, cfg.epochs,
                       trainer.precision, cfg.target_acc, [_epoch_callback(log, hooks)], [state] if state else None,
                       bn_batches=trainer.bn_batches)
        code = log.finish(state, arrays)
        if code != EXIT_OK:
            run.fail()
    return run.run_id, code


# What lockstep children may differ in: everything else decides the shared data pipeline and model.
_PER_OPTIMIZER = {"optimizer", "lr", "momentum", "weight_decay", "scheduler", "register", "model_name"}


def run_lockstep(cfgs: list[CifarConfig], arrays: CifarArrays, device: torch.device,
                 parent: tracking.Run) -> list[tuple[str, int]]:
    """Train every config in one process on the very same augmented batches (one data pipeline, one model and
    optimizer each), logging one child run each; returns (run id, exit code) per config."""
    shared = [{k: v for k, v in dataclasses.asdict(c).items() if k not in _PER_OPTIMIZER} for c in cfgs]
    if any(other != shared[0] for other in shared):
        raise UsageError("lockstep: the children must differ only in optimizer settings")
    if cfgs[0].resume:
        raise UsageError("lockstep: resume=true is not supported; resume children one by one")
    loaders = build_loaders(cfgs[0], arrays, device)
    trainers = [build_trainer(cfg, loaders, device) for cfg in cfgs]
    with tempfile.TemporaryDirectory(prefix="optlab-") as scratch, contextlib.ExitStack() as children:
        runs, logs = [], []
        for cfg, trainer in zip(cfgs, trainers):
            params, tags = start_info(cfg, arrays, device, loaders[0])
            runs.append(children.enter_context(tracking.open_run(
                cfg.experiment, f"{cfg.optimizer}-{cfg.model}", {**tags, "lockstep": "true"}, parent=parent)))
            logs.append(RunLog(cfg, runs[-1], trainer, Path(scratch) / runs[-1].run_id))
            logs[-1].begin({**params, **trainer.split_params()}, arrays)
        bn = next((t.bn_batches for t in trainers if t.bn_batches is not None), None)  # one sample serves all
        states = fit([t.member() for t in trainers], loaders[0], loaders[1], cfgs[0].epochs, trainers[0].precision,
                     cfgs[0].target_acc, [log.on_epoch for log in logs], bn_batches=bn)
        outcomes = []
        for run, log, state in zip(runs, logs, states):
            if (code := log.finish(state, arrays)) != EXIT_OK:
                run.fail()
            outcomes.append((run.run_id, code))
    return outcomes

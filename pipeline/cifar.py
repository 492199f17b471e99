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
from pipeline.config.tasks import CifarConfig, as_params, logged_params
from pipeline.core.errors import EXIT_DIVERGED, EXIT_OK, UsageError
from pipeline.core.provenance import code_version, config_hash
from pipeline.landscape import report as landscape_report
from pipeline.optim.registry import SplitOptimizer, build_optimizer, keeps_two_sequences
from pipeline.optim.schedulers import build_scheduler
from pipeline.training import distributed, nproc
from pipeline.training.checkpoint import FILE_NAME, restore_checkpoint
from pipeline.training.distributed import SINGLE, ShardedBatches, World
from pipeline.training.hooks import RunHooks
from pipeline.training.loop import FitState, Member, Precision, fit
from pipeline.training.runlog import RunLog
from pipeline.workloads.cifar.data import CIFAR_CLASSES, CifarArrays, CifarLoader, UnofficialDataWarning, load_cifar10
from pipeline.workloads.cifar.models import build_model

CHECKPOINT = f"checkpoints/{FILE_NAME}"
BN_SAMPLE = 4096  # training images a schedule-free run measures BatchNorm statistics on, before each evaluation


def resolve_device(name: str, world: World = SINGLE, nproc: int = 1) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without one is a usage error. Each process of a
    multi-process job takes the GPU of its local rank, so a machine needs a GPU per process."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device: cuda was asked for but torch sees no CUDA device; use device=auto or cpu")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        if max(nproc, world.local_rank + 1) > torch.cuda.device_count():
            raise UsageError(f"nproc: {max(nproc, world.local_rank + 1)} processes need as many GPUs; torch sees "
                             f"{torch.cuda.device_count()} (set nproc, or device=cpu)")
        return torch.device("cuda", world.local_rank) if world.size > 1 or nproc > 1 else torch.device("cuda")
    return torch.device("cpu")


def load_data(cfg: CifarConfig, quiet: bool = False) -> CifarArrays:
    """The data, before any run starts: a missing folder is a usage error; unofficial files a one-line warning
    (not repeated by every process of a job: `quiet`)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnofficialDataWarning)
        arrays = load_cifar10(cfg.data_dir, cfg.download, cfg.train_limit, cfg.val_limit)
    for warning in caught if not quiet else ():
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
    forward: torch.nn.Module | None = None  # compiled and/or DistributedDataParallel; shares the parameters
    bn_batches: CifarLoader | None = None  # schedule-free only: fixed training images for BatchNorm statistics
    world: World = SINGLE
    recorder: object = None  # landscape.Recorder of the path, when a landscape is drawn

    def member(self) -> Member:
        """The model as training/loop.py steps it: compiled or distributed when asked for, same parameters either way;
        with several processes, evaluation runs the plain model (each rank its share, no collectives inside)."""
        return Member(self.forward or self.model, self.optimizer, self.scheduler,
                      self.model if self.world.size > 1 else None, self.recorder)

    def batches(self) -> tuple:
        """(train, val) batches as fit() takes them: with several processes, each rank's share of every batch."""
        if self.world.size == 1:
            return self.train_batches, self.val_batches
        return (ShardedBatches(self.train_batches, self.world, train=True),
                ShardedBatches(self.val_batches, self.world, train=False))

    def fit(self, cfg: CifarConfig, callback, state: FitState | None) -> FitState:
        """Train to cfg.epochs from `state` (None: from the start); on every rank of a job alike."""
        train, val = self.batches()
        (state,) = fit([self.member()], train, val, cfg.epochs, self.precision, cfg.target_acc, [callback],
                       [state] if state else None, show_progress=None if self.world.main else False,
                       bn_batches=self.bn_batches, world=self.world)
        return state

    def split_params(self) -> dict[str, str]:
        """Params saying which parameters went to which part of a split optimizer (Muon: muon_tensors, ...)."""
        if not isinstance(self.optimizer, SplitOptimizer):
            return {}
        return {key: str(value) for key, value in self.optimizer.counts().items()}


def build_loaders(cfg: CifarConfig, arrays: CifarArrays, device: torch.device) -> tuple[CifarLoader, CifarLoader]:
    """Train (seeded order and augmentation) and test loaders, the data held as uint8 on the device."""
    train = CifarLoader(arrays.train_x, arrays.train_y, cfg.batch_size, train=True, seed=cfg.seed, device=device)
    return train, CifarLoader(arrays.test_x, arrays.test_y, cfg.batch_size, train=False, device=device)


def build_trainer(cfg: CifarConfig, loaders: tuple[CifarLoader, CifarLoader], device: torch.device,
                  world: World = SINGLE) -> Trainer:
    """Seeded model (the same initial weights for every optimizer), optimizer and schedule over `loaders`; with
    several processes, DistributedDataParallel over the model (SyncBatchNorm first with sync_bn)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(CIFAR_CLASSES), cfg.pretrained).to(device)
    precision = Precision(device, bf16=cfg.bf16, channels_last=cfg.channels_last)
    if precision.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world.size > 1:
        model = distributed.sync_batchnorm(model, device)
    optimizer = build_optimizer(cfg.optimizer_settings, model.parameters(), fast=device.type == "cuda")
    train, val = loaders
    steps = len(ShardedBatches(train, world, train=True)) if world.size > 1 else len(train)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs * steps)
    forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None) if world.size > 1 else None
    forward = torch.compile(forward or model) if cfg.compile else forward
    bn = train.sample(BN_SAMPLE) if keeps_two_sequences(optimizer) else None
    return Trainer(model, optimizer, scheduler, train, val, precision, forward, bn, world)


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
    """The `cifar` entry point: one tracked training run; exit code 3 if the loss diverged. nproc > 1 starts
    the same command in that many processes (torchrun); in a process torchrun started, this is one rank."""
    world = distributed.world_from_env()
    if world.size == 1 and cfg.nproc > 1:
        resolve_device(cfg.device, nproc=cfg.nproc)  # what the processes would refuse: one line, none started
        distributed.check_shares(len(load_data(cfg, quiet=True).train_y), cfg.nproc)
        resume_target(cfg)
        return nproc.relaunch("cifar", as_params(cfg), cfg.nproc)
    if cfg.nproc not in (1, world.size):
        raise UsageError(f"nproc: this process is one of {world.size} that torchrun started; leave nproc at 1")
    cfg = dataclasses.replace(cfg, nproc=world.size)
    if cfg.batch_size < 2 * world.size:
        raise UsageError(f"batch_size: expected at least 2 per process (>= {2 * world.size}), got {cfg.batch_size}")
    device = resolve_device(cfg.device, world)
    arrays = load_data(cfg, quiet=not world.main)
    distributed.check_shares(len(arrays.train_y), world.size)
    with distributed.job(world, device):
        return run_cifar(cfg, arrays, device, world=world)[1]


def _restore(trainer: Trainer, run_id: str, scratch: str) -> FitState | None:
    """The progress a resumed run continues from (every rank of a job alike): its checkpoint's, or None. Rank 0
    downloads it and hands every rank the same bytes, which each loads as safely as one process would."""
    world = trainer.world
    path = tracking.download(run_id, CHECKPOINT, scratch) if world.main else None
    if world.size > 1:  # the others get rank 0's bytes, and load them from a file of their own
        data = distributed.broadcast_bytes(path.read_bytes() if path is not None else None, world,
                                           trainer.precision.device)
        if data is not None and not world.main:
            path = Path(scratch) / f"restored-{world.rank}.pt"
            path.write_bytes(data)
    if path is None:
        return None
    return restore_checkpoint(path, trainer.model, trainer.optimizer, trainer.scheduler, trainer.train_batches,
                              f"{CHECKPOINT} of run {run_id}")


def _resume(log: RunLog, trainer: Trainer, run_id: str, scratch: str) -> FitState | None:
    """Rank 0's resume: what the store holds, then the checkpoint (shared with the other ranks)."""
    log.resuming(tracking.last_step(run_id, "train_loss"), tracking.last_step(run_id, "time_to_target") > 0)
    state = _restore(trainer, run_id, scratch)
    if state is None:
        print(f"resuming run {run_id} from its start: it crashed before its first checkpoint")
        return None
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
              hooks: RunHooks = RunHooks(), world: World = SINGLE) -> tuple[str, int]:
    """Train one optimizer (a new run, or a resumed one), log every epoch and the model; returns (run id,
    exit code). In a job of several processes this is rank 0, which alone talks to MLflow (see _follow)."""
    if not world.main:
        return "", _follow(cfg, arrays, device, world)
    run_id = resume_target(cfg) if parent is None else None
    loaders = build_loaders(cfg, arrays, device)
    params, tags = start_info(cfg, arrays, device, loaders[0])
    with tracking.open_run(cfg.experiment, hooks.name or f"{cfg.optimizer}-{cfg.model}", {**tags, **hooks.tags},
                           parent=parent, run_id=run_id, system_metrics=cfg.system_metrics) as run, \
            tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
        hooks.opened(run)
        nproc.record_run(run.run_id)
        trainer = build_trainer(cfg, loaders, device, world)
        hooks.prepared(trainer)  # a sweep records the path for its own landscape
        own = landscape_report.recorder(trainer) if parent is None and landscape_report.enabled(cfg, device) \
            else None
        trainer.recorder = trainer.recorder or own
        log = RunLog(cfg, run, trainer, Path(scratch))
        log.begin({**params, **trainer.split_params()}, arrays)
        state = _resume(log, trainer, run.run_id, scratch) if cfg.resume else None
        if state is not None and trainer.recorder is not None:
            trainer.recorder.resumed(state.epoch)
        state = trainer.fit(cfg, _epoch_callback(log, hooks), state)
        code = log.finish(state, arrays)
        if code == EXIT_OK and own is not None:
            landscape_report.draw(run, cfg, {cfg.optimizer: own}, arrays, device)
        if code != EXIT_OK:
            run.fail()
    return run.run_id, code


def _follow(cfg: CifarConfig, arrays: CifarArrays, device: torch.device, world: World) -> int:
    """A rank other than 0: the same training on its share of every batch, in step with rank 0 (the same
    checkpoint to resume from, the same collectives), logging nothing."""
    trainer = build_trainer(cfg, build_loaders(cfg, arrays, device), device, world)
    with tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
        state = _restore(trainer, "", scratch) if cfg.resume else None
    state = trainer.fit(cfg, lambda *_: None, state)
    return EXIT_DIVERGED if state.diverged else EXIT_OK


# What lockstep children may differ in: everything else decides the shared data pipeline and model.
_PER_OPTIMIZER = {"optimizer", "lr", "momentum", "weight_decay", "scheduler", "register", "model_name"}


def run_lockstep(cfgs: list[CifarConfig], arrays: CifarArrays, device: torch.device, parent: tracking.Run,
                 prepare=None) -> list[tuple[str, int]]:
    """Train every config in one process on the very same augmented batches (one data pipeline, one model and
    optimizer each), logging one child run each; returns (run id, exit code) per config. `prepare(cfg, trainer)`
    sees each trainer before training (a sweep's landscape records its path)."""
    shared = [{k: v for k, v in dataclasses.asdict(c).items() if k not in _PER_OPTIMIZER} for c in cfgs]
    if any(other != shared[0] for other in shared):
        raise UsageError("lockstep: the children must differ only in optimizer settings")
    if cfgs[0].resume:
        raise UsageError("lockstep: resume=true is not supported; resume children one by one")
    loaders = build_loaders(cfgs[0], arrays, device)
    trainers = [build_trainer(cfg, loaders, device) for cfg in cfgs]
    for cfg, trainer in zip(cfgs, trainers):
        (prepare or (lambda *_: None))(cfg, trainer)
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

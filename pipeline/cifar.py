"""The `cifar` entry point: one optimizer trains one model on CIFAR-10, tracked as one MLflow run."""
from __future__ import annotations

import dataclasses
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import plots, tracking
from pipeline.config import CifarConfig, as_params, code_version, config_hash
from pipeline.data import CIFAR_CLASSES, CifarArrays, CifarLoader, UnofficialDataWarning, load_cifar10, normalize
from pipeline.errors import EXIT_DIVERGED, EXIT_OK, UsageError
from pipeline.models import build_model
from pipeline.outbox import Outbox
from pipeline.optimizers import build_optimizer, build_scheduler, resolve_hparams
from pipeline.train import FitState, Member, Precision, fit_lockstep

CHECKPOINT = "checkpoints/last.pt"


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

    def member(self) -> Member:
        """The model as train.py steps it: compiled when asked for, same parameters either way."""
        return Member(self.forward or self.model, self.optimizer, self.scheduler)


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
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), fast=device.type == "cuda", lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train, val = loaders
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs * len(train))
    forward = torch.compile(model) if cfg.compile else None
    return Trainer(model, optimizer, scheduler, train, val, precision, forward)


def save_checkpoint(trainer: Trainer, state: FitState, folder: Path) -> Path:
    """Write what resuming needs (weights, optimizer, schedule, random streams, progress) to folder/last.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "last.pt"
    torch.save({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else None,
                "loader": trainer.train_batches.state_dict(), "torch_rng": torch.get_rng_state(),
                "state": dataclasses.asdict(state)}, path)
    return path


def restore_checkpoint(trainer: Trainer, path: Path) -> FitState:
    """Load a checkpoint into `trainer`; returns the progress to continue from."""
    saved = torch.load(path, map_location=trainer.precision.device, weights_only=False)
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(saved["scheduler"])
    trainer.train_batches.load_state_dict({k: v.cpu() for k, v in saved["loader"].items()})
    torch.set_rng_state(saved["torch_rng"].cpu())
    return FitState(**saved["state"])


def per_class_csv(confusion: np.ndarray) -> str:
    """class, correct, total, accuracy for each class of the final evaluation."""
    lines = ["class,correct,total,accuracy"]
    for index, name in enumerate(CIFAR_CLASSES):
        total = int(confusion[index].sum())
        correct = int(confusion[index, index])
        lines.append(f"{name},{correct},{total},{correct / total if total else float('nan'):.4f}")
    return "\n".join(lines) + "\n"


def epoch_line(epoch: int, epochs: int, m: dict[str, float]) -> str:
    """One line per epoch for logs and terminals."""
    return (f"epoch {epoch}/{epochs}: train_loss {m['train_loss']:.4f} train_acc {m['train_acc']:.2%} | "
            f"val_loss {m['val_loss']:.4f} val_acc {m['val_acc']:.2%} | {m['epoch_time']:.1f} s, "
            f"{m['throughput']:.0f} img/s, lr {m['lr']:.3g}")


def _upload_and_remove(run_id: str, checkpoint: Path) -> None:
    """Log an epoch's checkpoint as checkpoints/last.pt, then free its local copy (a ResNet18 + Adam one is
    about 135 MB)."""
    tracking.log_file(run_id, checkpoint, "checkpoints")
    shutil.rmtree(checkpoint.parent, ignore_errors=True)


SEND_EVERY_S = 5.0  # short epochs share one request: each costs the training ~20 ms of CPU on a local server


class RunLog:
    """Everything one cifar run writes to its MLflow run, addressed by run id (so several can be open)."""

    def __init__(self, cfg: CifarConfig, run_id: str, trainer: Trainer, folder: Path) -> None:
        self.cfg, self.run_id, self.trainer, self.folder = cfg, run_id, trainer, folder
        self.confusion: np.ndarray | None = None
        self.target_logged = False
        self.logged_through = 0  # epochs whose metrics the store already holds (a resumed run has some)
        self.last_checkpoint = time.monotonic()
        self.pending: list[tuple[int, int, dict[str, float]]] = []  # (epoch, time in ms, metrics) not sent yet
        self.last_sent: float | None = None  # the first epoch is sent at once, later ones every SEND_EVERY_S
        self.outbox = Outbox()  # per-epoch logging leaves the training thread and survives server outages

    def resuming(self) -> None:
        """Continue a run the store already has: epochs it holds are trained again but not logged twice."""
        self.logged_through = tracking.last_step(self.run_id, "train_loss")
        self.target_logged = tracking.last_step(self.run_id, "time_to_target") > 0

    def begin(self, params: dict[str, str], arrays: CifarArrays) -> None:
        """Params, the resolved config and the data used."""
        tracking.log_params(self.run_id, params)
        tracking.log_dict(self.run_id, {**dataclasses.asdict(self.cfg), "resolved": params}, "config.json")
        for split, x, y in (("train", arrays.train_x, arrays.train_y), ("test", arrays.test_x, arrays.test_y)):
            tracking.log_dataset(self.run_id, f"cifar10-{split}", x, y, arrays.source, f"{arrays.digest()}-{split}",
                                 split)

    def on_epoch(self, epoch: int, metrics: dict[str, float], confusion: torch.Tensor, state: FitState) -> None:
        """The fit() callback: metrics (one call, sent in the background), a console line and the checkpoint."""
        logged = dict(metrics)
        if state.time_to_target is not None and not self.target_logged:
            logged["time_to_target"], self.target_logged = state.time_to_target, True
        if epoch > self.logged_through:
            self.pending.append((epoch, int(time.time() * 1000), logged))
        print(f"{self.cfg.optimizer} {epoch_line(epoch, self.cfg.epochs, metrics)}", flush=True)
        checkpoint_due = time.monotonic() - self.last_checkpoint >= self.cfg.checkpoint_every_s
        if checkpoint_due or self.last_sent is None or time.monotonic() - self.last_sent >= SEND_EVERY_S:
            self._send()  # before a checkpoint, always: a resume skips the epochs the checkpoint holds
        if checkpoint_due:
            self.last_checkpoint = time.monotonic()  # a big model's save takes a while: count from its start
            checkpoint = save_checkpoint(self.trainer, state, self.folder / f"epoch-{epoch}")
            run_id = self.run_id
            self.outbox.submit(f"epoch {epoch} checkpoint", lambda: _upload_and_remove(run_id, checkpoint))
        self.confusion = confusion.numpy()

    def _send(self) -> None:
        """Queue the metrics of the epochs not sent yet, as one request."""
        if not self.pending:
            return
        batch, self.pending, run_id = self.pending, [], self.run_id
        self.outbox.submit(f"epoch {batch[0][0]}-{batch[-1][0]} metrics", lambda: tracking.log_steps(run_id, batch))
        self.last_sent = time.monotonic()

    def close(self) -> bool:
        """Send what is pending and wait for the outbox to deliver everything; True when nothing was lost."""
        self._send()
        return self.outbox.close()

    def finish(self, state: FitState, arrays: CifarArrays) -> int:
        """Outcome tags, final-epoch tables and the model; returns the exit code."""
        cfg, run_id = self.cfg, self.run_id
        if not self.close():
            print(f"warning: some epoch logs of run {run_id} could not be delivered", file=sys.stderr)
        if state.history:  # drawn once here, not every epoch: it was most of the logging cost (docs/performance.md)
            figure = plots.curves_figure({cfg.optimizer: state.history}, f"{cfg.model} + {cfg.optimizer}")
            tracking.log_figure(run_id, figure, "plots/curves.png")
        if state.diverged:
            tracking.set_tags(run_id, {"diverged": "true"})
            print(f"error: {cfg.optimizer} diverged ({state.diverged}); try a smaller lr. Run {run_id} is marked "
                  "FAILED.", file=sys.stderr)
            return EXIT_DIVERGED
        reached = str(state.time_to_target is not None).lower()
        tracking.set_tags(run_id, {"diverged": "false", "target_reached": reached})
        if self.confusion is not None:
            self._log_tables(self.confusion)
        if self.confusion is not None and cfg.log_model:
            model = self.trainer.model.to("cpu", memory_format=torch.contiguous_format).float().eval()
            example = normalize(torch.from_numpy(arrays.test_x[:2]).permute(0, 3, 1, 2)).numpy()
            uri = tracking.log_pytorch_model(run_id, model, example, cfg.model_name if cfg.register else None)
            tracking.set_tags(run_id, {"model_uri": uri})
        print(f"{cfg.optimizer} + {cfg.model}: best val_acc {state.best_val_acc:.2%} after {state.epoch} epochs "
              f"(run {run_id})")
        return EXIT_OK

    def _log_tables(self, confusion: np.ndarray) -> None:
        title = f"{self.cfg.model} + {self.cfg.optimizer}: final epoch"
        tracking.log_figure(self.run_id, plots.confusion_figure(confusion, CIFAR_CLASSES, title),
                            "plots/confusion_matrix.png")
        buffer = io.StringIO()
        np.savetxt(buffer, confusion, fmt="%d", delimiter=",", header=",".join(CIFAR_CLASSES), comments="")
        tracking.log_text(self.run_id, buffer.getvalue(), "confusion_matrix.csv")
        tracking.log_text(self.run_id, per_class_csv(confusion), "per_class_accuracy.csv")


def start_info(cfg: CifarConfig, arrays: CifarArrays, device: torch.device) -> tuple[dict, dict]:
    """Params (as used) and tags for a fresh run."""
    hparams = resolve_hparams(cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params = {**as_params(cfg), **{k: str(v) for k, v in hparams.items()},
              "train_images": str(len(arrays.train_y)), "val_images": str(len(arrays.test_y))}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    autocast = Precision(device, bf16=cfg.bf16).autocast_bf16
    tags = {"task": "cifar", "config_hash": config_hash(cfg), "code_version": code_version(), "device": name,
            "train_precision": "bf16 autocast" if autocast else "fp32",
            "data_official": str(arrays.official).lower(), "data_digest": arrays.digest()}
    return params, tags


def resume_target(cfg: CifarConfig) -> str | None:
    """The run `resume=true` continues: MLFLOW_RUN_ID (mlflow run --run-id), else the newest unfinished one."""
    if not cfg.resume or os.environ.get("MLFLOW_RUN_ID"):
        return None
    found = tracking.find_resumable_run(cfg.experiment, config_hash(cfg))
    if found is None:
        raise UsageError(f"resume: no unfinished run with this config in experiment {cfg.experiment!r}; "
                         "run without resume=true to start one")
    return found


def run_cifar(cfg: CifarConfig) -> int:
    """The `cifar` entry point: one tracked training run; exit code 3 if the loss diverged."""
    device = resolve_device(cfg.device)
    return cifar_run(cfg, load_data(cfg), device)[1]


def cifar_run(cfg: CifarConfig, arrays: CifarArrays, device: torch.device,
              parent: tracking.RunHandle | None = None) -> tuple[str, int]:
    """Train, log every epoch, log the model; returns (run id, exit code)."""
    run_id = resume_target(cfg) if parent is None else None
    params, tags = start_info(cfg, arrays, device)
    with tracking.tracked_run(cfg.experiment, f"{cfg.optimizer}-{cfg.model}", tags, run_id=run_id,
                              system_metrics=cfg.system_metrics, parent=parent) as run, \
            tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
        trainer = build_trainer(cfg, build_loaders(cfg, arrays, device), device)
        log = RunLog(cfg, run.run_id, trainer, Path(scratch))
        log.begin(params, arrays)
        state = None
        if cfg.resume:
            log.resuming()
            if (saved := tracking.download(run.run_id, CHECKPOINT, scratch)) is not None:
                state = restore_checkpoint(trainer, saved)
                print(f"resuming run {run.run_id} after epoch {state.epoch}")
            else:
                print(f"resuming run {run.run_id} from its start: it crashed before its first checkpoint")
        (state,) = fit_lockstep([trainer.member()], trainer.train_batches,
                                trainer.val_batches, cfg.epochs, trainer.precision, cfg.target_acc, [log.on_epoch],
                                [state] if state else None)
        code = log.finish(state, arrays)
        if code != EXIT_OK:
            run.fail()
    return run.run_id, code


# What lockstep children may differ in: everything else decides the shared data pipeline and model.
_PER_OPTIMIZER = {"optimizer", "lr", "momentum", "weight_decay", "scheduler", "register", "model_name"}


def cifar_lockstep(cfgs: list[CifarConfig], arrays: CifarArrays, device: torch.device,
                   parent: tracking.RunHandle) -> list[tuple[str, int]]:
    """Train every config in one process on the very same augmented batches (one data pipeline, one model and
    optimizer each), logging one child run each; returns (run id, exit code) per config."""
    shared = [{k: v for k, v in dataclasses.asdict(c).items() if k not in _PER_OPTIMIZER} for c in cfgs]
    if any(other != shared[0] for other in shared):
        raise UsageError("lockstep: the children must differ only in optimizer settings")
    if cfgs[0].resume:
        raise UsageError("lockstep: resume=true is not supported; resume children one by one")
    loaders = build_loaders(cfgs[0], arrays, device)
    trainers = [build_trainer(cfg, loaders, device) for cfg in cfgs]
    with tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
        logs = []
        for cfg, trainer in zip(cfgs, trainers):
            params, tags = start_info(cfg, arrays, device)
            run_id = tracking.start_child_run(parent, f"{cfg.optimizer}-{cfg.model}", {**tags, "lockstep": "true"})
            (Path(scratch) / run_id).mkdir()
            logs.append(RunLog(cfg, run_id, trainer, Path(scratch) / run_id))
            logs[-1].begin(params, arrays)
        states = fit_lockstep([t.member() for t in trainers], loaders[0], loaders[1],
                              cfgs[0].epochs, trainers[0].precision, cfgs[0].target_acc,
                              [log.on_epoch for log in logs])
        outcomes = []
        for log, state in zip(logs, states):
            code = log.finish(state, arrays)
            tracking.end_run(log.run_id, failed=code != EXIT_OK)
            outcomes.append((log.run_id, code))
    return outcomes

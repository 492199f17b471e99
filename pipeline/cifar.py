"""The `cifar` entry point: one optimizer trains one model on CIFAR-10, tracked as one MLflow run."""
from __future__ import annotations

import dataclasses
import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import plots, tracking
from pipeline.config import CifarConfig, as_params, code_version, config_hash
from pipeline.data import CIFAR_CLASSES, CifarArrays, CifarLoader, UnofficialDataWarning, load_cifar10, normalize
from pipeline.errors import EXIT_DIVERGED, EXIT_OK, DivergedError, UsageError
from pipeline.models import build_model
from pipeline.optimizers import build_optimizer, build_scheduler, resolve_hparams
from pipeline.train import FitState, Precision, fit

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

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    train_batches: CifarLoader
    val_batches: CifarLoader
    precision: Precision


def build_trainer(cfg: CifarConfig, arrays: CifarArrays, device: torch.device) -> Trainer:
    """Seeded model (the same initial weights for every optimizer), optimizer, schedule and loaders."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(CIFAR_CLASSES), cfg.pretrained).to(device)
    precision = Precision(device, bf16=cfg.bf16, channels_last=cfg.channels_last)
    if precision.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    train = CifarLoader(arrays.train_x, arrays.train_y, cfg.batch_size, train=True, seed=cfg.seed, device=device)
    val = CifarLoader(arrays.test_x, arrays.test_y, cfg.batch_size, train=False, device=device)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs * len(train))
    return Trainer(model, optimizer, scheduler, train, val, precision)


def save_checkpoint(trainer: Trainer, state: FitState, folder: Path) -> Path:
    """Write what resuming needs (weights, optimizer, schedule, random streams, progress) to folder/last.pt."""
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


def make_epoch_logger(cfg: CifarConfig, run_id: str, trainer: Trainer, folder: Path, last: dict):
    """The fit() callback: metrics (one async call), a console line, curves and the checkpoint each epoch."""
    def on_epoch(epoch: int, metrics: dict[str, float], confusion: torch.Tensor, state: FitState) -> None:
        logged = dict(metrics)
        if state.time_to_target is not None and "time_to_target" not in last:
            logged["time_to_target"] = last["time_to_target"] = state.time_to_target
        tracking.log_epoch_metrics(run_id, logged, step=epoch)
        print(epoch_line(epoch, cfg.epochs, metrics), flush=True)
        tracking.log_figure(plots.curves_figure({cfg.optimizer: state.history},
                                                f"{cfg.model} + {cfg.optimizer}"), "plots/curves.png")
        tracking.log_file(save_checkpoint(trainer, state, folder), "checkpoints")
        last["confusion"] = confusion.numpy()
    return on_epoch


def log_final(cfg: CifarConfig, trainer: Trainer, confusion: np.ndarray, arrays: CifarArrays) -> str | None:
    """Confusion matrix, per-class accuracy and (unless log_model=false) the model; returns the model URI."""
    tracking.log_figure(plots.confusion_figure(confusion, CIFAR_CLASSES, f"{cfg.model} + {cfg.optimizer}: "
                                               "final epoch"), "plots/confusion_matrix.png")
    buffer = io.StringIO()
    np.savetxt(buffer, confusion, fmt="%d", delimiter=",", header=",".join(CIFAR_CLASSES), comments="")
    tracking.log_text(buffer.getvalue(), "confusion_matrix.csv")
    tracking.log_text(per_class_csv(confusion), "per_class_accuracy.csv")
    if not cfg.log_model:
        return None
    model = trainer.model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    example = normalize(torch.from_numpy(arrays.test_x[:2]).permute(0, 3, 1, 2)).numpy()
    return tracking.log_pytorch_model(model, example, cfg.model_name if cfg.register else None)


def start_info(cfg: CifarConfig, arrays: CifarArrays, device: torch.device) -> tuple[dict, dict]:
    """Params (as used) and tags for a fresh run."""
    hparams = resolve_hparams(cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params = {**as_params(cfg), **{k: str(v) for k, v in hparams.items()},
              "train_images": str(len(arrays.train_y)), "val_images": str(len(arrays.test_y))}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tags = {"task": "cifar", "config_hash": config_hash(cfg), "code_version": code_version(), "device": name,
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
        trainer = build_trainer(cfg, arrays, device)
        tracking.log_params(run.run_id, params)
        tracking.log_dict({**dataclasses.asdict(cfg), "resolved": params}, "config.json")
        for split, x, y in (("train", arrays.train_x, arrays.train_y), ("test", arrays.test_x, arrays.test_y)):
            tracking.log_dataset(f"cifar10-{split}", x, y, arrays.source, f"{arrays.digest()}-{split}", split)
        state = None
        if cfg.resume and (saved := tracking.download(run.run_id, CHECKPOINT, scratch)) is not None:
            state = restore_checkpoint(trainer, saved)
            print(f"resuming run {run.run_id} after epoch {state.epoch}")
        last: dict = {}
        logger = make_epoch_logger(cfg, run.run_id, trainer, Path(scratch), last)
        try:
            state = fit(trainer.model, trainer.optimizer, trainer.scheduler, trainer.train_batches,
                        trainer.val_batches, cfg.epochs, trainer.precision, cfg.target_acc, logger, state)
        except DivergedError as error:
            tracking.set_tags({"diverged": "true"})
            print(f"error: training diverged ({error}); try a smaller lr. Run {run.run_id} is marked FAILED.",
                  file=sys.stderr)
            run.fail()
            return run.run_id, EXIT_DIVERGED
        tracking.set_tags({"diverged": "false", "target_reached": str(state.time_to_target is not None).lower()})
        if "confusion" in last:
            model_uri = log_final(cfg, trainer, last["confusion"], arrays)
            if model_uri:
                tracking.set_tags({"model_uri": model_uri})
        print(f"{cfg.optimizer} + {cfg.model}: best val_acc {state.best_val_acc:.2%} after {state.epoch} epochs "
              f"(run {run.run_id})")
    return run.run_id, EXIT_OK

"""Training and evaluation loops: train_one_epoch / evaluate / fit(on_epoch=...). Never imports mlflow."""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from pipeline.errors import DivergedError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Precision:
    """How batches meet the model on a device: bf16 autocast and channels_last apply on CUDA only."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False

    def autocast(self):
        """The autocast context for forward passes (a no-op unless bf16 on CUDA)."""
        if self.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images on the device, in the memory format the model was converted to."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def _sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(batches: Batches, total: int, label: str, show: bool | None) -> Iterable:
    """A tqdm bar on a terminal; nothing in logs (the caller prints one line per epoch instead)."""
    show = sys.stderr.isatty() if show is None else show
    return tqdm(batches, total=total, desc=label, leave=False, disable=not show, unit="batch")


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, precision: Precision,
                    total: int = 0, label: str = "train", show_progress: bool | None = None) -> dict[str, float]:
    """One pass over `batches` in train mode; sums stay on the device and are read once at the end."""
    model.train()  # every epoch: evaluate() leaves the model in eval mode
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), device=precision.device)
    correct = torch.zeros((), device=precision.device, dtype=torch.long)
    seen = 0
    _sync(precision.device)
    began = time.perf_counter()
    for images, labels in _progress(batches, total, label, show_progress):
        images, labels = precision.prepare(images), labels.to(precision.device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        (loss / labels.shape[0]).backward()  # mean over the batch, as the notebook's criterion
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.shape[0]
    _sync(precision.device)
    seconds = time.perf_counter() - began
    return {"train_loss": loss_sum.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1),
            "epoch_time": seconds, "throughput": seen / seconds if seconds > 0 else 0.0,
            "lr": optimizer.param_groups[0]["lr"]}


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, precision: Precision, num_classes: int = 10,
             total: int = 0, show_progress: bool | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """Loss and accuracy over `batches` in eval mode, and the confusion matrix [true, predicted] (CPU)."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), device=precision.device)
    confusion = torch.zeros(num_classes * num_classes, device=precision.device, dtype=torch.long)
    _sync(precision.device)
    began = time.perf_counter()
    for images, labels in _progress(batches, total, "eval", show_progress):
        images, labels = precision.prepare(images), labels.to(precision.device, non_blocking=True)
        with precision.autocast():
            logits = model(images).float()
        loss_sum += loss_fn(logits, labels)
        confusion += torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    _sync(precision.device)
    seconds = time.perf_counter() - began
    confusion = confusion.view(num_classes, num_classes).cpu()
    seen = int(confusion.sum())
    return ({"val_loss": loss_sum.item() / max(seen, 1), "val_acc": int(confusion.trace()) / max(seen, 1),
             "eval_time": seconds}, confusion)


@dataclass
class FitState:
    """What a checkpoint must hold to continue training exactly where it stopped."""

    epoch: int = 0  # epochs completed
    train_seconds: float = 0.0  # summed epoch_time, the clock of time_to_target
    best_val_acc: float = 0.0
    time_to_target: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


EpochCallback = Callable[[int, dict[str, float], torch.Tensor, FitState], None]


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, train_batches, val_batches,
        epochs: int, precision: Precision, target_acc: float, on_epoch: EpochCallback,
        state: FitState | None = None, show_progress: bool | None = None) -> FitState:
    """Train until `epochs` are done (continuing from `state`), calling on_epoch after each; raises on NaN."""
    state = state or FitState()
    for epoch in range(state.epoch + 1, epochs + 1):
        metrics = train_one_epoch(model, train_batches, optimizer, scheduler, precision, len(train_batches),
                                  f"epoch {epoch}/{epochs}", show_progress)
        if not torch.isfinite(torch.tensor(metrics["train_loss"])):
            raise DivergedError(f"train_loss is {metrics['train_loss']} in epoch {epoch}")
        val_metrics, confusion = evaluate(model, val_batches, precision, total=len(val_batches),
                                          show_progress=show_progress)
        metrics.update(val_metrics)
        state.epoch, state.train_seconds = epoch, state.train_seconds + metrics["epoch_time"]
        state.best_val_acc = max(state.best_val_acc, metrics["val_acc"])
        if state.time_to_target is None and metrics["val_acc"] >= target_acc:
            state.time_to_target = state.train_seconds
        metrics["best_val_acc"] = state.best_val_acc
        state.history.append(metrics)
        on_epoch(epoch, metrics, confusion, state)
    return state

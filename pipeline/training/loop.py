"""The training loop: fit(members, ...) trains one model or several in lockstep on the same batches, with
train_epoch and evaluate under it. Never imports mlflow: epochs are reported to callbacks."""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from pipeline.optim.registry import keeps_two_sequences, set_mode
from pipeline.training.distributed import SINGLE, World, sum_over_ranks
from pipeline.training.objective import CLASSIFIER, Objective, Target

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: CUDA GPUs, and CPUs with AVX-512 BF16 or AMX (through oneDNN).
    Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


@dataclass(frozen=True)
class Precision:
    """How batches meet the model on a device: bf16 autocast where the device runs bf16 natively (training
    steps only), channels_last on CUDA only."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False

    @property
    def autocast_bf16(self) -> bool:
        """Whether training steps run under bf16 autocast here."""
        return self.bf16 and native_bf16(self.device)

    def autocast(self):
        """The autocast context for training forward passes (a no-op unless bf16 runs natively here)."""
        if self.autocast_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs on the device; image batches in the memory format the model was converted to."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and self.device.type == "cuda" and images.dim() == 4:
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


@dataclass
class Member:
    """One model being trained: with its optimizer and schedule; several train in lockstep on the same batches."""

    model: nn.Module  # what training steps call: the model, or its DistributedDataParallel / compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    plain: nn.Module | None = None  # the model itself, for evaluation (no collectives), when `model` wraps it
    record: Callable[[], None] | None = None  # called after every optimizer step (a landscape.Recorder)

    @property
    def evaluated(self) -> nn.Module:
        """The module evaluation runs."""
        return self.plain if self.plain is not None else self.model


def _step(member: Member, images: torch.Tensor, labels: torch.Tensor, precision: Precision,
          objective: Objective, denominator: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on one batch; returns the summed loss and the correct count, left on the device."""
    with precision.autocast():
        logits = member.model(images)
        loss = objective.loss_sum(logits, labels)
    member.optimizer.zero_grad(set_to_none=True)
    (loss / denominator).backward()  # mean over the (global) batch, as the notebook's criterion
    member.optimizer.step()
    if member.scheduler is not None:
        member.scheduler.step()
    if member.record is not None:
        member.record()
    hits = objective.hits(logits, labels) if objective.hits else torch.zeros((), dtype=torch.long)
    return loss.detach(), hits.to(loss.device)


def _totals(world: World, device: torch.device, *values: torch.Tensor | float) -> list[float]:
    """Sums over every rank (one collective; with one process, the values), read back once, as numbers."""
    vector = torch.stack([torch.as_tensor(value, dtype=torch.float64, device=device) for value in values])
    return sum_over_ranks(vector, world).tolist()


def train_epoch(members: list[Member], batches: Batches, precision: Precision, total: int = 0,
                label: str = "train", show_progress: bool | None = None,
                world: World = SINGLE, objective: Objective = CLASSIFIER) -> list[dict[str, float]]:
    """One pass over `batches`, each batch feeding every member in turn; sums stay on the device until the end.

    With several members the epoch's wall time is shared: each gets an equal part as its epoch_time. With
    several processes, `batches` yield each rank's share and the global denominator (distributed.ShardedBatches),
    and the figures are sums over every rank: those of one process training on the whole batches.
    """
    for member in members:
        member.model.train()  # every epoch: evaluate() leaves the model in eval mode
        set_mode(member.optimizer, training=True)  # schedule-free: back to the point where gradients are taken
    sums = [[torch.zeros((), device=precision.device), torch.zeros((), device=precision.device,
                                                                   dtype=torch.long)] for _ in members]
    seen = 0
    _sync(precision.device)
    began = time.perf_counter()
    for images, labels, *share in _progress(batches, total, label, show_progress):
        images, labels = precision.prepare(images), labels.to(precision.device, non_blocking=True)
        for member, (loss_sum, correct) in zip(members, sums):
            loss, hits = _step(member, images, labels, precision, objective,
                               share[0] if share else objective.count(labels))
            loss_sum += loss
            correct += hits
        seen += objective.count(labels)
    _sync(precision.device)
    seconds = (time.perf_counter() - began) / max(len(members), 1)
    results = []
    for member, (loss_sum, correct) in zip(members, sums):
        loss_total, correct_total, seen_total = _totals(world, precision.device, loss_sum, correct, seen)
        accuracy = {"train_acc": correct_total / max(seen_total, 1)} if objective.hits else {}
        results.append({"train_loss": loss_total / max(seen_total, 1), **accuracy,
                        "epoch_time": seconds, "throughput": seen_total / seconds if seconds > 0 else 0.0,
                        **_lr_metrics(member.optimizer.param_groups[0]["lr"])})
    return results


def _lr_metrics(lr: float) -> dict[str, float]:
    """lr, and log10_lr: the UI draws 0.001 as a flat line at "0", its log10 as -3."""
    return {"lr": lr, "log10_lr": math.log10(max(lr, 1e-30))}  # a schedule's last step may reach 0


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, precision: Precision, num_classes: int = 10,
             total: int = 0, show_progress: bool | None = None, world: World = SINGLE,
             objective: Objective = CLASSIFIER) -> tuple[dict[str, float], torch.Tensor]:
    """val_loss (and val_acc where the objective counts hits) over `batches` in eval mode, and the confusion
    matrix [true, predicted] (CPU; empty unless the objective has classes).

    In fp32 even where training uses bf16 autocast: these are the figures of the fp32 model that gets logged,
    the one `predict` and `mlflow.pytorch.load_model` run."""
    model.eval()
    classes = num_classes if objective.classes else 0
    loss_sum, hits = torch.zeros((), device=precision.device), torch.zeros((), device=precision.device)
    confusion = torch.zeros(classes * classes, device=precision.device, dtype=torch.long)
    seen = 0
    _sync(precision.device)
    began = time.perf_counter()
    for images, labels, *_ in _progress(batches, total, "eval", show_progress):
        if labels.shape[0] == 0:  # a rank's share of a last, small batch
            continue
        images, labels = precision.prepare(images), labels.to(precision.device, non_blocking=True)
        outputs = model(images)
        loss_sum += objective.loss_sum(outputs, labels)
        seen += objective.count(labels)
        if objective.hits:
            hits += objective.hits(outputs, labels)
        if classes:
            confusion += torch.bincount(labels * classes + outputs.argmax(1), minlength=classes ** 2)
    sum_over_ranks(confusion, world)  # every rank evaluated its share of each batch
    loss_total, hits_total, seen_total = _totals(world, precision.device, loss_sum, hits, seen)
    _sync(precision.device)
    metrics = {"val_loss": loss_total / max(seen_total, 1), "eval_time": time.perf_counter() - began}
    if objective.hits:
        metrics["val_acc"] = hits_total / max(seen_total, 1)
    return metrics, confusion.view(classes, classes).cpu()


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Batches, precision: Precision) -> None:
    """BatchNorm running statistics measured afresh at the model's current weights: reset, then an exact average
    over `batches` (momentum None) in training mode, with no step taken."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for images, _ in batches:
        model(precision.prepare(images))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def evaluation_weights(member: Member, bn_batches: Batches | None, precision: Precision) -> None:
    """Put the weights that are evaluated (and checkpointed, and logged) in the model. For a schedule-free
    optimizer these are its averaged weights x, whose BatchNorm statistics must be measured again: the running
    ones were gathered at the other sequence y (the schedulefree README's recipe). Others: nothing to do."""
    if not keeps_two_sequences(member.optimizer):
        return
    set_mode(member.optimizer, training=False)
    if bn_batches is not None:
        recompute_batchnorm(member.evaluated, bn_batches, precision)


class StopTraining(Exception):
    """Raised by an epoch callback to end that member's training after this epoch (e.g. a pruned trial)."""


@dataclass
class FitState:
    """What a checkpoint must hold to continue training exactly where it stopped."""

    epoch: int = 0  # epochs completed
    train_seconds: float = 0.0  # summed epoch_time, the clock of time_to_target
    best_val_acc: float = 0.0
    time_to_target: float | None = None
    steps: int = 0  # optimizer steps taken
    steps_to_target: int | None = None
    best_score: float | None = None  # the best value of the target's metric so far
    history: list[dict[str, float]] = field(default_factory=list)
    diverged: str = ""  # why training stopped on a non-finite loss; empty while it has not
    stopped: str = ""  # why a callback ended training early (StopTraining); empty while none has


EpochCallback = Callable[[int, dict[str, float], torch.Tensor, FitState], None]


def _record(state: FitState, epoch: int, metrics: dict[str, float], target: Target, steps: int) -> None:
    """Fold one epoch's metrics into the state (best score, time and steps to target, history)."""
    state.epoch, state.train_seconds = epoch, state.train_seconds + metrics["epoch_time"]
    state.steps += steps
    if target.better(metrics[target.metric], state.best_score):
        state.best_score = metrics[target.metric]
    if state.time_to_target is None and target.reached(metrics):
        state.time_to_target, state.steps_to_target = state.train_seconds, state.steps
    if "val_acc" in metrics:
        state.best_val_acc = max(state.best_val_acc, metrics["val_acc"])
        metrics["best_val_acc"] = state.best_val_acc
    state.history.append(metrics)


def fit(members: list[Member], train_batches: Batches, val_batches: Batches, epochs: int, precision: Precision,
        target: float | Target, callbacks: list[EpochCallback], states: list[FitState] | None = None,
        show_progress: bool | None = None, bn_batches: Batches | None = None, world: World = SINGLE,
        objective: Objective = CLASSIFIER) -> list[FitState]:
    """Train every member (one, or several in lockstep) on the very same batches until `epochs`, continuing
    from `states`; a member whose loss turns non-finite stops (its state says why) while the others go on.
    Each member's callback gets every epoch it finishes, and may raise StopTraining to end that member there.
    `bn_batches`: fixed training images for schedule-free members' BatchNorm statistics (evaluation_weights).
    With several processes (`world`) every rank calls fit on its shares; the figures are the global ones.
    `target`: a Target, or a val_acc to reach (classifiers); `objective`: how batches are scored."""
    states = states or [FitState() for _ in members]
    target = target if isinstance(target, Target) else Target("val_acc", "max", target)
    for epoch in range(min(s.epoch for s in states) + 1, epochs + 1):
        active = [i for i, s in enumerate(states) if not (s.diverged or s.stopped) and s.epoch < epoch]
        if not active:
            break
        results = train_epoch([members[i] for i in active], train_batches, precision, len(train_batches),
                              f"epoch {epoch}/{epochs}", show_progress, world, objective)
        for index, metrics in zip(active, results):
            if not math.isfinite(metrics["train_loss"]):
                states[index].diverged = f"train_loss is {metrics['train_loss']} in epoch {epoch}"
                continue
            evaluation_weights(members[index], bn_batches, precision)
            val_metrics, confusion = evaluate(members[index].evaluated, val_batches, precision,
                                              total=len(val_batches), show_progress=show_progress, world=world,
                                              objective=objective)
            metrics.update(val_metrics)
            _record(states[index], epoch, metrics, target, len(train_batches))
            try:
                callbacks[index](epoch, metrics, confusion, states[index])
            except StopTraining as stop:
                states[index].stopped = str(stop) or f"stopped after epoch {epoch}"
    return states

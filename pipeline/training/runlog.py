"""What one cifar run writes to its run while it trains and when it ends: per-epoch metrics (batched, in the
background), checkpoints, curves, final tables and the model. It talks to a RunLogger (a tracking.Run, or a
MemoryLogger in tests), one per run, so several runs can be open at once (lockstep)."""
from __future__ import annotations

import dataclasses
import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.config.tasks import CifarConfig
from pipeline.core.errors import EXIT_ARTIFACTS, EXIT_DIVERGED, EXIT_OK, one_line
from pipeline.tracking.outbox import Outbox
from pipeline.tracking.server import is_permanent, is_store_error
from pipeline.training.checkpoint import save_checkpoint
from pipeline.training.distributed import plain_batchnorm
from pipeline.training.hooks import RunLogger
from pipeline.training.loop import FitState
from pipeline.viz import figures
from pipeline.workloads.cifar.data import CIFAR_CLASSES, CIFAR_MEAN, CIFAR_STD, CifarArrays
from pipeline.workloads.cifar.models import ImageClassifier

SEND_EVERY_S = 5.0  # short epochs share one request: each costs the training ~20 ms of CPU on a local server


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


def model_example(arrays: CifarArrays) -> np.ndarray:
    """Two raw test images, uint8 (2, 32, 32, 3): the logged model's input example. Two, never one, because
    torch.export fixes a batch dimension of size 1 and the model would then refuse any other batch size."""
    images = arrays.test_x[:2] if len(arrays.test_x) >= 2 else np.repeat(arrays.test_x[:1], 2, axis=0)
    return np.ascontiguousarray(images, dtype=np.uint8)


MODEL_METADATA = {"classes": list(CIFAR_CLASSES), "input": "uint8 images (N, 32, 32, 3), RGB, 0-255",
                  "output": "class probabilities (N, 10), in the order of `classes`"}


def _upload_and_remove(run: RunLogger, checkpoint: Path) -> None:
    """Log an epoch's checkpoint as checkpoints/last.pt, then free its local copy (a ResNet18 + Adam one is
    about 135 MB)."""
    try:
        run.log_file(checkpoint, "checkpoints")
    finally:
        shutil.rmtree(checkpoint.parent, ignore_errors=True)


class RunLog:
    """Everything one cifar run writes to its MLflow run. Metrics and uploads go through separate background
    senders, so a checkpoint the store cannot take never holds back the metrics."""

    def __init__(self, cfg: CifarConfig, run: RunLogger, trainer: Any, folder: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.run, self.trainer, self.folder, self.clock = cfg, run, trainer, folder, clock
        self.confusion: np.ndarray | None = None
        self.target_logged = False
        self.logged_through = 0  # epochs whose metrics the store already holds (a resumed run has some)
        self.last_checkpoint = clock()
        self.pending: list[tuple[int, int, dict[str, float]]] = []  # (epoch, time in ms, metrics) not sent yet
        self.last_sent: float | None = None  # the first epoch is sent at once, later ones every SEND_EVERY_S
        self.metrics = Outbox("optlab-metrics", is_permanent)
        self.uploads = Outbox("optlab-uploads", is_permanent)
        self.checkpoint_error = ""  # set when the store refused a checkpoint: later ones are not attempted
        self.artifacts_failed = False  # the final artifacts (curves, tables, model) could not be stored

    def resuming(self, logged_through: int, target_logged: bool) -> None:
        """Continue a run the store already has: epochs it holds are trained again but not logged twice."""
        self.logged_through, self.target_logged = logged_through, target_logged

    def restored(self, state: FitState) -> None:
        """A checkpoint was restored: log the epochs it holds that the store lacks (sent before a crash)."""
        for epoch, metrics in enumerate(state.history, start=1):
            if epoch > self.logged_through:
                self.pending.append((epoch, int(time.time() * 1000), dict(metrics)))
        self.logged_through = max(self.logged_through, state.epoch)
        self._send()

    def begin(self, params: dict[str, str], arrays: CifarArrays) -> None:
        """Params, the resolved config and the data used."""
        self.run.log_params(params)
        self.run.log_dict({**dataclasses.asdict(self.cfg), "resolved": params}, "config.json")
        for split, x, y in (("train", arrays.train_x, arrays.train_y), ("test", arrays.test_x, arrays.test_y)):
            self.run.log_dataset(f"cifar10-{split}", x, y, arrays.source, f"{arrays.digest}-{split}", split)

    def on_epoch(self, epoch: int, metrics: dict[str, float], confusion: torch.Tensor, state: FitState) -> None:
        """The fit() callback: metrics (sent in the background), a console line and the checkpoint."""
        logged = dict(metrics)
        if state.time_to_target is not None and not self.target_logged:
            logged["time_to_target"], self.target_logged = state.time_to_target, True
        if epoch > self.logged_through:
            self.pending.append((epoch, int(time.time() * 1000), logged))
        print(f"{self.cfg.optimizer} {epoch_line(epoch, self.cfg.epochs, metrics)}", flush=True)
        checkpoint_due = self.clock() - self.last_checkpoint >= self.cfg.checkpoint_every_s
        if checkpoint_due or self.last_sent is None or self.clock() - self.last_sent >= SEND_EVERY_S:
            self._send()
        if checkpoint_due and not self.checkpoint_error:
            self.last_checkpoint = self.clock()  # a big model's save takes a while: count from its start
            self._checkpoint(epoch, state)
        self.confusion = confusion.numpy()

    def _checkpoint(self, epoch: int, state: FitState) -> None:
        """Save this epoch's checkpoint and queue its upload."""
        trainer = self.trainer
        path = save_checkpoint(self.folder / f"epoch-{epoch}", trainer.model, trainer.optimizer, trainer.scheduler,
                               trainer.train_batches, state)
        self.uploads.submit(f"the epoch {epoch} checkpoint", lambda: _upload_and_remove(self.run, path),
                            on_give_up=self._checkpoint_refused)

    def _checkpoint_refused(self, error: BaseException) -> None:
        """The store refused a checkpoint for good: say so on the run now, and stop saving them."""
        self.checkpoint_error = one_line(error)
        self.run.set_tags({"checkpoint_failed": "true", "checkpoint_error": self.checkpoint_error})

    def _send(self) -> None:
        """Queue the metrics of the epochs not sent yet, as one request."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.metrics.submit(f"epoch {batch[0][0]}-{batch[-1][0]} metrics", lambda: self.run.log_steps(batch))
        self.last_sent = self.clock()

    def close(self) -> bool:
        """Send what is pending and wait for both senders; True when every metric was delivered."""
        self._send()
        self.uploads.close()
        return self.metrics.close()

    def finish(self, state: FitState, arrays: CifarArrays) -> int:
        """Outcome tags, curves, final-epoch tables and the model; returns the exit code."""
        cfg, run_id = self.cfg, self.run.run_id
        if not self.close():
            print(f"warning: some epoch metrics of run {run_id} could not be delivered", file=sys.stderr)
        if state.diverged:
            self._store_artifacts(state, arrays, final=False)
            self.run.set_tags({"diverged": "true"})
            print(f"error: {cfg.optimizer} diverged ({state.diverged}); try a smaller lr. Run {run_id} is marked "
                  "FAILED.", file=sys.stderr)
            return EXIT_DIVERGED
        reached = str(state.time_to_target is not None).lower()
        self.run.set_tags({"diverged": "false", "target_reached": reached,
                           **({"stopped_early": "true", "stop_reason": state.stopped} if state.stopped else {})})
        problem = self._store_artifacts(state, arrays, final=not state.stopped)
        if problem:
            self.run.note_error(problem, {"artifacts_failed": "true"} if self.artifacts_failed else {})
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_ARTIFACTS
        ended = f" ({state.stopped})" if state.stopped else ""
        print(f"{cfg.optimizer} + {cfg.model}: best val_acc {state.best_val_acc:.2%} after {state.epoch} epochs"
              f"{ended} (run {run_id})")
        return EXIT_OK

    def _store_artifacts(self, state: FitState, arrays: CifarArrays, final: bool) -> str:
        """Curves (and for a finished run the tables and the model); returns what could not be stored, if any."""
        try:
            if state.history:  # drawn once here, not every epoch: it was most of the logging cost
                figure = figures.curves_figure({self.cfg.optimizer: state.history},
                                             f"{self.cfg.model} + {self.cfg.optimizer}")
                self.run.log_figure(figure, "plots/curves.png")
            if final and self.confusion is not None:
                self._log_tables(self.confusion)
                if self.cfg.log_model:
                    self._log_model(arrays)
        except Exception as error:  # noqa: BLE001 - a store that refuses or is down: report it, not crash
            if not is_store_error(error):
                raise
            self.artifacts_failed = True
            return (f"run {self.run.run_id} trained, and its metrics are stored, but its artifacts could not be "
                    f"({one_line(error)})")
        if self.checkpoint_error:
            return (f"run {self.run.run_id} trained, but the store refused its checkpoints ({self.checkpoint_error}); "
                    "it cannot be resumed")
        return ""

    def _log_model(self, arrays: CifarArrays) -> None:
        cfg = self.cfg
        net = plain_batchnorm(self.trainer.model).to("cpu", memory_format=torch.contiguous_format).float().eval()
        model = ImageClassifier(net, CIFAR_MEAN, CIFAR_STD).eval()
        uri = self.run.log_model(model, model_example(arrays), cfg.model_name if cfg.register else None,
                                 MODEL_METADATA)
        self.run.set_tags({"model_uri": uri})

    def _log_tables(self, confusion: np.ndarray) -> None:
        title = f"{self.cfg.model} + {self.cfg.optimizer}: final epoch"
        self.run.log_figure(figures.confusion_figure(confusion, CIFAR_CLASSES, title), "plots/confusion_matrix.png")
        buffer = io.StringIO()
        np.savetxt(buffer, confusion, fmt="%d", delimiter=",", header=",".join(CIFAR_CLASSES), comments="")
        self.run.log_text(buffer.getvalue(), "confusion_matrix.csv")
        self.run.log_text(per_class_csv(confusion), "per_class_accuracy.csv")

"""A cifar run's logging when the store misbehaves: a checkpoint the artifact store refuses for good never holds
back the metrics, is retried a bounded number of times, reported once, tagged, and the exit code says so."""
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_SUBSET, cli, metric_history, new_experiment

from pipeline.cifar import build_loaders, build_trainer
from pipeline.config.tasks import build_config
from pipeline.tracking import outbox
from pipeline.training.hooks import MemoryLogger
from pipeline.training.loop import FitState
from pipeline.training.runlog import RunLog
from pipeline.workloads.cifar.data import load_cifar10

pytestmark = pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")


def test_a_refused_checkpoint_never_holds_back_the_metrics(tracking, tmp_path, monkeypatch):
    monkeypatch.setattr(outbox, "RETRY_FIRST_S", 0.01)  # the 3 tries at the checkpoint: 30 ms, not 1.5 s of pauses
    experiment = new_experiment()
    experiment_id = tracking.create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))
    run_id = tracking.create_run(experiment_id).info.run_id  # handed over (MLFLOW_RUN_ID) as `mlflow run` hands one
    artifacts = tmp_path / "artifacts" / run_id / "artifacts"
    artifacts.mkdir(parents=True)
    (artifacts / "checkpoints").write_text("a file where the checkpoints folder should be")  # root ignores chmod
    began = time.monotonic()
    done = cli("cifar", "--model", "tiny_cnn", "--data_dir", str(SHARED_SUBSET), "--epochs", "4", "--train_limit",
               "128", "--val_limit", "64", "--checkpoint_every_s", "0", "--system_metrics", "false", "--experiment",
               experiment, env={"MLFLOW_RUN_ID": run_id})
    seconds = time.monotonic() - began
    assert done.returncode == 4, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    gave_up = [line for line in done.stderr.splitlines() if line.startswith("warning: gave up")]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(gave_up) == 1 and "checkpoint" in gave_up[0] and "NotADirectoryError" in gave_up[0]
    assert len(errors) == 1 and "refused its checkpoints" in errors[0]
    run = tracking.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["checkpoint_failed"] == "true" and "NotADirectoryError" in run.data.tags["checkpoint_error"]
    assert run.data.tags["error"] == errors[0][len("error: "):]
    assert run.data.tags["mlflow.note.content"].startswith("**Failed:**")
    for key in ("train_loss", "val_acc", "best_val_acc"):
        steps, values = metric_history(tracking, run_id, key)
        assert steps == [1, 2, 3, 4] and np.isfinite(values).all(), key
    assert (artifacts / "plots" / "curves.png").is_file() and "model_uri" in run.data.tags  # the rest was stored
    assert seconds < 120  # a bound on a hang (it was 10 minutes), not a speed test
    assert not any(Path(tmp).name.startswith("optlab-") for tmp in os.listdir(tmp_path))


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _epoch(log: RunLog, clock: FakeClock, at: float, epoch: int, state: FitState) -> None:
    clock.now = at
    metrics = {"train_loss": 2.0 / epoch, "train_acc": 0.1 * epoch, "val_loss": 2.1 / epoch, "val_acc": 0.1 * epoch,
               "epoch_time": 1.0, "throughput": 100.0, "lr": 0.01, "best_val_acc": 0.1 * epoch}
    state.epoch = epoch
    log.on_epoch(epoch, metrics, torch.zeros(10, 10, dtype=torch.long), state)


def test_epoch_metrics_share_one_request_per_5_seconds_with_a_fake_clock(tmp_path):
    cfg = build_config("cifar", {"checkpoint_every_s": "1000", "epochs": "6"})
    clock, logger, state = FakeClock(), MemoryLogger(), FitState()
    log = RunLog(cfg, logger, trainer=None, folder=tmp_path, clock=clock)
    for epoch, at in enumerate((0.0, 1.0, 2.0, 4.9), start=1):  # the first at once, then nothing before 5 s
        _epoch(log, clock, at, epoch, state)
    assert log.metrics.flush(timeout_s=10)
    assert logger.calls.count("log_steps") == 1 and [s for s, _ in logger.metrics["train_loss"]] == [1]
    _epoch(log, clock, 5.0, 5, state)  # 5 s after the first request: epochs 2-5 go in one
    state.time_to_target = 6.5
    _epoch(log, clock, 6.0, 6, state)
    assert log.close()
    assert logger.calls.count("log_steps") == 3  # epoch 1; epochs 2-5; epoch 6 when the log closed
    assert [step for step, _ in logger.metrics["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert logger.metrics["time_to_target"] == [(6, 6.5)]  # once, at the epoch that reached the target


def test_a_due_checkpoint_sends_the_pending_metrics_first(tmp_path, monkeypatch):
    cfg = build_config("cifar", {"checkpoint_every_s": "3", "model": "tiny_cnn", "data_dir": str(SHARED_SUBSET),
                                 "train_limit": "64", "val_limit": "32"})
    arrays = load_cifar10(SHARED_SUBSET, download=False, train_limit=64, val_limit=32)
    trainer = build_trainer(cfg, build_loaders(cfg, arrays, torch.device("cpu")), torch.device("cpu"))
    clock, logger, state = FakeClock(), MemoryLogger(), FitState()
    log = RunLog(cfg, logger, trainer, tmp_path, clock=clock)
    # The order in which the two senders are handed their calls: each delivers on its own thread, so which of
    # them delivers first is up to the scheduler.
    queued = []
    for sender in (log.metrics, log.uploads):
        def spy(what, call, on_give_up=None, submit=sender.submit):
            queued.append(what)
            submit(what, call, on_give_up)
        monkeypatch.setattr(sender, "submit", spy)
    _epoch(log, clock, 0.0, 1, state)
    _epoch(log, clock, 1.0, 2, state)  # pending: neither 5 s since the last request nor a checkpoint due
    _epoch(log, clock, 3.0, 3, state)  # a checkpoint is due: epochs 2-3 are sent before it is saved
    assert queued == ["epoch 1-1 metrics", "epoch 2-3 metrics", "the epoch 3 checkpoint"]
    assert log.close()
    assert logger.calls.count("log_steps") == 2 and logger.calls.count("log_file") == 1
    saved = torch.load(io.BytesIO(logger.artifacts["checkpoints/last.pt"]), weights_only=True)
    assert saved["state"]["epoch"] == 3

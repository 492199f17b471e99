"""Row 'mlflow': training time with our per-epoch logging to a live local server vs the same training unlogged."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.data import load_arrays
from bench.machine import log
from bench.server import mlflow_server
from bench.table import Row, met, times
from pipeline import tracking
from pipeline.cifar import RunLog, build_loaders, build_trainer
from pipeline.config import CifarConfig, build_config
from pipeline.data import CifarArrays
from pipeline.train import fit

TARGET = 0.01  # logging may add at most 1% to the training time
EXPERIMENT = "optlab-bench"


def tiny_config(device: torch.device, epochs: int) -> CifarConfig:
    """A cifar config from params.yaml with the tiny model; system metrics on, as our runs' default."""
    return build_config("cifar", {"model": "tiny_cnn", "epochs": str(epochs), "device": device.type,
                                  "log_model": "false", "experiment": EXPERIMENT})


def limit(arrays: CifarArrays, train: int, val: int) -> CifarArrays:
    """The first `train` / `val` images (the subset's sizes when larger)."""
    return CifarArrays(arrays.train_x[:train], arrays.train_y[:train], arrays.test_x[:val], arrays.test_y[:val],
                       arrays.source, arrays.official)


def timed_fit(cfg: CifarConfig, arrays: CifarArrays, device: torch.device, logged: bool, scratch: Path) -> float:
    """Seconds of fit() (train + eval every epoch); logged: inside a run, with cifar's per-epoch RunLog.

    The logged time also covers delivering everything queued (RunLog's outbox, closed before the run can
    end); starting the run is left out (a once-per-run cost, reported separately).
    """
    trainer = build_trainer(cfg, build_loaders(cfg, arrays, device), device)
    args = (trainer.model, trainer.optimizer, trainer.scheduler, trainer.train_batches, trainer.val_batches,
            cfg.epochs, trainer.precision, cfg.target_acc)
    if not logged:
        began = time.perf_counter()
        fit(*args, lambda *_: None, show_progress=False)
        return time.perf_counter() - began
    with contextlib.redirect_stdout(io.StringIO()):  # cifar's epoch lines and MLflow's "View run" links
        with tracking.tracked_run(cfg.experiment, "bench-overhead", {"task": "bench"},
                                  system_metrics=cfg.system_metrics) as run:
            run_log = RunLog(cfg, run.run_id, trainer, scratch)
            began = time.perf_counter()
            fit(*args, run_log.on_epoch, show_progress=False)
            delivered = run_log.outbox.close()
            seconds = time.perf_counter() - began
    if not delivered:
        raise RuntimeError("the benchmark run's epoch logs were not all delivered to the server")
    return seconds


def measure_pairs(cfg: CifarConfig, arrays: CifarArrays, device: torch.device, pairs: int,
                  scratch: Path) -> tuple[list[float], list[float]]:
    """Alternate unlogged and logged fits (order flipped every pair, so drift cancels); returns both lists."""
    off, on = [], []
    for pair in range(pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for logged in order:
            (on if logged else off).append(timed_fit(cfg, arrays, device, logged, scratch))
        log(f"mlflow: pair {pair + 1}/{pairs}: off {off[-1]:.2f} s, on {on[-1]:.2f} s")
    return off, on


def run_start_seconds(cfg: CifarConfig) -> float:
    """Seconds to start and end an empty run on the server: paid once per run, not per epoch."""
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        with tracking.tracked_run(cfg.experiment, "bench-empty", {"task": "bench"},
                                  system_metrics=cfg.system_metrics):
            pass
    return time.perf_counter() - began


def overhead_rows(device: torch.device, quick: bool) -> list[Row]:
    """Median overhead of logging over `pairs` alternating fits of tiny_cnn, against a live local server."""
    epochs, pairs = (2, 1) if quick else (3, 3)
    arrays = limit(load_arrays(), 1024 if quick else 4660, 256 if quick else 932)
    cfg = tiny_config(device, epochs)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines on system metrics would bury progress
    with tempfile.TemporaryDirectory(prefix="optlab-bench-") as folder:
        scratch = Path(folder) / "scratch"
        scratch.mkdir()
        log("mlflow: starting a local mlflow server (bounded wait)")
        try:
            with mlflow_server(Path(folder)) as url:
                os.environ["MLFLOW_TRACKING_URI"] = url  # read by pipeline.tracking when a run starts
                warm = tiny_config(device, 1)  # first figure, first HTTP connection, first run: untimed
                timed_fit(warm, arrays, device, True, scratch)
                timed_fit(warm, arrays, device, False, scratch)
                start_s = run_start_seconds(cfg)
                off, on = measure_pairs(cfg, arrays, device, pairs, scratch)
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous
    return [_row(off, on, start_s, epochs, len(arrays.train_y))]


def _row(off: list[float], on: list[float], start_s: float, epochs: int, images: int) -> Row:
    """The table row: median logged and unlogged times, the median of the per-pair ratios, and notes."""
    ratio = statistics.median(b / a for a, b in zip(off, on))
    per_epoch_ms = 1000 * (statistics.median(on) - statistics.median(off)) / epochs
    notes = (f"tiny_cnn, {images} train images, batch 32, {epochs} epochs (train + eval), local `mlflow server` "
             f"(SQLite, proxied artifacts); per epoch, as pipeline.cifar.RunLog does it: metrics and "
             f"checkpoint, sent by its background outbox; median of {len(on)} alternating pairs",
             f"overhead {100 * (ratio - 1):+.1f}% = {per_epoch_ms:.0f} ms per epoch against "
             f"{1000 * statistics.median(off) / epochs:.0f} ms of training per epoch; starting and ending a run: "
             f"{1000 * start_s:.0f} ms once (not counted); +1% holds once an epoch lasts over "
             f"{per_epoch_ms / 10:.0f} s")
    return Row("mlflow logging overhead", f"{statistics.median(on):.2f} s logged",
               f"{statistics.median(off):.2f} s unlogged", times(ratio), f"<= {1 + TARGET:.2f}x (+{TARGET:.0%})",
               met(ratio - 1 <= TARGET), notes)

"""Row 'mlflow': training time with our per-epoch logging to a live local server vs the same training unlogged."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data import load_arrays
from bench.machine import log
from bench.server import mlflow_server
from bench.table import Row, met, times
from pipeline import tracking
from pipeline.cifar import build_loaders, build_trainer
from pipeline.config.tasks import CifarConfig, build_config
from pipeline.training.loop import fit
from pipeline.training.runlog import RunLog
from pipeline.workloads.cifar.data import CifarArrays

TARGET = 0.01  # logging may add at most 1% to the training time
EXPERIMENT = "optlab-bench"


def bench_config(device: torch.device, epochs: int, model: str = "tiny_cnn") -> CifarConfig:
    """A cifar config from params.yaml (system metrics on, checkpoints every 60 s, as our runs' defaults)."""
    return build_config("cifar", {"model": model, "epochs": str(epochs), "device": device.type,
                                  "log_model": "false", "experiment": EXPERIMENT})


def limit(arrays: CifarArrays, train: int, val: int) -> CifarArrays:
    """The first `train` / `val` images (the subset's sizes when larger)."""
    return CifarArrays(arrays.train_x[:train], arrays.train_y[:train], arrays.test_x[:val], arrays.test_y[:val],
                       arrays.source, arrays.official)


OFF, IN_RUN, ON = "unlogged", "in a run", "logged"


def timed_fit(cfg: CifarConfig, arrays: CifarArrays, device: torch.device, mode: str, scratch: Path) -> float:
    """Seconds of fit() (train + eval every epoch). OFF: no run; IN_RUN: inside a run (with its system-metrics
    sampler) but nothing logged per epoch, a control; ON: inside a run with cifar's per-epoch RunLog.

    The logged time also covers delivering everything queued (RunLog's outbox, closed before the run can
    end); starting the run is left out (a once-per-run cost, reported separately).
    """
    trainer = build_trainer(cfg, build_loaders(cfg, arrays, device), device)
    args = ([trainer.member()], trainer.train_batches, trainer.val_batches, cfg.epochs, trainer.precision,
            cfg.target_acc)
    if mode == OFF:
        began = time.perf_counter()
        fit(*args, [lambda *_: None], show_progress=False)
        return time.perf_counter() - began
    with contextlib.redirect_stdout(io.StringIO()):  # cifar's epoch lines and MLflow's "View run" links
        with tracking.open_run(cfg.experiment, "bench-overhead", {"task": "bench"},
                               system_metrics=cfg.system_metrics) as run:
            run_log = RunLog(cfg, run, trainer, scratch) if mode == ON else None
            began = time.perf_counter()
            fit(*args, [run_log.on_epoch if run_log else lambda *_: None], show_progress=False)
            delivered = run_log.close() if run_log else True
            seconds = time.perf_counter() - began
    if not delivered:
        raise RuntimeError("the benchmark run's epoch logs were not all delivered to the server")
    return seconds


def measure_rounds(cfg: CifarConfig, arrays: CifarArrays, device: torch.device, rounds: int, modes: tuple[str, ...],
                   scratch: Path) -> dict[str, list[float]]:
    """Rounds of one fit per mode, the order reversed every other round so that drift cancels; seconds by mode."""
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for index in range(rounds):
        for mode in modes if index % 2 == 0 else modes[::-1]:
            seconds[mode].append(timed_fit(cfg, arrays, device, mode, scratch))
        log(f"mlflow: round {index + 1}/{rounds}: " + ", ".join(f"{m} {s[-1]:.2f} s" for m, s in seconds.items()))
    return seconds


def run_start_seconds(cfg: CifarConfig) -> float:
    """Seconds to start and end an empty run on the server: paid once per run, not per epoch."""
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        with tracking.open_run(cfg.experiment, "bench-empty", {"task": "bench"},
                               system_metrics=cfg.system_metrics):
            pass
    return time.perf_counter() - began


@dataclass(frozen=True)
class Case:
    """One overhead row: a model, how many images and epochs a fit trains, how many rounds are timed."""

    model: str
    train: int
    val: int
    epochs: int
    rounds: int
    target: bool  # judged against TARGET (and timed with the IN_RUN control too); otherwise reported only


def cases(quick: bool) -> tuple[Case, ...]:
    """The judged case: tiny_cnn, epochs of about 1 s, where logging's fixed cost per epoch is the largest share
    of training (if it is within 1% there, it is within 1% of any longer epoch); and a typical run, reported:
    our default model, resnet18, on 1,024 images (epochs of about 12 s on 2 CPU cores)."""
    if quick:
        return (Case("tiny_cnn", 1024, 256, 2, 1, target=True),)
    return (Case("tiny_cnn", 4660, 932, 3, 8, target=True), Case("resnet18", 1024, 256, 2, 3, target=False))


def overhead_rows(device: torch.device, quick: bool) -> list[Row]:
    """Median overhead of logging over alternating fits, against one live local server, for each case."""
    data = load_arrays()
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines on system metrics would bury progress
    rows = []
    with tempfile.TemporaryDirectory(prefix="optlab-bench-") as folder:
        scratch = Path(folder) / "scratch"
        scratch.mkdir()
        log("mlflow: starting a local mlflow server (bounded wait)")
        try:
            with mlflow_server(Path(folder)) as url:
                os.environ["MLFLOW_TRACKING_URI"] = url  # read by pipeline.tracking when a run starts
                start_s = None
                for case in cases(quick):
                    arrays = limit(data, case.train, case.val)
                    warm = bench_config(device, 1, case.model)  # first figure, connection, run: untimed
                    modes = (OFF, IN_RUN, ON) if case.target else (OFF, ON)
                    for mode in modes:
                        timed_fit(warm, arrays, device, mode, scratch)
                    start_s = start_s or run_start_seconds(warm)
                    seconds = measure_rounds(bench_config(device, case.epochs, case.model), arrays, device,
                                             case.rounds, modes, scratch)
                    rows.append(_row(case, seconds, start_s, len(arrays.train_y)))
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous
    return rows


def _reach(per_epoch_ms: float) -> str:
    """Where +1% holds at the measured cost per epoch; a logged run faster than the unlogged one is noise."""
    if per_epoch_ms <= 0:
        return "the logged run was the faster: the cost is below this machine's noise"
    return f"at this cost per epoch, +1% holds for epochs over {per_epoch_ms / 10:.1f} s"


def _control(seconds: dict[str, list[float]]) -> tuple[str, ...]:
    """A note on the IN_RUN control, where it was timed: how much of the overhead the per-epoch logging is."""
    if IN_RUN not in seconds:
        return ()
    base, control, on = (min(seconds[mode]) for mode in (OFF, IN_RUN, ON))
    return (f"control, inside a run but nothing logged per epoch: best {control:.2f} s ({control / base:.3f}x "
            f"unlogged); so the per-epoch logging itself (logged against this control) is {on / control:.3f}x",)


def _row(case: Case, seconds: dict[str, list[float]], start_s: float, images: int) -> Row:
    """The table row: the best logged and unlogged times and their ratio (as the other rows: background load
    only slows a fit down, so the best of each is the least disturbed), the median of per-round ratios in a note."""
    off, on = seconds[OFF], seconds[ON]
    ratio = min(on) / min(off)
    median = statistics.median(b / a for a, b in zip(off, on))
    per_epoch_ms = 1000 * (min(on) - min(off)) / case.epochs
    notes = (f"{case.model}, {images} train images, batch 32, {case.epochs} epochs (train + eval), local `mlflow "
             f"server` (SQLite, proxied artifacts); per epoch, as pipeline.training.runlog.RunLog does it with params.yaml's "
             f"defaults: metrics sent by its background outbox, system metrics every 10 s, a checkpoint once 60 s "
             f"have passed; best of {len(on)} rounds, alternating (median of the rounds' ratios: {median:.3f}x)",
             f"overhead {100 * (ratio - 1):+.1f}% = {per_epoch_ms:.0f} ms per epoch against "
             f"{1000 * min(off) / case.epochs:.0f} ms of training per epoch; starting and ending a "
             f"run: {1000 * start_s:.0f} ms once (not counted); " + _reach(per_epoch_ms)) + _control(seconds)
    target = f"<= {1 + TARGET:.2f}x (+{TARGET:.0%})" if case.target else "report (typical run)"
    return Row(f"mlflow overhead {case.model}", f"{min(on):.2f} s logged", f"{min(off):.2f} s unlogged",
               times(ratio), target, met(ratio - 1 <= TARGET) if case.target else "-", notes)

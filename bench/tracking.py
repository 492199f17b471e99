"""Rows 'tracking': what a tracked sweep costs around its kernels, on a fresh SQLite store as `make demo` uses.

- tracked toy trials per second (a toy tune: Optuna, one MLflow run per trial, the seed reruns with their
  figures, the report) against the untracked batched descent of the same trials;
- the fixed cost of one tracked run through pipeline.tracking (create with tags, params, one metric batch, tags,
  end) against the same calls made bare on MlflowClient (target: within 1.5x);
- the wall time of the demo's toy tune (target: 60 s on 2 CPU cores).
"""
from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from bench.machine import log
from bench.table import Row, met, rate, times
from pipeline.core.env import environment

FIXED_TARGET = 1.5  # ours / bare MLflow, seconds per run
DEMO_TARGET_S = 60.0


@contextlib.contextmanager
def _store() -> Iterator[Path]:
    """A fresh SQLite tracking store (and Optuna storage beside it) for the block."""
    with tempfile.TemporaryDirectory(prefix="optlab-bench-") as folder, \
            environment({"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        yield Path(folder)


def _tune_seconds(params: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, trials run) of one toy tune on a fresh store, its printing kept back."""
    from pipeline.config.tune import build_tune  # noqa: PLC0415
    from pipeline.tune import tune  # noqa: PLC0415

    with _store():
        cfg = build_tune(params)
        began = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            tune(cfg)
        return time.perf_counter() - began, len(cfg.children) * (cfg.trials + cfg.seeds)


def _descent_seconds(params: dict[str, str]) -> float:
    """The same tune's trials and seed reruns as bare batched descents: one per study and phase."""
    from pipeline.config.tune import build_tune  # noqa: PLC0415
    from pipeline.sweeps.tune import search  # noqa: PLC0415
    from pipeline.workloads.toy import scores  # noqa: PLC0415
    from pipeline.workloads.toy.functions import get_function  # noqa: PLC0415

    cfg = build_tune(params)
    began = time.perf_counter()
    for plan in cfg.children:
        points = search.grid(plan.dims, {"lr": (cfg.lr_min, cfg.lr_max)}, cfg.trials)["lr"]
        settings = [type(plan.base.optimizer_settings)(plan.optimizer, lr=lr) for lr in points]
        settings += [plan.base.optimizer_settings] * cfg.seeds
        scores.score_curves(get_function(plan.workload), settings, cfg.starts, list(range(len(settings))),
                            plan.base.steps, plan.base.tolerance)
    return time.perf_counter() - began


def _fixed_costs(runs: int) -> tuple[float, float]:
    """Median seconds per run: through pipeline.tracking, and the same calls on MlflowClient."""
    import mlflow  # noqa: PLC0415
    from mlflow.entities import Metric, Param, RunTag  # noqa: PLC0415

    from pipeline import tracking  # noqa: PLC0415

    params, tags = {f"p{i}": str(i) for i in range(8)}, {"role": "trial", "study": "bench", "trial": "0"}
    points = [(step, int(time.time() * 1000), {"score": 1.0 / (step + 1)}) for step in range(50)]
    ours, bare = [], []
    with _store() as folder:
        client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.create_experiment("bare", artifact_location=str(folder / "bare"))
        for index in range(runs):
            began = time.perf_counter()
            with tracking.open_run("optlab-bench", f"run-{index}", tags) as run:
                run.log_steps(points, params=params, tags={"done": "true"})
            ours.append(time.perf_counter() - began)
            began = time.perf_counter()
            made = client.create_run(experiment, run_name=f"run-{index}", tags=tags)
            client.log_batch(made.info.run_id, metrics=[Metric(k, v, t, s) for s, t, m in points for k, v in m.items()],
                             params=[Param(k, v) for k, v in params.items()], tags=[RunTag("done", "true")])
            client.set_terminated(made.info.run_id)
            bare.append(time.perf_counter() - began)
    return statistics.median(ours), statistics.median(bare)


def tracking_rows(device: torch.device, quick: bool) -> list[Row]:
    """The three rows (on the CPU: the store and the figures are what is measured)."""
    from pipeline.demo import TUNE  # noqa: PLC0415

    small = {"task": "toy", "functions": "rosenbrock", "trials": "4" if quick else "8", "seeds": "2" if quick else "3",
             "optimizers": "adam,sgd" if quick else "adam,sgd,momentum,nesterov"}
    log(f"tracking: a toy tune of {small['optimizers']}, tracked and as bare descents")
    tracked, count = _tune_seconds(small)
    untracked = _descent_seconds(small)
    log("tracking: fixed cost per run, ours and bare MLflow")
    ours, bare = _fixed_costs(10 if quick else 40)
    demo = {**TUNE, "functions": "rosenbrock", "optimizers": "adam,sgd", "trials": "4", "seeds": "2"} if quick else TUNE
    log(f"tracking: the demo's toy tune{' (cut: rosenbrock, adam and sgd)' if quick else ''}")
    demo_s, demo_trials = _tune_seconds(demo)
    return [
        Row("tracked toy trials/s", rate(count / tracked, "trials/s"), rate(count / untracked, "trials/s"),
            times(tracked / untracked), "-", "-",
            (f"tune of {small['optimizers']} on rosenbrock, {small['trials']} trials and {small['seeds']} seeds each "
             f"({count} runs with the report, {tracked:.1f} s) against the same number of batched descents, "
             f"untracked ({untracked:.1f} s); ratio: how many times longer tracked takes",)),
        Row("fixed cost per tracked run", f"{ours * 1000:.0f} ms", f"{bare * 1000:.0f} ms", times(ours / bare),
            f"<= {FIXED_TARGET}x", met(ours / bare <= FIXED_TARGET),
            ("create with tags, 8 params, 50 metric points, a tag, end: pipeline.tracking against the same calls on "
             "MlflowClient, median over the runs, on a fresh SQLite store",)),
        Row("demo toy tune wall", f"{demo_s:.0f} s", "-", "-", f"<= {DEMO_TARGET_S:.0f} s",
            met(demo_s <= DEMO_TARGET_S) if not quick else "-",
            (f"{demo_trials} trials and seed reruns of the {demo.get('optimizers', 'default')} optimizers on "
             f"{demo['functions']}, with the report"
             + (" (--quick: a cut of the demo's tune)" if quick else ""),)),
    ]

"""The `toy` entry point: one optimizer on one 2-D test function, tracked as one MLflow run."""
from __future__ import annotations

import dataclasses
import io
import sys

import numpy as np
import torch

from pipeline import plots, tracking
from pipeline.config import ToyConfig, as_params, code_version, config_hash
from pipeline.descent import Trajectory, run_descent, starting_points
from pipeline.errors import EXIT_DIVERGED, EXIT_OK
from pipeline.functions import Function2D, get_function
from pipeline.optimizers import resolve_hparams


def resolve_start(cfg: ToyConfig, fn: Function2D) -> tuple[float, float]:
    """The start point: explicit, the function's own, or seeded-random inside the plot window."""
    if cfg.start == "random":
        return tuple(starting_points(fn, 1, cfg.seed)[0].tolist())
    return cfg.start_point() or fn.start


def resolved_params(cfg: ToyConfig, fn: Function2D) -> dict[str, str]:
    """Params as they were really used: the optimizer's actual settings and the actual start."""
    hparams = resolve_hparams(cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    x, y = resolve_start(cfg, fn)
    params = {**as_params(cfg), "start": f"{x:g},{y:g}"}
    params.update({key: str(value) for key, value in hparams.items()})
    return params


def trajectory_csv(traj: Trajectory, point: int = 0) -> str:
    """One row per step for one starting point: position, loss, gradient norm, distance to the minimum."""
    buffer = io.StringIO()
    table = np.column_stack([np.arange(len(traj.losses)), traj.positions[:, point], traj.losses[:, point],
                             traj.grad_norms[:, point], traj.distances[:, point]])
    np.savetxt(buffer, table, delimiter=",", fmt=["%d"] + ["%.17g"] * 5, comments="",
               header="step,x,y,loss,grad_norm,distance_to_min")
    return buffer.getvalue()


def outcome_tags(traj: Trajectory, point: int = 0) -> dict[str, str]:
    """Tags that say how the descent ended."""
    converged, diverged = int(traj.converged_step[point]), int(traj.diverged_step[point])
    tags = {"converged": str(converged >= 0).lower(), "diverged": str(diverged >= 0).lower()}
    if converged >= 0:
        tags["converged_step"] = str(converged)
    if diverged >= 0:
        tags["diverged_step"] = str(diverged)
    return tags


def log_trajectory(run_id: str, fn: Function2D, traj: Trajectory, label: str) -> None:
    """Per-step metrics in batched calls, the trajectory CSV and the three plots."""
    steps = range(len(traj.losses))
    tracking.log_metric_series(run_id, {"loss": traj.losses[:, 0], "grad_norm": traj.grad_norms[:, 0],
                                        "distance_to_min": traj.distances[:, 0]}, steps)
    tracking.log_text(run_id, trajectory_csv(traj), "trajectory.csv")
    path = {label: traj.positions[:, 0]}
    tracking.log_figure(run_id, plots.contour_figure(fn, path), "plots/contour.png")
    tracking.log_figure(run_id, plots.surface_figure(fn, path), "plots/surface.png")
    tracking.log_figure(run_id, plots.loss_figure(fn, {label: traj.losses[:, 0]}), "plots/loss.png")


def run_toy(cfg: ToyConfig) -> int:
    """The `toy` entry point: one tracked run; exit code 3 if the loss diverged."""
    return toy_run(cfg)[1]


def toy_run(cfg: ToyConfig, parent: tracking.RunHandle | None = None) -> tuple[str, int]:
    """Descend, log everything, print one summary line; returns (run id, exit code)."""
    fn = get_function(cfg.function)
    params = resolved_params(cfg, fn)
    torch.manual_seed(cfg.seed)
    start = torch.tensor([resolve_start(cfg, fn)], dtype=torch.float64)
    tags = {"task": "toy", "config_hash": config_hash(cfg), "code_version": code_version()}
    with tracking.tracked_run(cfg.experiment, f"{cfg.optimizer}-{cfg.function}", tags, parent=parent) as run:
        tracking.log_params(run.run_id, params)
        tracking.log_dict(run.run_id, {**dataclasses.asdict(cfg), "resolved": params}, "config.json")
        traj = run_descent(fn, cfg.optimizer, start, cfg.steps, cfg.tolerance, lr=cfg.lr,
                           momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        log_trajectory(run.run_id, fn, traj, cfg.optimizer)
        tags = outcome_tags(traj)
        tracking.set_tags(run.run_id, tags)
        diverged = tags["diverged"] == "true"
        print(summary_line(cfg, traj, tags, run.run_id), file=sys.stderr if diverged else sys.stdout)
        if diverged:
            run.fail()
            return run.run_id, EXIT_DIVERGED
    return run.run_id, EXIT_OK


def summary_line(cfg: ToyConfig, traj: Trajectory, tags: dict[str, str], run_id: str) -> str:
    """One line for the terminal: how the descent ended and which run holds it."""
    if tags["diverged"] == "true":
        return (f"error: {cfg.optimizer} on {cfg.function} diverged at step {tags['diverged_step']} "
                f"(non-finite loss); try a smaller lr. Run {run_id} is marked FAILED.")
    loss, dist = traj.losses[-1, 0], traj.distances[-1, 0]
    how = f"converged at step {tags['converged_step']}" if tags["converged"] == "true" else \
        f"stopped after {traj.steps_taken} steps"
    return f"{cfg.optimizer} on {cfg.function}: {how}, loss {loss:.4g}, distance to minimum {dist:.4g} (run {run_id})"

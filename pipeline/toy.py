"""The `toy` entry point: one optimizer on one 2-D test function, tracked as one MLflow run."""
from __future__ import annotations

import dataclasses
import io
import sys
from typing import Any

import numpy as np
import torch

from pipeline import tracking
from pipeline.config.tasks import ToyConfig, logged_params
from pipeline.core.errors import EXIT_DIVERGED, EXIT_OK
from pipeline.core.provenance import code_version, config_hash
from pipeline.training.hooks import RunHooks
from pipeline.viz import figures, paths
from pipeline.workloads.toy.descent import Trajectory, run_descent, starting_points
from pipeline.workloads.toy.functions import Function2D, get_function


def resolve_start(cfg: ToyConfig, fn: Function2D) -> tuple[float, float]:
    """The start point: explicit, the function's own, or seeded-random inside the plot window."""
    if cfg.start == "random":
        return tuple(starting_points(fn, 1, cfg.seed)[0].tolist())
    return cfg.start_point() or fn.start


def resolved_params(cfg: ToyConfig, fn: Function2D) -> dict[str, str]:
    """Params as they were really used: the optimizer's actual settings and the actual start."""
    x, y = resolve_start(cfg, fn)
    return {**logged_params(cfg), "start": f"{x:g},{y:g}"}


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


def trajectory_series(traj: Trajectory) -> dict[str, np.ndarray]:
    """The per-step metrics of a toy run (its first point's)."""
    return {"loss": traj.losses[:, 0], "grad_norm": traj.grad_norms[:, 0], "distance_to_min": traj.distances[:, 0]}


def toy_files(fn: Function2D, traj: Trajectory, label: str, sweep_steps: int | None = None) -> dict[str, Any]:
    """A toy run's trajectory CSV (every step) and its three pictures, each path over a background drawn once
    (viz/paths.py); a sweep's run (`sweep_steps`: its budget) draws its loss on the axes every run of that budget
    shares (PNG bytes), a run alone on its own (a Figure)."""
    path, losses = traj.positions[:, 0], traj.losses[:, 0]
    return {"trajectory.csv": trajectory_csv(traj), "plots/contour.png": paths.contour_png(fn, label, path),
            "plots/surface.png": paths.surface_png(fn, label, path),
            "plots/loss.png": figures.loss_figure(fn, {label: losses}) if sweep_steps is None else
            paths.loss_png(fn, label, losses, sweep_steps)}


def main(cfg: ToyConfig) -> int:
    """The `toy` entry point: one tracked run; exit code 3 if the loss diverged."""
    return run_toy(cfg)[1]


def start_of(cfg: ToyConfig) -> torch.Tensor:
    """The (1, 2) start run_toy descends from, for a batched descent of several configs (a tune's seed reruns)
    whose trajectories are then handed to run_toy."""
    return torch.tensor([resolve_start(cfg, get_function(cfg.function))], dtype=torch.float64)


def run_toy(cfg: ToyConfig, parent: tracking.Run | None = None, hooks: RunHooks = RunHooks(),
            quiet: bool = False, descended: Trajectory | None = None, in_sweep: bool = False) -> tuple[str, int]:
    """Descend (unless `descended` is its trajectory, from start_of), log everything, print one summary line
    (`quiet`: only if it diverged); returns (run id, exit code). A sweep's run (`in_sweep`: a fresh nested run)
    logs its params, metrics (tracking.HISTORY_POINTS steps, with `hooks.logged`) and outcome in one call and
    its files in one more."""
    fn = get_function(cfg.function)
    params = resolved_params(cfg, fn)
    torch.manual_seed(cfg.seed)
    start = start_of(cfg)
    tags = {"task": "toy", "config_hash": config_hash(cfg), "code_version": code_version(), **hooks.tags}
    with tracking.open_run(cfg.experiment, hooks.name or f"{cfg.optimizer}-{cfg.function}", tags,
                           parent=parent) as run:
        hooks.opened(run)
        config = {**dataclasses.asdict(cfg), "resolved": params}
        if not in_sweep:
            run.log_params(params)
            run.log_dict(config, "config.json")
        traj = descended or run_descent(fn, cfg.optimizer_settings, start, cfg.steps, cfg.tolerance)
        tags = outcome_tags(traj)
        if in_sweep:
            steps, extra = hooks.logged
            run.log_steps([*steps, *tracking.history_steps(trajectory_series(traj), tracking.HISTORY_POINTS,
                                                           cfg.steps)], params={**params, **extra}, tags=tags)
            run.log_files({"config.json": config, **toy_files(fn, traj, cfg.optimizer, cfg.steps)})
        else:
            run.log_steps(tracking.history_steps(trajectory_series(traj)))
            files = toy_files(fn, traj, cfg.optimizer)
            run.log_text(files.pop("trajectory.csv"), "trajectory.csv")
            for artifact_file, picture in files.items():
                run.log_figure(picture, artifact_file)
            run.set_tags(tags)
        line = summary_line(cfg, traj, tags, run.run_id)
        if tags["diverged"] == "true":
            print(line, file=sys.stderr)
            run.fail(line.removeprefix("error: "))
            return run.run_id, EXIT_DIVERGED
        if not quiet:
            print(line)
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

"""The `train` entry point: one optimizer on any workload (workloads/registry.py), tracked as one MLflow run.
CIFAR-10 workloads run as the `cifar` entry point with their model (everything it does: resume, nproc, the
landscape, the logged model); the others train for a number of steps through the same loop (training/loop.py)."""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import torch

from pipeline import cifar, tracking
from pipeline.config.tasks import as_params, build_config
from pipeline.config.train import TrainConfig
from pipeline.core.errors import EXIT_DIVERGED, EXIT_OK
from pipeline.optim.registry import SplitOptimizer, build_optimizer
from pipeline.optim.schedulers import build_scheduler
from pipeline.training.hooks import RunHooks
from pipeline.training.loop import FitState, Member, Precision, StopTraining, fit
from pipeline.workloads.cifar.data import BATCHES_DIR
from pipeline.workloads.spec import Workload, WorkloadData

MODEL_FILES = ("model/weights.pt", "model/model.json")  # a language model: weights (weights_only) and its shape


def cifar_folder(data_dir: str) -> str:
    """The folder holding cifar-10-batches-py/: data_dir, or one of its subfolders (a data folder of several
    datasets, e.g. ../shared/data), else data_dir itself (where a download goes)."""
    folder = Path(data_dir)
    if (folder / BATCHES_DIR).is_dir() or not folder.is_dir():
        return data_dir
    inside = sorted(sub for sub in folder.iterdir() if (sub / BATCHES_DIR).is_dir())
    return str(inside[0]) if inside else data_dir


def cifar_config(cfg: TrainConfig, budget: dict):
    """The `cifar` entry point's config for a CIFAR-10 workload at this budget."""
    settings = {key: getattr(cfg, key) for key in ("optimizer", "lr", "momentum", "weight_decay", "download",
                                                   "seed", "device", "log_model", "experiment")}
    settings["data_dir"] = cifar_folder(cfg.data_dir)
    settings["target_acc"] = cfg.spec.target.value
    settings.update({key: budget[key] for key in ("epochs", "batch_size", "train_limit", "val_limit") if key in budget})
    if "scheduler" in budget:
        settings["scheduler"] = budget["scheduler"]
    return build_config("cifar", {"model": cfg.spec.cifar_model,
                                  **{key: str(value).lower() if isinstance(value, bool) else str(value)
                                     for key, value in settings.items() if value is not None}})


def cifar_run_config(cfg: TrainConfig):
    """(the `cifar` entry point's config at the budget in force on the device, that device) for a CIFAR-10
    workload: what train, compare and tune run such a workload as."""
    device = cifar.resolve_device(cfg.device)
    return cifar_config(cfg, cfg.resolved_budget(device.type == "cuda")), device


def _on_eval(run: tracking.Run, cfg: TrainConfig, steps: int, hooks: RunHooks, quiet: bool):
    """Log each evaluation at its step, print one line (unless quiet), stop past max_seconds; then the hook's
    call (a tune trial's pruner may stop the run there)."""
    def on_epoch(epoch: int, metrics: dict, confusion: torch.Tensor, state: FitState) -> None:
        run.log_metrics({**metrics, "train_seconds": state.train_seconds}, step=state.steps)
        shown = " ".join(f"{key} {metrics[key]:.4g}" for key in ("train_loss", "val_loss", "val_acc") if key in metrics)
        if not quiet:
            print(f"step {state.steps}/{steps}: {shown} ({state.train_seconds:.0f} s)", flush=True)
        if cfg.max_seconds and state.train_seconds >= cfg.max_seconds:
            raise StopTraining(f"max_seconds={cfg.max_seconds:g} reached after {state.steps} steps")
        if hooks.on_epoch is not None:
            hooks.on_epoch(epoch, metrics)
    return on_epoch


def _log_model(run: tracking.Run, workload: Workload, model: torch.nn.Module, data: WorkloadData) -> None:
    """What `predict` rebuilds the model from: its weights (loaded weights_only) and shape, with the vocabulary."""
    if not workload.serves:
        print(f"{workload.name}: it has nothing to serve, so no model is logged")
        return
    with tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, Path(scratch) / "weights.pt")
        shape = {"workload": workload.name, "config": vars(model.cfg), **data.extra}
        (Path(scratch) / "model.json").write_text(json.dumps(shape), encoding="utf-8")
        run.log_file(Path(scratch) / "weights.pt", "model")
        run.log_file(Path(scratch) / "model.json", "model")


def _finish(run: tracking.Run, cfg: TrainConfig, workload: Workload, state: FitState, model, data,
            quiet: bool = False) -> int:
    target = workload.target
    reached = state.time_to_target is not None
    run.set_tags({"diverged": str(bool(state.diverged)).lower(), "target_reached": str(reached).lower(),
                  "stopped": state.stopped})
    if state.diverged:
        if not quiet:
            print(f"error: {workload.name} diverged: {state.diverged}")
        run.fail(state.diverged)
        return EXIT_DIVERGED
    final = {f"best_{target.metric}": state.best_score, "steps": state.steps, "train_seconds": state.train_seconds}
    if reached:
        final.update(time_to_target=state.time_to_target, steps_to_target=state.steps_to_target)
    run.log_metrics({key: float(value) for key, value in final.items() if value is not None}, step=state.steps)
    if cfg.log_model:
        _log_model(run, workload, model, data)
    when = f"reached {target.metric} {'>=' if target.direction == 'max' else '<='} {target.value:g} after " \
           f"{state.time_to_target:.0f} s" if reached else f"did not reach {target.metric} {target.value:g}"
    if not quiet:
        print(f"{cfg.optimizer} on {workload.name}: best {target.metric} {state.best_score:.4f}; {when} "
              f"(run {run.run_id})")
    return EXIT_OK


def run_steps(cfg: TrainConfig, workload: Workload, parent: tracking.Run | None = None, hooks: RunHooks = RunHooks(),
              quiet: bool = False) -> tuple[str, int]:
    """A step-trained workload: data and model first (a problem is one line before any run), then one run;
    `hooks` add tags, a name and calls (a tune's trial), `quiet` keeps its lines back."""
    device = cifar.resolve_device(cfg.device)
    budget = cfg.resolved_budget(device.type == "cuda")
    every = min(budget["eval_every"], budget["steps"])
    data = workload.data(cfg.data_dir, cfg.download, cfg.seed, {**budget, "eval_every": every})
    model = workload.build(cfg.seed, data, budget).to(device)
    optimizer = build_optimizer(cfg.optimizer_settings, model.parameters(), fast=device.type == "cuda")
    epochs = math.ceil(budget["steps"] / every)
    scheduler = build_scheduler(budget["scheduler"], optimizer, epochs * every)
    split = {k: str(v) for k, v in optimizer.counts().items()} if isinstance(optimizer, SplitOptimizer) else {}
    tags = {"task": "train", "workload": workload.name, "optimizer": cfg.optimizer, "budget": budget["name"],
            **hooks.tags}
    with tracking.open_run(cfg.experiment, hooks.name or f"{cfg.optimizer}-{workload.name}", tags,
                           parent=parent) as run:
        hooks.opened(run)
        run.log_params({**as_params(cfg), **{f"budget_{k}": str(v) for k, v in budget.items()}, **split,
                        "parameters": str(sum(p.numel() for p in model.parameters()))})
        if not quiet:
            print(f"train: {cfg.optimizer} on {workload.name}, {budget['name']} budget: {budget['steps']} steps "
                  f"of {budget['batch_size']}, evaluated every {every}, on {device.type}", flush=True)
        began = time.perf_counter()
        state = fit([Member(model, optimizer, scheduler)], data.train, data.val, epochs,
                    Precision(device, bf16=device.type == "cuda"), workload.target,
                    [_on_eval(run, cfg, epochs * every, hooks, quiet)], show_progress=False,
                    objective=workload.objective)[0]
        run.log_metrics({"wall_seconds": time.perf_counter() - began}, step=state.steps)
        return run.run_id, _finish(run, cfg, workload, state, model, data, quiet)


def main(cfg: TrainConfig) -> int:
    """The `train` entry point."""
    if cfg.spec.cifar_model:
        return cifar.main(cifar_run_config(cfg)[0])
    return run_steps(cfg, cfg.spec)[1]

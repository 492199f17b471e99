"""What a trained trial scores (cifar runs, and the train runs of a tune of workloads), for tune's workers: an
ordinary run nested under its optimizer's run, its final score by the study's metric. A run that diverged scores
the worst there is (0 for an accuracy, infinity for a loss); a cifar trial reports every epoch to the pruner."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import optuna

from pipeline.config.tune import StudyPlan, TuneConfig
from pipeline.core.errors import EXIT_DIVERGED
from pipeline.training.hooks import RunHooks
from pipeline.training.loop import StopTraining


def worst(direction: str) -> float:
    """The score of a run that diverged."""
    return 0.0 if direction == "max" else math.inf


def cifar_inputs(base: Any) -> tuple:
    """(arrays, device) the cifar runs of `base` (a cifar config) train on: missing data or device is one
    UsageError."""
    from pipeline.cifar import load_data, resolve_device  # noqa: PLC0415

    return load_data(base), resolve_device(base.device)


def cifar_score(cfg: TuneConfig, plan: StudyPlan, phase: str, run: Any, inputs: tuple, trial: optuna.trial.Trial,
                parent: Any, hooks: RunHooks) -> float:
    """Final val_acc of an ordinary cifar run of config `run` (0 if it diverged); trials report each epoch to
    the pruner."""
    from pipeline.cifar import run_cifar  # noqa: PLC0415

    last: dict[str, float] = {}

    def on_epoch(epoch: int, metrics: dict) -> None:
        last["val_acc"] = metrics["val_acc"]
        if phase == "trials" and cfg.pruner != "none":
            trial.report(metrics["val_acc"], epoch)
            if epoch < run.epochs and trial.should_prune():
                last["pruned"] = epoch
                raise StopTraining(f"pruned by hyperband after epoch {epoch}")

    _, code = run_cifar(run, *inputs, parent, dataclasses.replace(hooks, on_epoch=on_epoch))
    if code == EXIT_DIVERGED:
        trial.set_user_attr("diverged", True)
        return worst("max")
    if "pruned" in last:
        if cfg.verbose:
            print(f"{plan.label} trial {trial.number}: pruned after epoch {last['pruned']:.0f}", flush=True)
        raise optuna.TrialPruned(f"val_acc {last['val_acc']:.4f}")
    return float(last.get("val_acc", 0.0))


def workload_inputs(cfg: TuneConfig) -> dict[str, tuple]:
    """workload -> (arrays, device) for each CIFAR-10 workload of a tune of workloads; the others' data read
    once here too, so that missing data is one line before any run."""
    from pipeline import cifar, train  # noqa: PLC0415

    found: dict[str, tuple] = {}
    for plan in cfg.children:
        base = plan.base
        if plan.workload in found:
            continue
        if base.spec.cifar_model:
            found[plan.workload] = cifar_inputs(train.cifar_run_config(base)[0])
        else:
            budget = base.resolved_budget(cifar.resolve_device(base.device).type == "cuda")
            base.spec.data(base.data_dir, base.download, base.seed, budget)
            found[plan.workload] = ()
    return found


def train_score(cfg: TuneConfig, plan: StudyPlan, run: Any, inputs: dict[str, tuple], parent: Any,
                hooks: RunHooks) -> float:
    """The last evaluation's score (the workload's target metric) of a train run of config `run`; the worst
    there is if it diverged."""
    from pipeline import cifar, train  # noqa: PLC0415

    metric, direction = cfg.score_of(plan)
    last: dict[str, float] = {}
    tracked = dataclasses.replace(hooks, on_epoch=lambda epoch, metrics: last.update(metrics))
    if run.spec.cifar_model:
        config = train.cifar_run_config(run)[0]
        if plan.workload not in inputs:
            inputs[plan.workload] = cifar_inputs(config)
        _, code = cifar.run_cifar(config, *inputs[plan.workload], parent, tracked)
    else:
        _, code = train.run_steps(run, run.spec, parent, tracked, quiet=not cfg.verbose)
    if code == EXIT_DIVERGED or metric not in last or not math.isfinite(last[metric]):
        return worst(direction)
    return float(last[metric])

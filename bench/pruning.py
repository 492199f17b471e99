"""Row 'tune pruning': a cifar lr study with Optuna's Hyperband pruner against the same study unpruned (same
sampler, seed, points and data), compared by the epochs each trains and the best final val_acc each finds, against
the seed noise of that val_acc. The trials train as tune's do (pipeline.cifar's trainer, train.fit, per-epoch
report), without MLflow: this row measures the pruner, not the tracking."""
from __future__ import annotations

import dataclasses
import statistics
import time

import optuna
import torch

from bench.data import describe, load_arrays
from bench.machine import log
from bench.table import Row, met, times
from pipeline.cifar import build_loaders, build_trainer
from pipeline.config.tasks import build_config
from pipeline.sweeps.tune import search
from pipeline.training.loop import StopTraining, fit
from pipeline.workloads.cifar.data import CifarArrays


def _train(cfg, arrays: CifarArrays, device: torch.device, trial: optuna.trial.Trial | None) -> tuple[float, int]:
    """(final val_acc, epochs trained) of one cifar config; with a trial, each epoch is reported for pruning."""
    trainer = build_trainer(cfg, build_loaders(cfg, arrays, device), device)
    seen = {"epochs": 0, "val_acc": 0.0}

    def on_epoch(epoch, metrics, confusion, state) -> None:
        seen.update(epochs=epoch, val_acc=metrics["val_acc"])
        if trial is not None:
            trial.report(metrics["val_acc"], epoch)
            if epoch < cfg.epochs and trial.should_prune():
                raise StopTraining("pruned")

    fit([trainer.member()], trainer.train_batches, trainer.val_batches, cfg.epochs, trainer.precision, 1.0,
        [on_epoch], show_progress=False)
    return seen["val_acc"], seen["epochs"]


def _study(pruner: str, cfg, arrays: CifarArrays, device: torch.device, trials: int) -> tuple[float, float, int, float]:
    """(best lr, its val_acc, epochs trained in all, seconds) of one study."""
    study = optuna.create_study(direction="maximize", sampler=search.make_sampler("qmc", ("lr",), {"lr": (1e-4, 1.0)},
                                                                                    trials, 0),
                                pruner=search.make_pruner(pruner, cfg.epochs))
    spent = {"epochs": 0}

    def objective(trial: optuna.trial.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        value, epochs = _train(dataclasses.replace(cfg, lr=lr), arrays, device, trial)
        spent["epochs"] += epochs
        if epochs < cfg.epochs:
            raise optuna.TrialPruned()
        return value

    began = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return study.best_params["lr"], study.best_value, spent["epochs"], time.perf_counter() - began


def pruning_rows(device: torch.device, quick: bool) -> list[Row]:
    """One row: the pruned study's compute as a fraction of the unpruned one's, and whether its best final
    val_acc is within one seed sd of the unpruned best."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials, epochs, images = (6, 3, 512) if quick else (12, 6, 1024)
    arrays = load_arrays()
    source = describe(arrays)
    cfg = build_config("cifar", {"model": "tiny_cnn", "optimizer": "momentum", "epochs": str(epochs),
                                 "batch_size": "64", "device": device.type, "system_metrics": "false"})
    arrays = dataclasses.replace(arrays, train_x=arrays.train_x[:images], train_y=arrays.train_y[:images],
                                 test_x=arrays.test_x[:images // 2], test_y=arrays.test_y[:images // 2])
    log(f"tune pruning: {trials} trials x {epochs} epochs of tiny_cnn, hyperband vs none")
    plain = _study("none", cfg, arrays, device, trials)
    pruned = _study("hyperband", cfg, arrays, device, trials)
    seeds = [_train(dataclasses.replace(cfg, lr=plain[0], seed=seed), arrays, device, None)[0] for seed in (1, 2, 3)]
    noise = statistics.stdev(seeds)
    gap = plain[1] - pruned[1]
    note = (f"{trials} qmc trials (lr in 1e-4..1, the same points for both) of tiny_cnn x {epochs} epochs on "
            f"{images} images of the {source}; unpruned best lr {plain[0]:.3g} val_acc {plain[1]:.3f}, "
            f"hyperband best lr {pruned[0]:.3g} val_acc {pruned[1]:.3f}; seed sd of the unpruned best setting "
            f"{noise:.3f} over 3 seeds; {pruned[3]:.0f} s vs {plain[3]:.0f} s wall")
    return [Row("tune hyperband vs none", f"{pruned[2]} epochs", f"{plain[2]} epochs", times(plain[2] / pruned[2]),
                "best within 1 seed sd", met(gap <= noise), (note,))]

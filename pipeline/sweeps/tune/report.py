"""What a finished tune logs: each optimizer's child run (best setting, seed mean and sd, default-lr score) and,
on the parent, tuned.csv / tuned.md, the lr sensitivity, seed bands, performance profiles and (toy) basin maps."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from pipeline import tracking
from pipeline.config.tune import StudyPlan, TuneConfig
from pipeline.sweeps.summary import as_csv, as_markdown
from pipeline.sweeps.tune import results as tune_results
from pipeline.sweeps.tune import ruling, search
from pipeline.sweeps.tune.results import StudyResult, TrialRecord
from pipeline.sweeps.tune.studies import Studies
from pipeline.sweeps.tune.worker import BASIN_ATTR, DEFAULT_ATTR, RunIds
from pipeline.viz import tune as tune_figures
from pipeline.workloads.toy import scores
from pipeline.workloads.toy.functions import get_function

SEED_METRICS = {"toy": ("score",), "cifar": ("val_acc", "train_loss"), "train": ("val_loss", "train_loss")}
SCORES = {"toy": "mean f - f_min after steps", "cifar": "final val_acc",
          "train": "each workload's target metric at the last evaluation"}
TOY_TAU_MAX, CIFAR_TAU_MAX = 1e4, 4.0  # profiles run from tau 1 to these (AlgoPerf: 4)


def _records(studies: Studies, plan: StudyPlan, phase: str) -> list[TrialRecord]:
    found = []
    for trial, state in search.classified(studies.study(plan, phase)):
        value = trial.value if state == "complete" else None
        if state == "pruned" and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        seed = trial.user_attrs.get("seed_index")
        found.append(TrialRecord(trial.number, state, dict(trial.params), value, trial.user_attrs.get("run_id", ""),
                                 None if seed is None else plan.base.seed + 1 + int(seed),
                                 bool(trial.user_attrs.get(DEFAULT_ATTR)), trial.user_attrs.get(BASIN_ATTR, "")))
    return found


def collect(studies: Studies) -> list[StudyResult]:
    """Every study's trials, default run and seed reruns, from the Optuna storage (and times from MLflow)."""
    cfg, results = studies.cfg, []
    for plan in cfg.children:
        trials = _records(studies, plan, "trials")
        defaults = [t for t in trials if t.default and t.state == "complete"]
        seeds = sorted((t for t in _records(studies, plan, "seeds") if t.state == "complete"), key=lambda t: t.seed)
        times = []
        if cfg.kind != "toy":
            for seed in seeds:
                reached = tracking.fetch_run(seed.run_id, ("time_to_target",))["metrics"]["time_to_target"]
                times += [value for _, value in reached[-1:]]
        results.append(StudyResult(plan.optimizer, plan.workload, plan.base.optimizer_settings.kwargs["lr"],
                                   trials, defaults[0] if defaults else None, seeds,
                                   cfg.score_of(plan)[1] == "max", tuple(times), timed=cfg.kind != "toy"))
    return results


def _seed_bands(cfg: TuneConfig, results: list[StudyResult], metric: str) -> dict:
    """Panel title -> optimizer -> (x, mean, min, max) over the seed runs' histories of `metric`."""
    panels: dict[str, dict] = {}
    keys = (metric, "epoch_time") if cfg.kind == "cifar" else (metric,)
    for result in results:
        histories = [tracking.fetch_run(seed.run_id, keys)["metrics"] for seed in result.seeds]
        logged = [tuple(zip(*h[metric])) for h in histories if h[metric]]  # (steps, values) per seed run
        if not logged:
            continue
        if cfg.kind == "toy":  # against the steps every seed run logged (tracking.history_steps' grid)
            steps, curves = tune_results.shared_steps(logged)
        else:  # against the evaluation's number
            curves = [values for _, values in logged]
            steps = np.arange(1, min(map(len, curves)) + 1)
        length, band = len(steps), tune_results.band(curves)
        axis = {"cifar": "epoch", "toy": "step"}.get(cfg.kind, "evaluation")
        panels.setdefault(f"{result.workload}: {metric} against {axis}", {})[result.optimizer] = (steps, *band)
        if cfg.kind == "cifar":
            seconds = np.stack([np.cumsum([v for _, v in h["epoch_time"]][:length]) for h in histories
                                if len(h["epoch_time"]) >= length]).mean(0)
            panels.setdefault(f"{result.workload}: {metric} against training seconds", {})[result.optimizer] = (
                seconds, *band)
    return panels


def _basins(cfg: TuneConfig, results: list[StudyResult]) -> tuple[dict, dict]:
    """workload -> optimizer -> reached-grid at the tuned setting, and each workload's window."""
    maps: dict[str, dict] = {}
    for plan, result in zip(cfg.children, results):
        if result.best is None:
            continue
        mapped = [seed.basin for seed in result.seeds if seed.basin]  # descended with the seed reruns
        if mapped:
            maps.setdefault(plan.workload, {})[plan.optimizer] = scores.basin_from_text(mapped[0])
            continue
        settings = dataclasses.replace(plan.base, **result.best.params).optimizer_settings
        maps.setdefault(plan.workload, {})[plan.optimizer] = scores.basin_map(get_function(plan.workload), settings,
                                                                              plan.base.steps, plan.base.tolerance)
    return maps, {w: get_function(w).window for w in maps}


def _log_children(results: list[StudyResult], ids: RunIds, cfg: TuneConfig) -> list[dict]:
    """Each child's result as params, metrics and tags; returns the table rows."""
    table = tune_results.rows(results)
    for result, row in zip(results, map(tune_results.row, results)):
        with tracking.open_run(cfg.experiment, result.label, run_id=ids.children[result.label]) as child:
            child.log_params({"default_lr": row["default_lr"], **{f"best_{k}": v for k, v in
                                                                  (result.best.params if result.best else {}).items()}})
            metrics = {key: float(row[key]) for key in ("default_score", "best_trial_score", "score_mean", "score_sd",
                                                        "trials_completed", "trials_pruned", "trials_failed")
                       if math.isfinite(row[key])}
            child.log_metrics(metrics, 0, tags={
                "best_trial": row["best_trial"], "best_run_id": result.best.run_id if result.best else "",
                "seed_run_ids": ",".join(s.run_id for s in result.seeds)})
    return table


def report(cfg: TuneConfig, parent: tracking.Run, ids: RunIds, results: list[StudyResult]) -> tuple[str, list[str]]:
    """Log everything; returns the Markdown table and the winners' lines."""
    table = _log_children(results, ids, cfg)
    score = SCORES[cfg.kind]
    markdown = as_markdown(table, f"tune {cfg.kind}: {cfg.trials} trials, {cfg.seeds} seeds per optimizer "
                                  f"(score: {score})")
    parent.log_text(as_csv(table), "tuned.csv")
    parent.log_text(markdown, "tuned.md")
    parent.log_figure(tune_figures.sensitivity_figure(tune_results.sensitivity(results), score, cfg.kind == "toy"),
                      "plots/lr_sensitivity.png")
    for metric in SEED_METRICS[cfg.kind]:
        panels = _seed_bands(cfg, results, metric)
        if panels:
            log_y = metric in ("score", "train_loss") or cfg.kind == "train"
            parent.log_figure(tune_figures.seeds_figure(panels, metric, log_y), f"plots/seeds_{metric}.png")
    if len({r.workload for r in results}) > 1:
        floor = cfg.children[0].base.tolerance if cfg.kind == "toy" else 1e-9
        tau_max = TOY_TAU_MAX if cfg.kind == "toy" else CIFAR_TAU_MAX
        taus = np.geomspace(1.0, tau_max, 200)
        what = {"toy": "gap to f_min", "cifar": "error rate"}.get(cfg.kind, "error rate or loss")
        parent.log_figure(tune_figures.profile_figure(taus, tune_results.profiles(tune_results.costs(results, floor), taus),
                                                   f"tau: {what} within this factor of the best", cfg.kind == "toy"),
                          "plots/performance_profile.png")
    if cfg.kind == "toy":
        parent.log_figure(tune_figures.basins_figure(*_basins(cfg, results)), "plots/basins.png")
    verdict_md, lines = ruling.rule(cfg, parent, ids, results)
    lines = [*tune_results.winner_lines(results), *lines]
    parent.set_tags({"winners": "; ".join(lines)[:5000], "mlflow.note.content": verdict_md[:50_000]})
    parent.log_metrics(tune_results.headline(results), 0)
    return markdown, lines

"""What a finished tune concludes, from its stored results (sweeps/tune/verdict.py does the statistics): per
workload the seed rows ranked with Welch's tests and Holm's correction, the winner or the tie, the budget curves
from the K trials; over the workloads AlgoPerf's benchmark score from each seed run's time_to_target. Logged on the
parent (verdict.md, also its description; verdict.json; plots/budget_<workload>.png; plots/profile_time.png) and
`profile_score` on each child."""
from __future__ import annotations

import math

import numpy as np

from pipeline import tracking
from pipeline.config.tune import TuneConfig
from pipeline.sweeps.tune import budget, verdict
from pipeline.sweeps.tune.results import StudyResult
from pipeline.sweeps.tune.worker import RunIds
from pipeline.viz import verdict as verdict_figures


def _scores(cfg: TuneConfig) -> dict[str, tuple[str, str]]:
    """workload -> (metric, direction) its studies rank by."""
    return {plan.workload: cfg.score_of(plan) for plan in cfg.children}


def judge(cfg: TuneConfig, results: list[StudyResult]) -> tuple[dict, dict, dict]:
    """(workload -> Verdict, workload -> optimizer -> trial 0's score, workload -> optimizer -> budget curve)."""
    per_workload, defaults, curves = {}, {}, {}
    for workload in dict.fromkeys(r.workload for r in results):
        metric, direction = _scores(cfg)[workload]
        mine = [r for r in results if r.workload == workload]
        rows = [verdict.seed_row(r.optimizer, [s.value for s in r.seeds], [s.run_id for s in r.seeds]) for r in mine]
        per_workload[workload] = verdict.judge(rows, metric, direction)
        defaults[workload] = {r.optimizer: r.default.value if r.default else None for r in mine}
        curves[workload] = {r.optimizer: budget.budget_curve([t.value for t in r.trials if t.state == "complete"],
                                                              direction) for r in mine}
    return per_workload, defaults, curves


def times(results: list[StudyResult]) -> dict[str, dict[str, float]]:
    """optimizer -> workload -> median time_to_target over the seed runs (a miss is infinite, as in AlgoPerf)."""
    found: dict[str, dict[str, float]] = {}
    for r in results:
        reached = list(r.time_to_target) + [math.inf] * max(len(r.seeds) - len(r.time_to_target), 0)
        found.setdefault(r.optimizer, {})[r.workload] = verdict.median_time(reached)
    return found


def _profile(cfg: TuneConfig, parent: tracking.Run, results: list[StudyResult], ids: RunIds) -> dict[str, float]:
    """profile_score on each optimizer's runs and plots/profile_time.png, when two or more workloads have times."""
    if cfg.kind == "toy" or len({r.workload for r in results}) < 2:
        return {}
    measured = times(results)
    profile = verdict.profile_score(measured)
    taus = np.linspace(1.0, verdict_figures.TAU_MAX, 200)
    parent.log_figure(verdict_figures.profile_time_figure(taus, verdict.profile_curve(measured, taus)),
                      "plots/profile_time.png")
    for r in results:  # the child has ended (report._log_children): a metric more, its status kept
        tracking.existing_run(ids.children[r.label]).log_metrics({"profile_score": profile[r.optimizer]}, 0)
    return profile


def _log_rows(ids: RunIds, per_workload: dict) -> None:
    """Each child's seed mean and 95% CI, as the verdict view charts them (a bar each), on the ended child runs
    (report._log_children), their status kept."""
    for workload, found in per_workload.items():
        for row in found.rows:
            numbers = {"seed_mean": row.mean, "ci_low": row.ci_low, "ci_high": row.ci_high}
            child = tracking.existing_run(ids.children[f"{row.optimizer}-{workload}"])
            child.log_metrics({k: v for k, v in numbers.items() if math.isfinite(v)}, 0)


def rule(cfg: TuneConfig, parent: tracking.Run, ids: RunIds, results: list[StudyResult]) -> tuple[str, list[str]]:
    """Log the verdict on the parent and its children; returns verdict.md and its decision lines."""
    per_workload, defaults, curves = judge(cfg, results)
    _log_rows(ids, per_workload)
    for workload, by_optimizer in curves.items():
        parent.log_figure(verdict_figures.budget_figure(by_optimizer, _scores(cfg)[workload][0], workload),
                          f"plots/budget_{workload}.png")
    profile = _profile(cfg, parent, results, ids)
    device = getattr(cfg.children[0].base, "device", "cpu")
    base = cfg.children[0].base
    quick = cfg.kind == "toy" or getattr(base, "train_limit", 0) > 0 or \
        (cfg.kind == "train" and base.resolved_budget(_cuda())["name"] == "quick")
    markdown = verdict.verdict_markdown(per_workload, profile, defaults, curves, cfg.trials, cfg.seeds, quick,
                                        "cpu" if device == "auto" and not _cuda() else device)
    parent.log_text(markdown, "verdict.md")
    parent.log_dict(verdict.verdict_json(per_workload, profile), "verdict.json")
    lines = [f"{workload}: {v.decision.text}" for workload, v in per_workload.items()]
    if profile:
        lines.append("benchmark score over workloads: " + ", ".join(
            f"{name} {score:.2f}" for name, score in sorted(profile.items(), key=lambda item: -item[1])))
    return markdown, lines


def _cuda() -> bool:
    import torch  # noqa: PLC0415 - only to say which device the verdict's runs had

    return torch.cuda.is_available()

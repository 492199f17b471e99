"""A finished tune's studies -> the tuned table, the winners, the lr sensitivity, seed statistics and performance
profiles. Pure: no Optuna, no MLflow, no plotting, no files."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class TrialRecord:
    """One Optuna trial as the report needs it."""

    number: int
    state: str  # complete, pruned, fail, surplus, retried, running, waiting
    params: dict[str, float]
    value: float | None  # the score (for a pruned trial: its last reported val_acc)
    run_id: str = ""
    seed: int | None = None  # seed reruns: the seed they ran
    default: bool = False  # the optimizer's own default setting, queued as the study's first trial
    basin: str = ""  # a toy study's first seed rerun: its setting's basin map (scores.basin_text), descended with it


@dataclass(frozen=True)
class StudyResult:
    """One optimizer on one workload: its trials, its default-lr run and its seed reruns."""

    optimizer: str
    workload: str
    default_lr: float
    trials: Sequence[TrialRecord]
    default: TrialRecord | None
    seeds: Sequence[TrialRecord]
    maximize: bool  # cifar: val_acc, higher is better; toy: the gap, lower is better; a workload: its target's
    time_to_target: Sequence[float] = field(default_factory=tuple)  # seed runs that reached the target (s)
    timed: bool | None = None  # its runs have a training clock (time_to_target); None: as maximize (cifar, toy)

    @property
    def label(self) -> str:
        return f"{self.optimizer}-{self.workload}"

    def counted(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    @property
    def best(self) -> TrialRecord | None:
        """The best complete trial (ties: the lowest number, as Optuna picks)."""
        return best_of([t for t in self.trials if t.state == "complete" and t.value is not None], self.maximize)

    @property
    def seed_scores(self) -> list[float]:
        return [t.value for t in self.seeds if t.state == "complete" and t.value is not None]

    @property
    def seed_stats(self) -> tuple[float, float]:
        """Mean and sample sd of the seed reruns' scores."""
        return mean_sd(self.seed_scores)


def best_of(trials: Sequence[Any], maximize: bool) -> Any:
    """The trial (anything with `value` and `number`) with the best value, ties to the lowest number: the one
    rule the seed reruns and the tuned table pick by; None for none."""
    sign = -1.0 if maximize else 1.0
    return min(trials, key=lambda t: (sign * t.value, t.number), default=None)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def row(result: StudyResult) -> dict[str, Any]:
    """One line of tuned.csv / tuned.md."""
    best, (mean, sd) = result.best, result.seed_stats
    times = sorted(result.time_to_target)
    return {"optimizer": result.optimizer, "workload": result.workload, "default_lr": result.default_lr,
            "default_score": result.default.value if result.default and result.default.value is not None
            else math.nan,
            "tuned_lr": best.params.get("lr", math.nan) if best else math.nan,
            "tuned_weight_decay": best.params.get("weight_decay", math.nan) if best else math.nan,
            "best_trial_score": best.value if best else math.nan, "score_mean": mean, "score_sd": sd,
            "seeds": len(result.seed_scores),
            **({"time_to_target_median": statistics.median(times) if times else math.nan,
                "time_to_target_range": f"{times[0]:.4g}-{times[-1]:.4g}" if times else "-"}
               if (result.maximize if result.timed is None else result.timed) else {}),  # a toy run has no clock
            "trials_completed": result.counted("complete"), "trials_pruned": result.counted("pruned"),
            "trials_failed": result.counted("fail"), "best_trial": best.number if best else "-"}


def rows(results: Sequence[StudyResult]) -> list[dict[str, Any]]:
    """The tuned table, per workload, best seed mean first."""
    def order(r: StudyResult) -> tuple:
        mean = r.seed_stats[0]
        key = (-mean if r.maximize else mean) if math.isfinite(mean) else math.inf
        return r.workload, key
    return [row(r) for r in sorted(results, key=order)]


def winners(results: Sequence[StudyResult]) -> dict[str, tuple[str, str, list[str]]]:
    """workload -> (the optimizer best at its default lr, the optimizer best once tuned (by seed mean), the
    others whose seed mean is within one seed sd of that winner's: no clear difference)."""
    found = {}
    for workload in dict.fromkeys(r.workload for r in results):
        here = [r for r in results if r.workload == workload]
        sign = -1.0 if here[0].maximize else 1.0

        def by(value: float | None) -> float:
            return sign * value if value is not None and math.isfinite(value) else math.inf
        default = min(here, key=lambda r: by(r.default.value if r.default else None))
        tuned = min(here, key=lambda r: by(r.seed_stats[0]))
        best_mean, best_sd = tuned.seed_stats
        close = [r.optimizer for r in here if r is not tuned and
                 abs(r.seed_stats[0] - best_mean) <= max(best_sd, r.seed_stats[1])]
        found[workload] = (default.optimizer, tuned.optimizer, close)
    return found


def winner_lines(results: Sequence[StudyResult]) -> list[str]:
    """One sentence per workload: who scores best at default settings, and whose seed mean is best tuned."""
    lines = []
    for workload, (default, best, close) in winners(results).items():
        lines.append(f"{workload}: at its default lr {default} scores best; with every optimizer tuned, {best} has "
                     "the best seed mean (whether that is a win: the verdict line)")
    return lines


def sensitivity(results: Sequence[StudyResult]) -> dict[str, dict[str, list[tuple[float, float, bool]]]]:
    """workload -> optimizer -> (lr, score, pruned) per counted trial, by lr."""
    lines: dict[str, dict[str, list[tuple[float, float, bool]]]] = {}
    for r in results:
        points = [(t.params["lr"], t.value, t.state == "pruned") for t in r.trials
                  if t.state in ("complete", "pruned") and t.value is not None and math.isfinite(t.value)
                  and "lr" in t.params]
        lines.setdefault(r.workload, {})[r.optimizer] = sorted(points)
    return lines


def costs(results: Sequence[StudyResult], floor: float) -> dict[str, dict[str, float]]:
    """optimizer -> workload -> cost (lower is better) for performance profiles: the toy gap, floored at
    `floor` (gaps below it count as equal), or the cifar error rate 1 - val_acc (seed means)."""
    table: dict[str, dict[str, float]] = {}
    for r in results:
        mean = r.seed_stats[0]
        cost = (1.0 - mean) if r.maximize else mean
        table.setdefault(r.optimizer, {})[r.workload] = max(cost, floor) if math.isfinite(cost) else math.inf
    return table


def profiles(table: dict[str, dict[str, float]], taus: np.ndarray) -> dict[str, np.ndarray]:
    """Performance profiles (Dolan & More; AlgoPerf's scoring): for each optimizer, the share of workloads on
    which its cost is within a factor tau of the best optimizer's, at every tau."""
    workloads = sorted({w for row in table.values() for w in row})
    best = {w: min(row.get(w, math.inf) for row in table.values()) for w in workloads}
    curves = {}
    for optimizer, row in table.items():
        ratios = np.array([row.get(w, math.inf) / best[w] if best[w] > 0 else
                           (1.0 if row.get(w) == best[w] else math.inf) for w in workloads])
        curves[optimizer] = np.array([(ratios <= tau).mean() for tau in taus])
    return curves


def shared_steps(series: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[np.ndarray, list[list[float]]]:
    """(steps, values) histories of several runs at the steps all of them logged: those steps, each run's values."""
    common = sorted(set.intersection(*(set(steps) for steps, _ in series)))
    return np.array(common), [[dict(zip(*pair))[step] for step in common] for pair in series]


def band(curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over curves at each step, up to the shortest curve's length."""
    length = min(len(c) for c in curves)
    stack = np.array([list(c)[:length] for c in curves], dtype=float)
    return stack.mean(0), stack.min(0), stack.max(0)


def headline(results: Sequence[StudyResult]) -> dict[str, float]:
    """What a tune parent's row shows in the runs table: the best seed mean (per workload when several)."""
    workloads = list(dict.fromkeys(r.workload for r in results))
    found: dict[str, float] = {"optimizers": float(len({r.optimizer for r in results}))}
    for workload in workloads:
        means = [r.seed_stats[0] for r in results if r.workload == workload]
        means = [m for m in means if math.isfinite(m)]
        if means:
            key = "best_score_mean" if len(workloads) == 1 else f"best_score_mean/{workload}"
            found[key] = max(means) if results[0].maximize else min(means)
    return found

"""A tune's verdict: seed rows with 95% t-intervals, Welch's tests against the best with Holm's correction, a
winner only when every other optimizer is significantly worse, AlgoPerf's benchmark score over workloads, and the
verdict as JSON and Markdown (with budget.py's reading of the tuning-budget curves).
Pure: numpy and scipy.stats only; no MLflow, no plotting, no files."""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from scipy import stats

from pipeline.sweeps.tune.budget import budget_reading, check_direction as _check, finite as _finite

POWER = 0.8  # seeds_needed: the chance of telling the closest pair apart, were the observed gap real


@dataclass(frozen=True)
class Row:
    """One optimizer's seed reruns on one workload."""

    optimizer: str
    mean: float
    sd: float  # sample sd (ddof=1); 0 for one seed
    ci_low: float  # 95% t-interval of the mean; the mean itself for one seed
    ci_high: float
    seeds: list[dict[str, Any]]  # {"run_id", "score"}; a failed seed's score is None
    p_adjusted: float | None = None  # Welch against the best, Holm-adjusted; None for the best, NaN if untestable


@dataclass(frozen=True)
class Decision:
    """What one workload's rows decide."""

    winner: str | None
    tied: list[str]  # the best and every optimizer not significantly worse
    text: str
    seeds_needed: int | None  # per optimizer, to tell the best from the runner-up (approximate)


@dataclass(frozen=True)
class Verdict:
    """One workload's ranked rows and what they decide."""

    score_metric: str
    direction: str  # "max" or "min"
    rows: list[Row]
    decision: Decision


def seed_row(optimizer: str, scores: Sequence[float | None], run_ids: Sequence[str]) -> Row:
    """Mean, sample sd and 95% t-interval over the seeds that gave a score."""
    seeds = [{"run_id": run_id, "score": None if s is None or math.isnan(s) else float(s)}
             for s, run_id in zip(scores, run_ids, strict=True)]
    values = _finite(scores)
    if not values:
        return Row(optimizer, math.nan, math.nan, math.nan, math.nan, seeds)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    if not sd:  # one seed, or seeds that agree: the interval is the mean itself
        return Row(optimizer, mean, 0.0, mean, mean, seeds)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sd / math.sqrt(len(values)))
    return Row(optimizer, mean, sd, float(low), float(high), seeds)


def _scores(row: Row) -> list[float]:
    return _finite([seed["score"] for seed in row.seeds])


def _welch(a: list[float], b: list[float]) -> float:
    """Two-sided Welch p; NaN when either side has fewer than two seeds or neither varies at one mean."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant seeds: scipy warns of lost precision
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; a NaN counts as a test but stays NaN."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: 1.0 if math.isnan(pvalues[i]) else pvalues[i])
    adjusted, running = [math.nan] * m, 0.0
    for step, i in enumerate(order):
        p = 1.0 if math.isnan(pvalues[i]) else pvalues[i]
        running = max(running, min(1.0, (m - step) * p))
        adjusted[i] = math.nan if math.isnan(pvalues[i]) else running
    return adjusted


def rank(rows: Sequence[Row], direction: str) -> list[Row]:
    """Best first by mean (ties keep the input order; no score sorts last), each other row's Welch p against the
    best, Holm-adjusted over those comparisons."""
    _check(direction)
    sign = -1.0 if direction == "max" else 1.0
    ordered = sorted(rows, key=lambda r: (math.isnan(r.mean), 0.0 if math.isnan(r.mean) else sign * r.mean))
    if not ordered:
        return []
    best = _scores(ordered[0])
    adjusted = holm([_welch(best, _scores(other)) for other in ordered[1:]])
    return [replace(ordered[0], p_adjusted=None)] + [replace(r, p_adjusted=p) for r, p in zip(ordered[1:], adjusted)]


def seeds_needed(best: Row, other: Row, alpha: float = 0.05, power: float = POWER, comparisons: int = 1) -> int | None:
    """Approximate seeds per optimizer for Welch's test to see the observed gap at the observed sds with `power`
    at alpha / `comparisons` (what Holm asks of the closest pair at worst): the first n whose noncentral-t power
    (Welch-Satterthwaite df) reaches it, by doubling then bisection; None without a gap or a spread."""
    d, v1, v2 = abs(best.mean - other.mean), best.sd ** 2, other.sd ** 2
    if not d or not (v1 + v2) or math.isnan(d + v1 + v2):
        return None
    level = alpha / max(1, comparisons)

    def reaches(n: int) -> bool:
        df, ncp = (n - 1) * (v1 + v2) ** 2 / (v1 ** 2 + v2 ** 2), d / math.sqrt((v1 + v2) / n)
        critical = stats.t.ppf(1 - level / 2, df)
        return stats.nct.sf(critical, df, ncp) + stats.nct.cdf(-critical, df, ncp) >= power

    low, high = 1, 2
    while not reaches(high):
        low, high = high, high * 2
    while high - low > 1:
        low, high = (low, (low + high) // 2) if reaches((low + high) // 2) else ((low + high) // 2, high)
    return high


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def decide(rows: Sequence[Row], alpha: float = 0.05) -> Decision:
    """Ranked rows -> a winner when every other optimizer is significantly worse at `alpha`, else the tie."""
    if not rows:
        return Decision(None, [], "no optimizer gave a score", None)
    best, others = rows[0], rows[1:]
    needed = seeds_needed(best, others[0], alpha, comparisons=len(others)) if others else None
    worse = [r.p_adjusted is not None and r.p_adjusted < alpha for r in others]
    if all(worse):
        p = max((r.p_adjusted for r in others), default=None)
        text = f"{best.optimizer} wins" + (f" (p = {p:.2g})" if p is not None else " (the only optimizer)")
        return Decision(best.optimizer, [best.optimizer], text, needed)
    tied = [best.optimizer] + [r.optimizer for r, w in zip(others, worse) if not w]
    counts = sorted({len(_scores(r)) for r in rows if r.optimizer in tied})
    seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    text = f"{_names(tied)} are not told apart by {seeds} seeds"
    if needed is not None:
        over = f" over {len(others)} comparisons" if len(others) > 1 else ""
        text += (f"; about {needed} seeds each would tell {best.optimizer} from {others[0].optimizer} "
                 f"(approximate: Welch's test at alpha {alpha:g}{over}, power {POWER:g}, at the observed spread)")
    return Decision(None, tied, text, needed)


def judge(rows: Sequence[Row], score_metric: str, direction: str, alpha: float = 0.05) -> Verdict:
    """Rank and decide one workload."""
    ranked = rank(rows, direction)
    return Verdict(score_metric, direction, ranked, decide(ranked, alpha))


def median_time(values: Sequence[float | None]) -> float:
    """AlgoPerf's time over seeds: the median, a seed that missed the target (None, NaN) counting as inf."""
    return statistics.median([math.inf if v is None or math.isnan(v) else float(v) for v in values] or [math.inf])


def _ratios(times: Mapping[str, Mapping[str, float | None]]) -> dict[str, list[float]]:
    """optimizer -> its time over the best time, per workload (a miss or missing workload: inf)."""
    workloads = list(dict.fromkeys(w for per in times.values() for w in per))
    if len(workloads) < 2:
        raise ValueError("a profile needs two or more workloads")

    def time(optimizer: str, workload: str) -> float:
        t = times[optimizer].get(workload)
        return math.inf if t is None or math.isnan(t) else float(t)

    best = {w: min(time(o, w) for o in times) for w in workloads}
    return {o: [_ratio(time(o, w), best[w]) for w in workloads] for o in times}


def _ratio(t: float, best: float) -> float:
    if math.isinf(t):
        return math.inf
    return 1.0 if t == best else t / best  # t > best >= 0 here, so best is positive


def profile_score(times: Mapping[str, Mapping[str, float | None]], tau_max: float = 4.0) -> dict[str, float]:
    """AlgoPerf's benchmark score: the area under rho(tau) on [1, tau_max] over (tau_max - 1), in [0, 1]. rho is a
    step function, so the area is exact: each ratio r <= tau_max adds (tau_max - r) / workloads."""
    if tau_max <= 1:
        raise ValueError(f"tau_max {tau_max}: choose more than 1")
    return {o: sum(tau_max - max(r, 1.0) for r in ratios if r <= tau_max) / (len(ratios) * (tau_max - 1))
            for o, ratios in _ratios(times).items()}


def profile_curve(times: Mapping[str, Mapping[str, float | None]], taus: Sequence[float]) -> dict[str, list[float]]:
    """rho_o(tau): the share of workloads optimizer o reached within tau times the best time, at each tau."""
    return {o: [sum(r <= tau for r in ratios) / len(ratios) for tau in taus] for o, ratios in _ratios(times).items()}


def _plain(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)  # JSON has no NaN or inf


def verdict_json(per_workload: Mapping[str, Verdict], profile: Mapping[str, float]) -> dict:
    """The verdict as plain JSON (NaN and inf as None)."""
    keys = ("mean", "sd", "ci_low", "ci_high", "p_adjusted")
    workloads = {w: {"score_metric": v.score_metric, "direction": v.direction, "winner": v.decision.winner,
                     "rows": [{"optimizer": r.optimizer, **{k: _plain(getattr(r, k)) for k in keys},
                               "seeds": [{"run_id": s["run_id"], "score": _plain(s["score"])} for s in r.seeds]}
                              for r in v.rows]}
                 for w, v in per_workload.items()}
    return {"workloads": workloads, "profile_score": {o: _plain(s) for o, s in profile.items()}}


def _number(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def _ranking(verdict: Verdict) -> list[str]:
    lines = ["| optimizer | mean | 95% CI | adjusted p |", "|---|---:|---|---:|"]
    for r in verdict.rows:
        p = "best" if r.p_adjusted is None else _number(r.p_adjusted)
        lines.append(f"| {r.optimizer} | {_number(r.mean)} | [{_number(r.ci_low)}, {_number(r.ci_high)}] | {p} |")
    return lines


def _tuning(verdict: Verdict, defaults: Mapping[str, float | None]) -> list[str]:
    """What tuning changed: the default setting's score (trial 0) against the tuned mean over seeds."""
    sign = 1.0 if verdict.direction == "max" else -1.0
    lines = ["| optimizer | default (trial 0) | tuned mean | change |", "|---|---:|---:|---|"]
    for r in verdict.rows:
        default = defaults.get(r.optimizer)
        gain = math.nan if default is None else sign * (r.mean - default)
        change = "-" if math.isnan(gain) else \
            f"{r.mean - default:+.4g} ({'better' if gain > 0 else 'worse' if gain < 0 else 'same'})"
        lines.append(f"| {r.optimizer} | {_number(default)} | {_number(r.mean)} | {change} |")
    return lines


def verdict_markdown(per_workload: Mapping[str, Verdict], profile: Mapping[str, float],
                     defaults: Mapping[str, Mapping[str, float | None]],
                     curves: Mapping[str, Mapping[str, Sequence[float]]],
                     budget: int, seeds: int, quick: bool, device: str) -> str:
    """The verdict page: per workload the ranking, the decision, what tuning changed and the budget curves'
    reading; then the benchmark score over workloads and what this cannot say. `defaults` and `curves` are per
    workload, then per optimizer."""
    lines = ["# Verdict", ""]
    for w, v in per_workload.items():
        lines += [f"## {w} ({v.score_metric}, {'higher' if v.direction == 'max' else 'lower'} is better)", "",
                  *_ranking(v), "", f"**{v.decision.text}**", "", "What tuning changed against the default:", "",
                  *_tuning(v, defaults.get(w, {})), "", "Expected best against trials: "
                  + budget_reading(curves.get(w, {}), v.direction), ""]
    lines += ["## Benchmark score over workloads (AlgoPerf, tau up to 4)", ""]
    if profile:
        lines += ["| optimizer | score |", "|---|---:|"]
        lines += [f"| {o} | {_number(s)} |" for o, s in sorted(profile.items(), key=lambda item: -item[1])]
    else:
        lines.append("Needs two or more workloads with a time to target.")
    return "\n".join(lines + ["", *_limits(budget, seeds, quick, device)]) + "\n"


def _limits(budget: int, seeds: int, quick: bool, device: str) -> list[str]:
    lines = ["## What this cannot say", "",
             f"- The search had {budget} trials per optimizer: a longer search may rank them differently "
             "(see the budget curves).",
             f"- {seeds} seeds per optimizer: gaps smaller than their spread are not told apart, and Welch's test "
             "is only approximate at so few."]
    if quick:
        lines.append("- Quick budgets: short training, so early speed is rewarded over the final score.")
    if device == "cpu":
        lines.append("- Ran on CPU: times to target are CPU times and do not carry over to GPUs.")
    return lines

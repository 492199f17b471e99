"""The verdict's statistics against independent computations: Welch's test and Holm's correction, t-intervals,
the winner rule, the seeds needed, the expected best of k trials (brute force over subsets), AlgoPerf's benchmark
score (by hand), the JSON and Markdown, and the figures."""
import itertools
import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from pipeline.sweeps.tune.budget import budget_curve, budget_reading, expected_best
from pipeline.sweeps.tune.verdict import (decide, holm, judge, median_time, profile_curve, profile_score, rank,
                                          seed_row, seeds_needed, verdict_json, verdict_markdown)
from pipeline.viz.verdict import budget_figure, profile_time_figure

SCORES = {"adam": [0.91, 0.92, 0.90, 0.93], "sgd": [0.88, 0.91, 0.89, 0.90], "lion": [0.80, 0.85, 0.83, 0.79]}


def _rows(scores=SCORES):
    return [seed_row(name, values, [f"{name}-{i}" for i in range(len(values))]) for name, values in scores.items()]


def _holm_by_hand(pvalues):
    """Holm (1979): the i-th smallest of m times (m - i + 1), made monotone, capped at 1."""
    m, order = len(pvalues), sorted(range(len(pvalues)), key=pvalues.__getitem__)
    adjusted, previous = [0.0] * m, 0.0
    for i, index in enumerate(order):
        previous = max(previous, min(1.0, (m - i) * pvalues[index]))
        adjusted[index] = previous
    return adjusted


def test_holm_on_known_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 * 0.8 capped at 1, and monotone
    assert holm([0.02, 0.04]) == pytest.approx([0.04, 0.04])
    adjusted = holm([0.01, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])  # an untestable pair still counts


def test_rank_is_welch_against_the_best_then_holm():
    ranked = rank(_rows(), "max")
    assert [r.optimizer for r in ranked] == ["adam", "sgd", "lion"]
    raw = [stats.ttest_ind(SCORES["adam"], SCORES[name], equal_var=False).pvalue for name in ("sgd", "lion")]
    assert ranked[0].p_adjusted is None
    assert [r.p_adjusted for r in ranked[1:]] == pytest.approx(_holm_by_hand(raw), rel=1e-12)


def test_rank_for_min_and_ties_keep_the_input_order():
    ranked = rank(_rows({"a": [2.0, 2.0], "b": [1.0, 1.2], "c": [2.0, 2.0], "d": [0.5, 0.7]}), "min")
    assert [r.optimizer for r in ranked] == ["d", "b", "a", "c"]
    tied = rank(_rows({"x": [1.0, 2.0], "y": [2.0, 1.0]}), "max")
    assert [r.optimizer for r in tied] == ["x", "y"]
    with pytest.raises(ValueError, match="max or min"):
        rank(_rows(), "up")


def test_seed_row_mean_sd_and_the_t_interval():
    row = seed_row("adam", SCORES["adam"], ["r0", "r1", "r2", "r3"])
    values = SCORES["adam"]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=statistics.mean(values),
                                 scale=stats.sem(values))
    assert (row.mean, row.sd) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert (row.ci_low, row.ci_high) == pytest.approx((low, high), rel=1e-12)
    assert row.seeds[1] == {"run_id": "r1", "score": 0.92}
    one = seed_row("sgd", [0.5], ["r"])
    assert (one.mean, one.sd, one.ci_low, one.ci_high) == (0.5, 0.0, 0.5, 0.5)
    same = seed_row("sgd", [0.5, 0.5], ["r", "s"])
    assert (same.sd, same.ci_low, same.ci_high) == (0.0, 0.5, 0.5)
    failed = seed_row("sgd", [0.5, None, math.nan, 0.7], list("abcd"))
    assert failed.mean == pytest.approx(0.6) and [s["score"] for s in failed.seeds] == [0.5, None, None, 0.7]


def test_a_winner_only_when_every_other_is_significantly_worse():
    clear = decide(rank(_rows({"a": [0.95, 0.96, 0.955], "b": [0.80, 0.81, 0.805], "c": [0.7, 0.71, 0.705]}),
                        "max"))
    assert clear.winner == "a" and clear.tied == ["a"]
    p = max(r.p_adjusted for r in rank(_rows({"a": [0.95, 0.96, 0.955], "b": [0.80, 0.81, 0.805],
                                               "c": [0.7, 0.71, 0.705]}), "max")[1:])
    assert clear.text == f"a wins (p = {p:.2g})" and p < 0.05
    close = decide(rank(_rows(), "max"))  # adam and sgd overlap; lion is far behind
    assert close.winner is None and close.tied == ["adam", "sgd"]
    assert close.text.startswith("adam and sgd are not told apart by 4 seeds") and "approximate" in close.text
    three = decide(rank(_rows({"x": [1.0, 2.0, 3.0], "y": [1.1, 2.0, 2.9], "z": [0.9, 2.1, 2.8]}), "max"))
    assert three.text.startswith("x, y and z are not told apart by 3 seeds")
    assert decide(rank(_rows({"solo": [1.0, 2.0]}), "max")).winner == "solo"


def test_one_seed_each_cannot_decide():
    decision = decide(rank(_rows({"a": [0.9], "b": [0.1]}), "max"))
    assert decision.winner is None and decision.tied == ["a", "b"] and decision.seeds_needed is None


def test_seeds_needed_gives_welchs_test_its_power_and_grows_with_the_comparisons():
    """At the returned n, Welch's test on normal seeds of the observed means and sds rejects at alpha / m about 80%
    of the time (simulated), at n - 1 less; more comparisons (Holm over m others) need more seeds."""
    base = seed_row("a", [1.0, 2.0, 3.0], list("abc"))  # sd 1
    needed = [seeds_needed(base, seed_row("b", [1.0 - gap, 2.0 - gap, 3.0 - gap], list("abc")))
              for gap in (2.0, 1.0, 0.5, 0.25)]
    assert needed == sorted(needed) and len(set(needed)) == len(needed)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert needed[2] >= math.ceil(2 * (z * 1.0 / 0.5) ** 2) == 63  # the normal formula: a floor, not the answer
    generator = np.random.default_rng(0)
    for gap, m in ((1.0, 1), (2.0, 17)):
        n = seeds_needed(base, seed_row("b", [1.0 - gap, 2.0 - gap, 3.0 - gap], list("abc")), comparisons=m)
        for size, low, high in ((n, 0.78, 0.86), (n - 1, 0.0, 0.80)):
            a, b = generator.normal(2.0, 1.0, (20000, size)), generator.normal(2.0 - gap, 1.0, (20000, size))
            rejected = (stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05 / m).mean()
            assert low <= rejected <= high, (gap, m, size, rejected)
    assert seeds_needed(base, seed_row("b", [0.0, 1.0, 2.0], "abc"), comparisons=17) > seeds_needed(
        base, seed_row("b", [0.0, 1.0, 2.0], "abc"))
    assert seeds_needed(base, seed_row("b", [1.0, 2.0, 3.0], list("abc"))) is None  # no gap
    assert seeds_needed(seed_row("a", [1.0, 1.0], "ab"), seed_row("b", [2.0, 2.0], "ab")) is None  # no spread


def _brute_force(values, k, pick):
    subsets = list(itertools.combinations(values, k))
    return sum(pick(subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("direction,pick", [("max", max), ("min", min)])
def test_expected_best_equals_the_average_over_every_k_subset(direction, pick):
    scores = [0.3, None, 0.9, 0.1, math.nan, 0.5, 0.5, 0.7]
    values = [s for s in scores if s is not None and not math.isnan(s)]
    for k in range(1, len(values) + 1):
        assert expected_best(scores, k, direction) == pytest.approx(_brute_force(values, k, pick), rel=1e-12)
    assert expected_best(scores, 1, direction) == pytest.approx(statistics.mean(values))
    assert expected_best(scores, len(values), direction) == pick(values)
    curve = budget_curve(scores, direction)
    assert len(curve) == len(values) and curve == sorted(curve, reverse=direction == "min")
    with pytest.raises(ValueError, match="choose 1 to 6"):
        expected_best(scores, 7, direction)


def test_budget_reading():
    curves = {"a": [0.5, 0.6, 0.7], "b": [0.55, 0.58, 0.6, 0.9]}
    assert budget_reading(curves, "max") == "after 1 trial b leads; after 3, a"
    assert budget_reading({"a": [0.5, 0.6], "b": [0.4, 0.5]}, "max") == "a leads after 1 trial and after 2"


def test_profile_score_by_hand():
    inf = math.inf
    times = {"fast": {"w1": 10.0, "w2": 20.0}, "half": {"w1": 20.0, "w2": 20.0},
             "miss": {"w1": inf, "w2": None}, "slow": {"w1": 30.0, "w2": 100.0}}
    score = profile_score(times)
    assert score["fast"] == 1.0
    assert score["miss"] == 0.0
    assert score["half"] == pytest.approx((1 + 2 / 3) / 2)  # ratio 2 on w1: (4 - 2) / 3 of that workload's area
    assert score["slow"] == pytest.approx((1 / 3 + 0) / 2)  # ratio 3 on w1, 5 on w2 (past tau_max)
    assert profile_score({"a": {"w1": 1.0, "w2": 1.0}, "b": {"w1": 2.0}}, tau_max=3.0)["b"] == pytest.approx(0.25)
    curve = profile_curve(times, [1.0, 2.0, 3.0, 5.0])
    assert curve["half"] == [0.5, 1.0, 1.0, 1.0] and curve["slow"] == [0.0, 0.0, 0.5, 1.0]
    assert curve["miss"] == [0.0] * 4


def test_a_profile_needs_two_workloads():
    with pytest.raises(ValueError, match="a profile needs two or more workloads"):
        profile_score({"a": {"w": 1.0}, "b": {"w": 2.0}})
    with pytest.raises(ValueError, match="a profile needs two or more workloads"):
        profile_curve({"a": {"w": 1.0}}, [1.0])


def test_median_time_counts_a_miss_as_inf():
    assert median_time([3.0, 1.0, 2.0]) == 2.0
    assert median_time([1.0, None, math.nan]) == math.inf
    assert median_time([1.0, 2.0, 3.0, None, 4.0]) == 3.0
    assert median_time([]) == math.inf


def _verdicts():
    return {"cifar": judge(_rows(), "val_acc", "max"),
            "toy": judge(_rows({"adam": [0.1], "sgd": [0.2, math.nan]}), "gap", "min")}


def test_verdict_json_has_the_shape_and_is_plain_json():
    verdicts = _verdicts()
    document = verdict_json(verdicts, {"adam": 0.9, "sgd": 0.4})
    back = json.loads(json.dumps(document, allow_nan=False))
    assert back == document and set(back) == {"workloads", "profile_score"}
    cifar = back["workloads"]["cifar"]
    assert set(cifar) == {"score_metric", "direction", "winner", "rows"}
    assert (cifar["score_metric"], cifar["direction"], cifar["winner"]) == ("val_acc", "max", None)
    assert set(cifar["rows"][0]) == {"optimizer", "mean", "sd", "ci_low", "ci_high", "p_adjusted", "seeds"}
    assert cifar["rows"][0]["p_adjusted"] is None and cifar["rows"][0]["seeds"][0] == {"run_id": "adam-0",
                                                                                       "score": 0.91}
    toy = back["workloads"]["toy"]["rows"]
    assert toy[1]["p_adjusted"] is None and toy[1]["seeds"][1]["score"] is None  # untestable, failed seed


def test_verdict_markdown_says_each_part():
    text = verdict_markdown(_verdicts(), {"adam": 0.9, "sgd": 0.4},
                            defaults={"cifar": {"adam": 0.85, "sgd": 0.95}},
                            curves={"cifar": {"adam": [0.8, 0.9], "sgd": [0.85, 0.88]}},
                            budget=2, seeds=4, quick=True, device="cpu")
    for part in ("## cifar (val_acc, higher is better)", "| adam | 0.915 |", "adam and sgd are not told apart",
                 "| adam | 0.85 | 0.915 | +0.065 (better) |", "(worse)", "after 1 trial sgd leads; after 2, adam",
                 "## Benchmark score over workloads", "| adam | 0.9 |", "## What this cannot say", "2 trials",
                 "4 seeds", "Quick budgets", "CPU"):
        assert part in text, part
    assert text.index("| adam | 0.9 |") < text.index("| sgd | 0.4 |")


def test_figures_draw_one_line_per_optimizer():
    curves = {"adam": [0.8, 0.9, 0.92], "sgd": [0.7, 0.85, 0.9], "mine": [0.5, 0.6]}
    figure = budget_figure(curves, "val_acc", "cifar")
    assert len(figure.axes[0].lines) == 3
    taus = [1.0, 1.5, 2.0, 4.0]
    figure = profile_time_figure(taus, profile_curve({"adam": {"a": 1.0, "b": 2.0}, "sgd": {"a": 1.5, "b": 1.0}},
                                                     taus))
    assert len(figure.axes[0].lines) == 2 and figure.axes[0].get_xlim() == (1.0, 4.0)

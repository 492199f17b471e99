"""Tuning-budget curves: the expected best score after k of a study's K trials, drawn at random without
replacement (Dodge et al. 2019, "Show Your Work"), and their one-line reading. Pure: no MLflow, no plotting."""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def finite(scores: Sequence[float | None]) -> list[float]:
    """The scores that are numbers (a failed trial or seed gave None or NaN)."""
    return [float(s) for s in scores if s is not None and not math.isnan(s)]


def check_direction(direction: str) -> None:
    """Refuse a direction other than max or min."""
    if direction not in ("max", "min"):
        raise ValueError(f"direction {direction!r}: choose max or min")


def expected_best(scores: Sequence[float | None], k: int, direction: str) -> float:
    """The expected best of k trials drawn without replacement from the observed ones (failed ones dropped),
    exactly: the i-th in order from the worst is the best of k with chance C(i-1, k-1) / C(K, k)."""
    check_direction(direction)
    values = sorted(finite(scores), reverse=direction == "min")
    total = len(values)
    if not 1 <= k <= total:
        raise ValueError(f"k = {k}: choose 1 to {total}, the trials that gave a score")
    ways = math.comb(total, k)  # int / int: one correctly rounded division per term, even for huge counts
    return float(sum(math.comb(i - 1, k - 1) / ways * v for i, v in enumerate(values, start=1) if i >= k))


def budget_curve(scores: Sequence[float | None], direction: str) -> list[float]:
    """expected_best for k = 1 .. K, K the trials that gave a score."""
    return [expected_best(scores, k, direction) for k in range(1, len(finite(scores)) + 1)]


def budget_reading(curves: Mapping[str, Sequence[float]], direction: str) -> str:
    """One line: who leads after one trial and who after the most trials every optimizer has."""
    check_direction(direction)
    curves = {o: c for o, c in curves.items() if c}
    if not curves:
        return "no trial gave a score"
    k = min(len(c) for c in curves.values())
    pick = max if direction == "max" else min
    first = pick(curves, key=lambda o: curves[o][0])
    last = pick(curves, key=lambda o: curves[o][k - 1])
    if first == last:
        return f"{first} leads after 1 trial and after {k}"
    return f"after 1 trial {first} leads; after {k}, {last}"

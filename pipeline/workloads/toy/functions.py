"""2-D test functions: one formula serves numpy grids (plots) and torch tensors (descent, autograd)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import numpy as np
import torch

from pipeline.core.errors import UsageError

Array = np.ndarray | torch.Tensor
Point = tuple[float, float]


def _lib(x: Array) -> ModuleType:
    """numpy or torch, whichever `x` belongs to: both spell exp, sqrt, cos and pi the same way."""
    return torch if isinstance(x, torch.Tensor) else np


@dataclass(frozen=True)
class Function2D:
    """A test function with its known minima, plotting window and a default start."""

    name: str
    title: str
    formula: Callable[[Array, Array, ModuleType], Array]
    minima: tuple[Point, ...]
    f_min: float
    window: tuple[Point, Point]  # ((x_low, x_high), (y_low, y_high))
    start: Point
    log_scale: bool  # plot f - f_min on a log scale (wide dynamic range)

    def __call__(self, x: Array, y: Array) -> Array:
        """f(x, y), element-wise over arrays or tensors of any shape."""
        return self.formula(x, y, _lib(x))

    def distance_to_min(self, xy: Array) -> Array:
        """Euclidean distance from each (..., 2) point to the nearest global minimum."""
        lib = _lib(xy)
        nearest = None
        for mx, my in self.minima:  # one hypot per minimum: no (..., M, 2) temporary
            gap = lib.hypot(xy[..., 0] - mx, xy[..., 1] - my)
            nearest = gap if nearest is None else lib.minimum(nearest, gap)
        return nearest


def _ackley(x, y, lib):
    # At the cusp r2 = 0, and sqrt's infinite slope there times r2's zero slope is NaN. The inner where keeps
    # sqrt (and its backward) off 0; the outer one gives radius 0 there, so the gradient is the subgradient 0.
    r2 = 0.5 * (x ** 2 + y ** 2)
    safe = lib.where(r2 > 0, r2, 1.0)
    radius = lib.where(r2 > 0, lib.sqrt(safe), 0.0)
    waves = 0.5 * (lib.cos(2 * math.pi * x) + lib.cos(2 * math.pi * y))
    return -20.0 * lib.exp(-0.2 * radius) - lib.exp(waves) + math.e + 20.0


def _rosenbrock(x, y, lib):
    return (1 - x) ** 2 + 100.0 * (y - x ** 2) ** 2


def _rastrigin(x, y, lib):
    return 20.0 + x ** 2 - 10.0 * lib.cos(2 * math.pi * x) + y ** 2 - 10.0 * lib.cos(2 * math.pi * y)


def _beale(x, y, lib):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2


def _himmelblau(x, y, lib):
    return (x ** 2 + y - 11) ** 2 + (x + y ** 2 - 7) ** 2


def _booth(x, y, lib):
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def _quadratic(x, y, lib):
    # Condition number 100: curvature 1 along x, 100 along y, so plain SGD zig-zags across the valley.
    return 0.5 * (x ** 2 + 100.0 * y ** 2)


def _saddle(x, y, lib):
    # A saddle at the origin (x^2 - y^2/2 near it) that is bounded below: minima at (0, +-1), value -1/4.
    return x ** 2 + 0.25 * y ** 4 - 0.5 * y ** 2


# Himmelblau's four global minima (value 0), to the precision the literature gives them.
_HIMMELBLAU_MINIMA = ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126))

FUNCTIONS: dict[str, Function2D] = {
    f.name: f
    for f in (
        Function2D("ackley", "Ackley", _ackley, ((0.0, 0.0),), 0.0, ((-4, 4), (-4, 4)), (-2.0, -2.0), False),
        Function2D("rosenbrock", "Rosenbrock", _rosenbrock, ((1.0, 1.0),), 0.0, ((-2, 2), (-1, 3)),
                   (-1.2, 1.0), True),
        Function2D("rastrigin", "Rastrigin", _rastrigin, ((0.0, 0.0),), 0.0, ((-5.12, 5.12), (-5.12, 5.12)),
                   (2.7, -2.2), False),
        Function2D("beale", "Beale", _beale, ((3.0, 0.5),), 0.0, ((-4.5, 4.5), (-4.5, 4.5)), (1.0, 1.5), True),
        Function2D("himmelblau", "Himmelblau", _himmelblau, _HIMMELBLAU_MINIMA, 0.0, ((-5, 5), (-5, 5)),
                   (0.0, 0.0), True),
        Function2D("booth", "Booth", _booth, ((1.0, 3.0),), 0.0, ((-10, 10), (-10, 10)), (-8.0, 8.0), True),
        Function2D("quadratic", "Ill-conditioned quadratic (condition number 100)", _quadratic, ((0.0, 0.0),),
                   0.0, ((-5, 5), (-2, 2)), (-4.5, 1.5), True),
        Function2D("saddle", "Saddle at the origin, minima at (0, ±1)", _saddle, ((0.0, 1.0), (0.0, -1.0)),
                   -0.25, ((-2, 2), (-2, 2)), (1.5, 0.01), False),
    )
}


def get_function(name: str) -> Function2D:
    """The function called `name`, or a UsageError listing the valid names."""
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise UsageError(f"unknown function {name!r}; choose one of: {', '.join(FUNCTIONS)}") from None

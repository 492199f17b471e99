"""The notebook's hand-written numpy descent, corrected: a reference that torch.optim must reproduce.

The notebook's finite-difference gradient read `(f(x + h) - f(x - h)) / 2 * h`, which divides by 2 and then
*multiplies* by h; the central difference is `(f(x + h) - f(x - h)) / (2 * h)`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Objective = Callable[[float, float], float]

STEP = 1e-6  # finite-difference step: error O(h^2) ~ 1e-12 against float64 round-off ~ 1e-10


def central_difference(f: Objective, point: np.ndarray, h: float = STEP) -> np.ndarray:
    """The gradient of f at a 2-D point by central differences along each axis."""
    grad = np.zeros(2)
    for axis in range(2):
        shift = np.zeros(2)
        shift[axis] = h
        grad[axis] = (f(*(point + shift)) - f(*(point - shift))) / (2 * h)
    return grad


def gradient_descent(f: Objective, start: tuple[float, float], lr: float, steps: int,
                     h: float = STEP) -> np.ndarray:
    """Vanilla gradient descent: x <- x - lr * grad; returns the (steps + 1, 2) path, start included."""
    return momentum_descent(f, start, lr, 0.0, steps, h)


def momentum_descent(f: Objective, start: tuple[float, float], lr: float, beta: float, steps: int,
                     h: float = STEP) -> np.ndarray:
    """Heavy-ball momentum: v <- beta * v - lr * grad; x <- x + v. Returns the (steps + 1, 2) path."""
    path = np.empty((steps + 1, 2))
    path[0] = start
    velocity = np.zeros(2)
    for step in range(steps):
        velocity = beta * velocity - lr * central_difference(f, path[step], h)
        path[step + 1] = path[step] + velocity
    return path

"""The notebook's numpy descent, corrected, follows torch.optim.SGD; the notebook's own formula does not."""
import numpy as np
import pytest
import torch

from pipeline.optim.registry import OptimizerSettings
from pipeline.workloads.toy import reference
from pipeline.workloads.toy.descent import run_descent
from pipeline.workloads.toy.functions import FUNCTIONS

ACKLEY = FUNCTIONS["ackley"]
START, STEPS, LR = (-2.0, -2.0), 200, 0.05


def _ackley(x, y):
    return float(ACKLEY(np.float64(x), np.float64(y)))


def _torch_path(optimizer: str) -> np.ndarray:
    start = torch.tensor([START], dtype=torch.float64)
    traj = run_descent(ACKLEY, OptimizerSettings(optimizer, lr=LR), start, STEPS, tolerance=0.0)
    return traj.positions[:, 0]


def _notebook_gradient(f, point, h=reference.STEP):
    """The notebook's formula, kept here only to prove the test would catch it: `/ 2 * h` multiplies by h."""
    grad = np.zeros(2)
    for axis in range(2):
        shift = np.zeros(2)
        shift[axis] = h
        grad[axis] = (f(*(point + shift)) - f(*(point - shift))) / 2 * h
    return grad


def test_gradient_descent_follows_torch_sgd_for_200_steps():
    ours = reference.gradient_descent(_ackley, START, LR, STEPS)
    torch_path = _torch_path("sgd")
    assert ours.shape == torch_path.shape == (STEPS + 1, 2)
    np.testing.assert_allclose(ours, torch_path, atol=1e-6, rtol=0)
    assert np.abs(ours[-1] - ours[0]).max() > 0.02  # it really moved


def test_momentum_follows_torch_sgd_with_momentum_for_200_steps():
    ours = reference.momentum_descent(_ackley, START, LR, 0.9, STEPS)
    np.testing.assert_allclose(ours, _torch_path("momentum"), atol=1e-6, rtol=0)


def test_central_difference_matches_autograd():
    point = np.array([0.7, -1.3])
    xy = torch.tensor(point, requires_grad=True)
    ACKLEY(xy[0], xy[1]).backward()
    np.testing.assert_allclose(reference.central_difference(_ackley, point), xy.grad.numpy(), atol=1e-8)


def test_the_notebooks_precedence_bug_would_be_caught():
    point = np.array([0.7, -1.3])
    buggy = _notebook_gradient(_ackley, point)
    assert np.abs(buggy - reference.central_difference(_ackley, point)).max() > 0.1
    path = [np.array(START)]
    for _ in range(STEPS):
        path.append(path[-1] - LR * _notebook_gradient(_ackley, path[-1]))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(np.array(path), _torch_path("sgd"), atol=1e-6, rtol=0)

"""Many starts in one tensor with the same maths as one tensor per start: the row-wise twins against the classes
they stand for, SOAP on one vector against SOAP on one vector per start, and grouped descents (one lr per group,
as a study's trials) against one descent per group."""
import numpy as np
import pytest
import torch

from pipeline.optim.registry import OptimizerSettings, build_optimizer
from pipeline.workloads.toy.descent import run_descent, run_descents, starting_points
from pipeline.workloads.toy.functions import FUNCTIONS

STEPS = 300


def _grad(fn, points: torch.Tensor) -> torch.Tensor:
    """The gradient of fn at each row (or at the one point) of `points`."""
    leaf = points.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(leaf[..., 0], leaf[..., 1]).sum(), leaf)
    return grad


def _side_by_side(fn, settings: OptimizerSettings, many: torch.nn.Parameter, build_many) -> tuple:
    """(positions one tensor per start, positions of `many`: rows (n, 2), or one vector of x's then y's) after
    STEPS steps of the same gradients."""
    starts = starting_points(fn, 12, seed=5)
    each = [torch.nn.Parameter(row.clone()) for row in starts]
    original, batched = build_optimizer(settings, each), build_many([many])
    for _ in range(STEPS):
        for param in each:
            param.grad = _grad(fn, param)
        many.grad = _grad(fn, many) if many.dim() == 2 else _grad(fn, many.view(2, -1).T).T.reshape(-1)
        original.step()
        batched.step()
    positions = many.detach() if many.dim() == 2 else many.detach().view(2, -1).T
    return torch.stack([p.detach() for p in each]), positions


@pytest.mark.parametrize("function", ["rosenbrock", "ackley", "himmelblau"])
@pytest.mark.parametrize("name,hparams", [("adafactor", {}), ("adafactor", {"weight_decay": 0.1}), ("shampoo", {}),
                                          ("shampoo", {"momentum": 0.9, "weight_decay": 0.01})])
def test_a_row_wise_twin_updates_each_row_as_the_original_updates_a_vector(function, name, hparams):
    fn, settings = FUNCTIONS[function], OptimizerSettings(name, lr=0.01, **hparams)
    rows = torch.nn.Parameter(starting_points(fn, 12, seed=5).clone())
    each, twin = _side_by_side(fn, settings, rows, lambda params: build_optimizer(settings, params, rows=True))
    # Same operations, same roundings (fused multiply-adds where the original's small products have them). Shampoo's
    # SVD of one 2 x 2 matrix and of a batch take different LAPACK paths on some CPUs (bit-equal on the host this
    # was written on; 1.2e-6 apart after 300 steps on an AMD EPYC). A momentum of 0.89 for 0.9 is 3e-2 off or more.
    tolerance = 1e-12 if name == "adafactor" else 1e-5
    np.testing.assert_allclose(twin.numpy(), each.numpy(), rtol=tolerance, atol=1e-300)


def test_soap_on_one_vector_is_soap_on_each_start():
    """SOAP preconditions matrices only (precondition_1d=False): on vectors it is Adam in the identity basis,
    coordinate by coordinate, so one vector of every start's x and y does each start's maths."""
    fn, settings = FUNCTIONS["rosenbrock"], OptimizerSettings("soap", lr=0.003)
    vector = torch.nn.Parameter(starting_points(fn, 12, seed=5).T.contiguous().reshape(-1))
    each, flat = _side_by_side(fn, settings, vector, lambda params: build_optimizer(settings, params))
    np.testing.assert_allclose(flat.numpy(), each.numpy(), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "sfadamw", "adafactor", "soap", "shampoo", "torch:Rprop"])
def test_grouped_descents_equal_one_descent_per_group(optimizer):
    """A study's trials at once: one param group per lr; each group's record, early stop included, is the one
    it would have had alone (the lr that converges first is trimmed where its own descent stopped)."""
    fn = FUNCTIONS["booth"]
    lrs, starts = (0.05, 0.01, 0.002), [starting_points(fn, 4, seed=seed) for seed in (1, 2, 3)]
    settings = [OptimizerSettings(optimizer, lr=lr) for lr in lrs]
    together = run_descents(fn, settings, starts, 400, tolerance=1e-6)
    for group, alone in zip(together, (run_descent(fn, s, x, 400, 1e-6) for s, x in zip(settings, starts))):
        assert group.positions.shape == alone.positions.shape
        np.testing.assert_allclose(group.positions, alone.positions, rtol=1e-12, atol=1e-300)
        np.testing.assert_array_equal(group.converged_step, alone.converged_step)
        np.testing.assert_array_equal(group.diverged_step, alone.diverged_step)


def test_one_descent_takes_one_optimizer():
    fn = FUNCTIONS["booth"]
    with pytest.raises(ValueError, match="one descent takes one optimizer"):
        run_descents(fn, [OptimizerSettings("adam"), OptimizerSettings("sgd")], [starting_points(fn, 2, 0)] * 2, 5, 0.0)


@pytest.mark.parametrize("optimizer", ["adam", "shampoo", "torch:Rprop"])
def test_pairs_of_equal_settings_descend_as_one_group_and_each_keeps_its_own_record(optimizer):
    """A tune's seed batch: the same setting on several seeds' starts (and one that differs between them) is one
    group per distinct setting; each pair's record, early stop included, is still the one it had alone."""
    fn = FUNCTIONS["booth"]
    settings = [OptimizerSettings(optimizer, lr=lr) for lr in (0.05, 0.002, 0.05, 0.05)]
    starts = [starting_points(fn, count, seed=seed) for count, seed in ((3, 1), (2, 2), (1, 3), (4, 4))]
    together = run_descents(fn, settings, starts, 400, tolerance=1e-6)
    for group, alone in zip(together, (run_descent(fn, s, x, 400, 1e-6) for s, x in zip(settings, starts))):
        assert group.positions.shape == alone.positions.shape
        np.testing.assert_array_equal(group.positions, alone.positions)
        np.testing.assert_array_equal(group.losses, alone.losses)
        np.testing.assert_array_equal(group.converged_step, alone.converged_step)
        np.testing.assert_array_equal(group.diverged_step, alone.diverged_step)

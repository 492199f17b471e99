"""Batched descent: equals single runs, converges where it should, stops early, flags divergence."""
import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from pipeline.optim.registry import OptimizerSettings, optimizer_names
from pipeline.workloads.toy.descent import _outcome_steps, run_descent, starting_points
from pipeline.workloads.toy.functions import FUNCTIONS

# (function, optimizer, lr, steps): settings under which each optimizer must reach the global minimum.
CONVERGES = [
    ("booth", "sgd", 0.05, 500), ("booth", "momentum", 0.02, 500), ("booth", "nesterov", 0.02, 500),
    ("booth", "adam", 0.5, 2000), ("booth", "adamw", 0.5, 2000), ("booth", "nadam", 0.5, 2000),
    ("booth", "radam", 0.5, 3000), ("booth", "adamax", 0.5, 2000), ("booth", "rmsprop", 0.05, 3000),
    ("booth", "adagrad", 2.0, 3000), ("booth", "adadelta", 50.0, 3000), ("booth", "asgd", 0.05, 500),
    ("quadratic", "momentum", 0.01, 2000), ("quadratic", "adam", 0.1, 3000),
    ("rosenbrock", "nesterov", 0.001, 5000), ("rosenbrock", "adam", 0.02, 5000),
    ("himmelblau", "adam", 0.05, 2000), ("himmelblau", "momentum", 0.002, 2000),
    ("beale", "adam", 0.02, 5000), ("saddle", "momentum", 0.05, 2000), ("ackley", "adam", 0.01, 3000),
    ("booth", "nadamw", 0.05, 2000), ("booth", "adafactor", 0.01, 2000), ("booth", "lion", 0.01, 2000),
    ("quadratic", "lion", 0.01, 2000), ("booth", "sfadamw", 0.05, 3000), ("booth", "soap", 0.01, 3000),
    ("quadratic", "soap", 0.01, 2000), ("booth", "shampoo", 0.5, 2000), ("quadratic", "shampoo", 0.1, 3000),
]
# Ackley has a cusp at its minimum, so a fixed step hovers near it: ask for 1e-2, from inside its basin.
TOLERANCE = {"ackley": 1e-2}
START = {"ackley": (0.4, 0.3)}


def _one(name: str, start, optimizer: str, lr: float, steps: int, tolerance: float = 1e-8, **hparams):
    fn = FUNCTIONS[name]
    return run_descent(fn, OptimizerSettings(optimizer, lr=lr, **hparams), torch.tensor([start], dtype=torch.float64),
                       steps, tolerance)


def test_the_grid_covers_every_optimizer_that_runs_on_a_point():
    assert {opt for _, opt, _, _ in CONVERGES} == set(optimizer_names()) - {"muon"}


@pytest.mark.parametrize("name,optimizer,lr,steps", CONVERGES)
def test_reaches_the_global_minimum(name, optimizer, lr, steps):
    fn = FUNCTIONS[name]
    # Weight decay moves the fixed point off the minimum (AdamW, NAdamW, SOAP decay by default); turn it off.
    extra = {"weight_decay": 0.0} if "weight_decay" in OptimizerSettings(optimizer).spec.tunable else {}
    traj = _one(name, START.get(name, fn.start), optimizer, lr, steps, TOLERANCE.get(name, 1e-6), **extra)
    assert traj.converged_step[0] >= 0, f"gap {traj.losses[-1, 0] - fn.f_min:.3g} after {steps} steps"
    assert traj.distances[-1, 0] < 0.05
    assert traj.steps_taken == traj.converged_step[0]  # it stopped there


# adam is element-wise (one tensor holds every point); the others scale or precondition a whole tensor, so each
# point is a tensor of its own (descent._Points): either way, batched points must be independent runs.
@pytest.mark.parametrize("optimizer", ["adam", "adafactor", "soap", "shampoo", "torch:Rprop"])
def test_batched_points_equal_separate_runs(optimizer):
    fn = FUNCTIONS["himmelblau"]
    starts = starting_points(fn, 5, seed=3)
    batched = run_descent(fn, OptimizerSettings(optimizer, lr=0.1), starts, 50, tolerance=0.0)
    for index in range(5):
        single = run_descent(fn, OptimizerSettings(optimizer, lr=0.1), starts[index: index + 1], 50, tolerance=0.0)
        np.testing.assert_allclose(batched.positions[:, index], single.positions[:, 0], rtol=1e-12)
        np.testing.assert_allclose(batched.losses[:, index], single.losses[:, 0], rtol=1e-12)


def test_records_loss_gradient_and_distance_consistently():
    fn = FUNCTIONS["rosenbrock"]
    traj = _one("rosenbrock", fn.start, "adam", 0.01, 30, tolerance=0.0)
    assert traj.positions.shape == (31, 1, 2) and traj.losses.shape == (31, 1)
    xy = traj.positions[:, 0]
    np.testing.assert_allclose(traj.losses[:, 0], fn(xy[:, 0], xy[:, 1]), rtol=1e-12)
    np.testing.assert_allclose(traj.distances[:, 0], np.hypot(xy[:, 0] - 1, xy[:, 1] - 1), rtol=1e-12)
    grad0 = np.array([-2 * (1 - xy[0, 0]) - 400 * xy[0, 0] * (xy[0, 1] - xy[0, 0] ** 2),
                      200 * (xy[0, 1] - xy[0, 0] ** 2)])
    assert traj.grad_norms[0, 0] == pytest.approx(np.linalg.norm(grad0))


def test_divergence_is_flagged_and_stops_the_descent():
    traj = _one("rosenbrock", (-1.2, 1.0), "sgd", 10.0, 500)
    assert traj.diverged_step[0] >= 1 and traj.converged_step[0] == -1
    assert traj.steps_taken == traj.diverged_step[0] < 20
    assert np.isfinite(traj.losses[: traj.diverged_step[0], 0]).all()


def test_random_starts_are_seeded_and_inside_the_window():
    fn = FUNCTIONS["booth"]
    first, again, other = (starting_points(fn, 100, seed) for seed in (1, 1, 2))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert first[:, 0].min() >= -10 and first[:, 1].max() <= 10


@pytest.mark.parametrize("name,optimizer", [("ackley", "sgd"), ("rosenbrock", "adam")])
def test_the_compiled_step_follows_the_same_paths(name, optimizer):
    fn = FUNCTIONS[name]
    starts = starting_points(fn, 64, seed=5)
    eager = run_descent(fn, OptimizerSettings(optimizer, lr=1e-3), starts, 60, tolerance=1e-3)
    graphs = counters["stats"]["unique_graphs"]
    compiled = run_descent(fn, OptimizerSettings(optimizer, lr=1e-3), starts, 60, tolerance=1e-3, compiled=True)
    assert counters["stats"]["unique_graphs"] > graphs  # it really compiled (no silent eager fallback)
    assert compiled.steps_taken == eager.steps_taken
    np.testing.assert_allclose(compiled.positions, eager.positions, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(compiled.grad_norms, eager.grad_norms, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(compiled.converged_step, eager.converged_step)


MINIMA = [(name, point) for name, fn in FUNCTIONS.items() for point in fn.minima]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop"])
@pytest.mark.parametrize("name,point", MINIMA)
def test_a_start_at_a_minimum_converges_at_step_0(name, point, optimizer):
    traj = _one(name, point, optimizer, 0.01, 100)  # tolerance 1e-8: Himmelblau's 6-decimal minima are ~1e-11 off
    assert (traj.converged_step[0], traj.diverged_step[0], traj.steps_taken) == (0, -1, 0)
    assert np.isfinite(traj.losses).all() and np.isfinite(traj.grad_norms).all()


@pytest.mark.parametrize("compiled", [False, True])
def test_starts_at_and_next_to_the_ackley_cusp_stay_finite(compiled):
    fn = FUNCTIONS["ackley"]
    starts = torch.tensor([[0.0, 0.0], [1e-160, 1e-160], [1e-300, 0.0]], dtype=torch.float64)
    # A negative tolerance never converges, so every step runs and is checked.
    traj = run_descent(fn, OptimizerSettings("adam", lr=0.01), starts, 50, tolerance=-1.0, compiled=compiled)
    assert traj.steps_taken == 50 and (traj.diverged_step == -1).all()
    assert np.isfinite(traj.losses).all() and np.isfinite(traj.positions).all()
    assert (traj.positions[:, 0] == 0).all()  # the subgradient 0 leaves the minimum in place
    assert (traj.losses < 0.1).all()  # Adam's steps of about lr keep the others near the minimum


def test_converged_and_diverged_are_exclusive():
    # Point 0 converges at step 2 and goes NaN at 4; point 1 goes inf at 1 and later dips under the tolerance.
    losses = torch.tensor([[5.0, 5.0], [5.0, float("inf")], [0.0, 5.0], [0.0, 5.0], [float("nan"), 0.0]])
    converged, diverged = _outcome_steps(torch.isfinite(losses), losses <= 1e-6)
    assert converged.tolist() == [2, -1] and diverged.tolist() == [-1, 1]
    never = torch.full((3, 1), 5.0)
    assert [a.tolist() for a in _outcome_steps(torch.isfinite(never), never <= 0)] == [[-1], [-1]]


def test_a_blow_up_after_convergence_is_not_divergence():
    # Within the tolerance at the start, then SGD at lr 10 overflows at step 4, before the first check at 7.
    converged = _one("rosenbrock", (1.05, 1.0), "sgd", 10.0, 500, tolerance=2.0)
    assert (converged.converged_step[0], converged.diverged_step[0], converged.steps_taken) == (0, -1, 0)
    fn = FUNCTIONS["rosenbrock"]
    both = run_descent(fn, OptimizerSettings("sgd", lr=10.0), torch.tensor([[1.05, 1.0], [-1.2, 1.0]],
                                                                         dtype=torch.float64), 500, 2.0)
    assert both.converged_step.tolist() == [0, -1] and both.diverged_step.tolist() == [-1, 4]
    assert both.steps_taken == 4  # trimmed at the last outcome, the other point's divergence

"""Test functions: values at the known minima, hand-derived gradients against autograd, distances."""
import math

import numpy as np
import pytest
import torch

from pipeline.core.errors import UsageError
from pipeline.workloads.toy.functions import FUNCTIONS, get_function

TAU = 2 * math.pi


def _ackley_grad(x, y):
    r = math.sqrt(0.5 * (x * x + y * y))
    radial = 20 * 0.2 * math.exp(-0.2 * r) * 0.5 / r  # d/dx of -20 exp(-0.2 r) is this times x
    wave = math.exp(0.5 * (math.cos(TAU * x) + math.cos(TAU * y))) * 0.5 * TAU  # times sin(2 pi x)
    return radial * x + wave * math.sin(TAU * x), radial * y + wave * math.sin(TAU * y)


def _beale_grad(x, y):
    terms = [(1.5, 1), (2.25, 2), (2.625, 3)]
    gx = sum(2 * (c - x + x * y ** k) * (y ** k - 1) for c, k in terms)
    gy = sum(2 * (c - x + x * y ** k) * (k * x * y ** (k - 1)) for c, k in terms)
    return gx, gy


# Gradients derived by hand, to check the formulas (and autograd through them) independently.
ANALYTIC = {
    "ackley": _ackley_grad,
    "rosenbrock": lambda x, y: (-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)),
    "rastrigin": lambda x, y: (2 * x + 10 * TAU * math.sin(TAU * x), 2 * y + 10 * TAU * math.sin(TAU * y)),
    "beale": _beale_grad,
    "himmelblau": lambda x, y: (4 * x * (x * x + y - 11) + 2 * (x + y * y - 7),
                                2 * (x * x + y - 11) + 4 * y * (x + y * y - 7)),
    "booth": lambda x, y: (2 * (x + 2 * y - 7) + 4 * (2 * x + y - 5), 4 * (x + 2 * y - 7) + 2 * (2 * x + y - 5)),
    "quadratic": lambda x, y: (x, 100 * y),
    "saddle": lambda x, y: (2 * x, y ** 3 - y),
}
POINTS = [(-2.0, -2.0), (0.3, -1.7), (1.25, 0.5), (-0.8, 2.2)]


def test_every_function_has_a_gradient_check():
    assert set(ANALYTIC) == set(FUNCTIONS)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_value_at_every_known_minimum(name):
    fn = FUNCTIONS[name]
    for x, y in fn.minima:
        assert float(fn(np.float64(x), np.float64(y))) == pytest.approx(fn.f_min, abs=1e-9)
        assert float(fn(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))) == \
            pytest.approx(fn.f_min, abs=1e-9)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_minimum_is_lowest_on_a_dense_grid(name):
    fn = FUNCTIONS[name]
    (x0, x1), (y0, y1) = fn.window
    xs, ys = np.meshgrid(np.linspace(x0, x1, 401), np.linspace(y0, y1, 401))
    assert fn(xs, ys).min() >= fn.f_min - 1e-9


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("point", POINTS)
def test_autograd_matches_hand_derived_gradient(name, point):
    fn = FUNCTIONS[name]
    xy = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    fn(xy[0], xy[1]).backward()
    torch.testing.assert_close(xy.grad, torch.tensor(ANALYTIC[name](*point), dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_numpy_and_torch_agree_on_a_grid(name):
    fn = FUNCTIONS[name]
    grid = np.random.default_rng(0).uniform(-3, 3, size=(50, 2))
    expected = fn(grid[:, 0], grid[:, 1])
    points = torch.from_numpy(grid)
    got = fn(points[:, 0], points[:, 1]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_known_values_away_from_the_minimum():
    assert float(FUNCTIONS["rosenbrock"](np.float64(0), np.float64(0))) == 1.0
    assert float(FUNCTIONS["booth"](np.float64(0), np.float64(0))) == 74.0
    assert float(FUNCTIONS["rastrigin"](np.float64(1), np.float64(1))) == pytest.approx(2.0)
    assert float(FUNCTIONS["ackley"](np.float64(1), np.float64(1))) == pytest.approx(3.6253849384403627)
    assert float(FUNCTIONS["saddle"](np.float64(0), np.float64(0))) == 0.0  # the saddle point


def test_saddle_is_a_saddle_at_the_origin():
    fn = FUNCTIONS["saddle"]
    eps = np.float64(1e-3)
    assert fn(eps, np.float64(0)) > 0 > fn(np.float64(0), eps)  # up along x, down along y


def test_distance_to_nearest_minimum():
    fn = FUNCTIONS["himmelblau"]
    points = torch.tensor([[3.0, 2.0], [3.0, 3.0], [0.0, 0.0]], dtype=torch.float64)
    dist = fn.distance_to_min(points)
    assert dist[0] == 0 and dist[1] == pytest.approx(1.0)
    assert dist[2] == pytest.approx(math.hypot(3, 2))
    np.testing.assert_allclose(fn.distance_to_min(points.numpy()), dist.numpy())


def test_unknown_function_lists_valid_names():
    with pytest.raises(UsageError, match="unknown function 'x'; choose one of: ackley, rosenbrock"):
        get_function("x")


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_default_start_lies_in_the_window_and_away_from_the_minimum(name):
    fn = FUNCTIONS[name]
    (x0, x1), (y0, y1) = fn.window
    assert x0 <= fn.start[0] <= x1 and y0 <= fn.start[1] <= y1
    assert float(fn.distance_to_min(np.asarray(fn.start))) > 0.5


MINIMA = [(name, point) for name, fn in FUNCTIONS.items() for point in fn.minima]
CUSPS = {"ackley"}  # not differentiable at the minimum: the formula gives the subgradient 0 there


def _torch_grad(name: str, point) -> torch.Tensor:
    xy = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    FUNCTIONS[name](xy[0], xy[1]).backward()
    return xy.grad


@pytest.mark.parametrize("name,point", MINIMA)
def test_gradient_at_every_known_minimum_is_finite_and_zero(name, point):
    grad = _torch_grad(name, point)
    assert torch.isfinite(grad).all(), grad
    if name in CUSPS:
        assert grad.tolist() == [0.0, 0.0]
    else:  # abs 1e-4: Himmelblau's minima are only known to 6 decimals
        torch.testing.assert_close(grad, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("point", [(1e-300, 0.0), (1e-160, 1e-160), (-1e-155, 0.0), (5e-324, -5e-324)])
def test_ackley_gradient_is_finite_next_to_its_cusp(point):
    grad = _torch_grad("ackley", point)
    # The radial slope is at most 2 sqrt(2); 3 leaves room for the rounding of a subnormal r2.
    assert torch.isfinite(grad).all() and grad.norm() <= 3, grad


def test_ackley_cusp_through_torch_func_and_compile():
    fn = FUNCTIONS["ackley"]
    grad = torch.compile(torch.func.grad(lambda p: fn(p[0], p[1]).sum()), dynamic=False)
    points = torch.tensor([[0.0, 1e-160, 1e-300, 1.0], [0.0, 1e-160, 0.0, 1.0]], dtype=torch.float64)
    got = grad(points)
    assert torch.isfinite(got).all() and got[:, 0].tolist() == [0.0, 0.0]
    torch.testing.assert_close(got[:, 3], torch.tensor(ANALYTIC["ackley"](1.0, 1.0), dtype=torch.float64))


def test_ackley_cusp_with_numpy_scalars_and_arrays():
    fn = FUNCTIONS["ackley"]
    assert float(fn(np.float64(0), np.float64(0))) == pytest.approx(0.0, abs=1e-12)
    assert float(fn(0.0, 0.0)) == pytest.approx(0.0, abs=1e-12)  # plain floats go through numpy too
    xs = np.array([[0.0, 1e-160], [1.0, -2.0]])
    with np.errstate(divide="raise", invalid="raise"):  # no warning from either branch of the wheres
        values = fn(xs, xs.T)
    assert values.shape == (2, 2) and np.isfinite(values).all()
    assert values[0, 0] == pytest.approx(0.0, abs=1e-12)

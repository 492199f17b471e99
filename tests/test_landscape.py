"""Loss landscapes of the real network (issue 17): the projection is exact where it can be, the grid's loss at the
start is the model's loss there, every path of a sweep starts at the same point, and compare / cifar log both
plots and both tables."""
import csv
import io

import mlflow
import numpy as np
import pytest
import torch
from conftest import SHARED_SUBSET, artifact_files, cli, new_experiment, runs_of

from pipeline.landscape.loss_grid import grid_figures, loss_at
from pipeline.landscape.plane import RECORD_PER_EPOCH, Recorder, flat, grid_axes, pca_plane, project, random_plane
from pipeline.training.loop import Precision, evaluate, recompute_batchnorm
from pipeline.workloads.cifar.data import CifarLoader, load_cifar10
from pipeline.workloads.cifar.models import build_model

needs_subset = pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")
ARTIFACTS = {"plots/landscape_contour.png", "plots/landscape_surface.png", "landscape.csv", "landscape_paths.csv"}
CPU = Precision(torch.device("cpu"))


def _planar_paths(dims=3000, seed=0):
    """Two paths whose every point is a combination of the same two (non-orthogonal) vectors."""
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.randn(dims, generator=gen), torch.randn(dims, generator=gen)
    coefficients = torch.randn(12, 2, generator=gen)
    coefficients[0] = coefficients[6] = 0  # both paths start at the start
    return [a * u + b * v for a, b in coefficients], coefficients


def test_a_path_that_lies_in_a_plane_is_recovered_exactly():
    deltas, _ = _planar_paths()
    plane = pca_plane([d.half().float() for d in deltas])
    torch.testing.assert_close(plane.directions @ plane.directions.T, torch.eye(2), rtol=0, atol=1e-5)
    coords = project(plane, deltas)
    rebuilt = coords @ plane.directions
    torch.testing.assert_close(rebuilt, torch.stack(deltas), rtol=1e-4, atol=1e-3)  # nothing lies off the plane
    assert plane.explained[0] + plane.explained[1] == pytest.approx(1.0, abs=1e-6)
    assert plane.explained[0] >= plane.explained[1] > 0
    torch.testing.assert_close(coords[[0, 6]], torch.zeros(2, 2), rtol=0, atol=1e-6)  # both start at (0, 0)


def test_a_path_along_one_line_gets_an_orthogonal_second_direction():
    line = torch.randn(500)
    plane = pca_plane([0 * line, 0.5 * line, 2 * line])
    assert plane.explained == pytest.approx((1.0, 0.0), abs=1e-9)
    assert abs(float(plane.directions[0] @ plane.directions[1])) < 1e-5
    torch.testing.assert_close(project(plane, [2 * line])[0], torch.tensor([2 * float(line.norm()), 0.0]),
                               rtol=1e-5, atol=1e-4)


def test_random_directions_are_filter_normalised_and_leave_biases_and_batchnorm_alone():
    torch.manual_seed(0)
    params = list(build_model("tiny_cnn").parameters())
    plane = random_plane(params, seed=3)
    assert plane.explained is None and plane.directions.shape == (2, sum(p.numel() for p in params))
    for row in plane.directions:
        parts = torch.split(row, [p.numel() for p in params])
        for part, weights in zip(parts, params):
            if weights.ndim == 1:
                assert not part.any()  # biases, BatchNorm scale and shift: no move
            else:
                torch.testing.assert_close(part.view_as(weights).flatten(1).norm(dim=1),
                                           weights.detach().flatten(1).norm(dim=1), rtol=1e-5, atol=1e-6)
    deltas = [plane.directions.T @ torch.tensor([0.3, -0.7])]  # a point of the (non-orthogonal) plane
    torch.testing.assert_close(project(plane, deltas)[0], torch.tensor([0.3, -0.7]), rtol=1e-4, atol=1e-5)


def test_a_recorder_keeps_evenly_spaced_points_of_every_epoch_and_stops_at_a_non_finite_one():
    weight = torch.nn.Parameter(torch.zeros(3))
    recorder = Recorder([weight], steps_per_epoch=8)
    for step in range(1, 17):
        with torch.no_grad():
            weight += 1.0
        recorder()
    assert recorder.steps == [0, 2, 4, 6, 8, 10, 12, 14, 16] and len(recorder.deltas) == 1 + 2 * RECORD_PER_EPOCH
    assert recorder.deltas[-1].dtype == torch.float16 and recorder.deltas[-1].tolist() == [16.0] * 3
    with torch.no_grad():
        weight.fill_(float("nan"))
    recorder(), recorder()
    assert recorder.broken and len(recorder.deltas) == 9
    resumed = Recorder([torch.nn.Parameter(torch.zeros(1))], steps_per_epoch=8)
    resumed.resumed(3)
    resumed(), resumed()
    assert resumed.steps == [0, 26]


def test_the_grid_axes_cover_every_point_with_a_margin():
    xs, ys = grid_axes(torch.tensor([[0.0, 0.0], [2.0, -1.0]]), 9)
    assert len(xs) == len(ys) == 9 and xs[0] < 0 < 2 < xs[-1] and ys[0] < -1 < 0 < ys[-1]
    xs, _ = grid_axes(torch.zeros(1, 2), 5, least=1.0)
    assert float(xs[0]) == -1.0 and float(xs[-1]) == 1.0


@needs_subset
def test_the_grid_loss_at_the_start_is_the_models_loss_at_those_weights():
    arrays = load_cifar10(SHARED_SUBSET, download=False, train_limit=64, val_limit=2)
    images = CifarLoader(arrays.train_x, arrays.train_y, 32, train=False).sample(64)
    torch.manual_seed(0)
    model = build_model("tiny_cnn")
    start = flat(model.parameters())
    plane = random_plane(list(model.parameters()), seed=1)
    figures = grid_figures(build_model("tiny_cnn"), start, plane, (torch.tensor([-0.5, 0.0, 0.5]),
                                                                    torch.tensor([0.0, 0.5])), images, CPU)
    recompute_batchnorm(model, images, CPU)  # the start, its statistics measured on the same images
    expected, _ = evaluate(model, images, CPU, show_progress=False)
    assert float(figures.loss[0, 1]) == pytest.approx(expected["val_loss"], rel=1e-6)
    assert float(figures.acc[0, 1]) == expected["val_acc"]
    assert loss_at(model, start, images, CPU)[0] == pytest.approx(expected["val_loss"], rel=1e-6)
    assert len({round(float(v), 6) for v in figures.loss.flatten()}) > 1  # the plane is not flat


def _table(run_id: str, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/{name}"))))


@needs_subset
def test_a_compare_with_landscape_draws_every_path_from_one_start_on_the_parent(tracking):
    """Issue 17's line (on a smaller grid: the default 21 x 21 takes about a minute here)."""
    experiment, grid = new_experiment(), 7
    done = cli("compare", "--task", "cifar", "--optimizers", "momentum,adam,adadelta", "--landscape", "true",
               "--landscape_grid", str(grid), "--landscape_images", "128", "--model", "tiny_cnn", "--data_dir",
               str(SHARED_SUBSET), "--train_limit", "256", "--val_limit", "128", "--epochs", "2", "--log_model",
               "false", "--system_metrics", "false", "--experiment", experiment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "landscape: 49 grid points and 27 path points on 128 images" in done.stdout
    (parent,) = [r for r in runs_of(tracking, experiment) if r.data.tags.get("task") == "compare"]
    assert ARTIFACTS <= artifact_files(tracking, parent.info.run_id)
    cells = _table(parent.info.run_id, "landscape.csv")
    assert len(cells) == grid * grid and all(np.isfinite(float(c["loss"])) for c in cells)
    paths = _table(parent.info.run_id, "landscape_paths.csv")
    by_optimizer = {name: [p for p in paths if p["optimizer"] == name] for name in ("momentum", "adam", "adadelta")}
    for name, points in by_optimizer.items():
        assert [int(p["step"]) for p in points] == [0, 2, 4, 6, 8, 10, 12, 14, 16], name  # 8 steps an epoch
        assert (float(points[0]["x"]), float(points[0]["y"])) == (0.0, 0.0), name  # one shared start
    starts = {p["loss"] for p in paths if p["step"] == "0"}
    assert len(starts) == 1  # the same weights, the same loss
    assert "landscape: every child trains again" in done.stdout


@needs_subset
def test_a_single_cifar_run_draws_its_own_path(tracking):
    experiment = new_experiment()
    done = cli("cifar", "--optimizer", "adam", "--landscape", "true", "--landscape_grid", "5",
               "--landscape_directions", "random", "--landscape_images", "64", "--model", "tiny_cnn", "--data_dir",
               str(SHARED_SUBSET), "--train_limit", "128", "--val_limit", "64", "--epochs", "1", "--log_model",
               "false", "--system_metrics", "false", "--experiment", experiment)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_of(tracking, experiment)
    assert ARTIFACTS <= artifact_files(tracking, run.info.run_id)
    assert {p["optimizer"] for p in _table(run.info.run_id, "landscape_paths.csv")} == {"adam"}
    xs = sorted({float(c["x"]) for c in _table(run.info.run_id, "landscape.csv")})
    assert len(xs) == 5 and xs[0] <= -1.0 and xs[-1] >= 1.0  # random directions: at least [-1, 1]


@pytest.mark.parametrize("argv,message", [
    (("--landscape_grid", "2"), "error: landscape_grid: expected an integer in [3, 201]"),
    (("--landscape_directions", "svd"), "error: landscape_directions: expected pca or random"),
    (("--landscape_images", "1"), "error: landscape_images: expected an integer in [2, 50000]"),
    (("--landscape", "true", "--nproc", "2"), "error: landscape: expected false or unset with nproc > 1"),
])
def test_bad_landscape_params_are_one_line_and_exit_2(tracking, argv, message):
    done = cli("cifar", *argv)
    assert done.returncode == 2 and done.stderr.startswith(message), done.stderr

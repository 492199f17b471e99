"""End to end: the `toy` entry point against a real SQLite tracking store, via the CLI and `mlflow run`.

One test goes through `mlflow run` (a real `python -m pipeline toy` process, as a user starts it); the others call
the same command line in-process (conftest.cli), which skips seconds of imports per call. test_server.py runs the
toy command in real processes too."""
import csv
import io
import os
import time

import mlflow
import numpy as np
import pytest
from conftest import artifact_files
from conftest import cli as run_in_process
from conftest import metric_history, mlflow_run, new_experiment, runs_of

from pipeline import cli
from pipeline.config.tasks import build_config
from pipeline.toy import main as toy_main

PLOTS = {"plots/contour.png", "plots/surface.png", "plots/loss.png"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cli_run_logs_params_metrics_tags_and_artifacts(tracking):
    experiment = new_experiment()
    done = run_in_process("toy", "--optimizer", "nesterov", "--function", "rosenbrock", "--lr", "0.001",
                          "--steps", "3000", "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    assert "nesterov on rosenbrock: converged at step" in done.stdout
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optimizer"] == "nesterov" and params["function"] == "rosenbrock"
    assert (params["lr"], params["momentum"], params["nesterov"], params["start"]) == ("0.001", "0.9", "True",
                                                                                         "-1.2,1")
    tags = run.data.tags
    assert tags["task"] == "toy" and tags["converged"] == "true" and tags["diverged"] == "false"
    last = int(tags["converged_step"])
    for key in ("loss", "grad_norm", "distance_to_min"):
        steps, values = metric_history(tracking, run.info.run_id, key)
        assert steps == list(range(last + 1)), key
        assert np.isfinite(values).all()
    _, loss = metric_history(tracking, run.info.run_id, "loss")
    assert loss[-1] <= 1e-6 < loss[0]
    assert artifact_files(tracking, run.info.run_id) == PLOTS | {"trajectory.csv", "config.json"}
    _check_artifact_contents(run, loss)


def _check_artifact_contents(run, loss: np.ndarray) -> None:
    import mlflow

    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id)
    rows = list(csv.DictReader(io.open(os.path.join(folder, "trajectory.csv"))))
    assert list(rows[0]) == ["step", "x", "y", "loss", "grad_norm", "distance_to_min"]
    assert (float(rows[0]["x"]), float(rows[0]["y"])) == (-1.2, 1.0)
    np.testing.assert_allclose([float(r["loss"]) for r in rows], loss, rtol=1e-12)
    for plot in PLOTS:
        data = open(os.path.join(folder, plot), "rb").read()
        assert data.startswith(PNG_MAGIC) and len(data) > 20_000, plot


def test_divergence_ends_the_run_failed_with_a_tag_and_exit_3(tracking):
    experiment = new_experiment()
    done = run_in_process("toy", "--optimizer", "sgd", "--function", "rosenbrock", "--lr", "10",
                          "--experiment", experiment)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rosenbrock diverged at step" in errors[0] and "smaller lr" in errors[0]
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FAILED"
    assert run.data.tags["diverged"] == "true" and int(run.data.tags["diverged_step"]) > 0
    assert artifact_files(tracking, run.info.run_id) >= PLOTS


def test_a_start_at_the_ackley_cusp_converges_at_step_0(tracking, capsys):
    # Ackley's gradient at its minimum used to be NaN: the run was tagged converged and diverged, exit 3.
    experiment = new_experiment()
    assert cli.main(["toy", "--start", "0,0", "--function", "ackley", "--optimizer", "adam",
                     "--experiment", experiment]) == 0
    assert "adam on ackley: converged at step 0" in capsys.readouterr().out
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["converged"], tags["diverged"], tags["converged_step"]) == ("true", "false", "0")
    assert "diverged_step" not in tags
    steps, loss = metric_history(tracking, run.info.run_id, "loss")
    assert steps == [0] and np.isfinite(loss).all()


@pytest.mark.parametrize("args", [["--optimizer", "nope"], ["--lr", "-1"], ["--steps", "0"],
                                  ["--function", "x"], ["--start", "1"], ["--bogus", "1"], ["--lr"]])
def test_bad_input_is_one_line_exit_2_and_no_run(tracking, args):
    experiment = new_experiment()
    began = time.monotonic()
    done = run_in_process("toy", *args, "--experiment", experiment)
    assert done.returncode == 2
    assert time.monotonic() - began < 30  # generous: this only guards against hangs, not speed
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    assert tracking.get_experiment_by_name(experiment) is None


def test_metrics_go_out_in_batches_not_one_call_per_value(tracking, monkeypatch):
    # Spy on what reaches MLflow itself (the spy still logs), not on our own wrapper's return value.
    sent = []  # (run id, number of metric values) per log_batch call that carried metrics
    original = mlflow.tracking.client.MlflowClient.log_batch

    def spy(self, run_id, metrics=(), *args, **kwargs):
        if metrics:
            sent.append((run_id, len(metrics)))
        return original(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(mlflow.tracking.client.MlflowClient, "log_batch", spy)
    experiment = new_experiment()
    config = build_config("toy", {"optimizer": "adam", "steps": "500", "tolerance": "0",  # no early stop
                                  "experiment": experiment})
    assert toy_main(config) == 0
    (run,) = runs_of(tracking, experiment)
    # 3 metrics x 501 steps (0..500) = 1,503 values in 2 calls of at most 1,000 (MLflow's limit per call)
    assert sent == [(run.info.run_id, 1000), (run.info.run_id, 503)]
    for key in ("loss", "grad_norm", "distance_to_min"):
        steps, values = metric_history(tracking, run.info.run_id, key)
        assert steps == list(range(501)) and np.isfinite(values).all(), key


def test_a_sweeps_histories_keep_every_kth_step_of_the_budget_and_the_last():
    """tracking.history_steps: a `toy` run logs every step; a sweep's run about HISTORY_POINTS of them on a grid
    of its budget, so runs that stopped at different steps share theirs (compare's seed bands), the last always."""
    from pipeline.tracking import HISTORY_POINTS, history_steps

    def steps(count, budget):
        kept = history_steps({"loss": np.arange(count) * 2.0}, HISTORY_POINTS, budget)
        assert [values["loss"] for _, _, values in kept] == [2.0 * step for step, _, _ in kept]  # value = series[step]
        return [step for step, _, _ in kept]

    assert steps(501, 500) == [*range(0, 500, 10), 500] and len(steps(1001, 1000)) == HISTORY_POINTS
    assert steps(347, 500) == [*range(0, 346, 10), 346]  # stopped early: the same grid, then its last step
    assert set(steps(347, 500)) & set(steps(501, 500)) == set(range(0, 346, 10))
    assert steps(40, 500) == list(range(40))  # short enough to keep whole
    assert [s for s, _, _ in history_steps({"loss": np.zeros(501)})] == list(range(501))  # no thinning asked


@pytest.mark.slow
def test_mlflow_run_entry_point(tracking):
    experiment = new_experiment()
    done = mlflow_run("toy", "optimizer=nesterov", "function=rosenbrock", "start=-0.5,-0.5", "steps=300",
                       experiment=experiment)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED"
    assert run.data.params["start"] == "-0.5,-0.5" and run.data.params["momentum"] == "0.9"
    assert run.data.params["lr"] == "0.001"  # unset: the optimizer's own default, logged as used
    steps, _ = metric_history(tracking, run.info.run_id, "distance_to_min")
    assert steps == list(range(301))
    assert artifact_files(tracking, run.info.run_id) >= PLOTS | {"trajectory.csv"}


def test_mlflow_run_with_bad_input_leaves_no_run_running(tracking):
    # In-process, handed a new run as `mlflow run` hands one (its run, experiment and store in the environment):
    # the `mlflow run` path itself is test_mlflow_run_entry_point's, and test_cifar.py's for a refusal.
    experiment_id = tracking.create_experiment(new_experiment())
    run_id = tracking.create_run(experiment_id).info.run_id
    done = run_in_process("toy", "--optimizer", "nope",
                          env={"MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": experiment_id})
    assert done.returncode == 2
    assert "error: unknown optimizer 'nope'; choose one of: sgd" in done.stderr
    assert "Traceback" not in done.stderr
    assert [run.info.status for run in tracking.search_runs([experiment_id])] == ["FAILED"]


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "adafactor", "shampoo", "sfadamw"])
def test_seed_reruns_descended_together_follow_each_runs_own_descent_exactly(optimizer):
    """A tune's seed reruns descend their plotted starts in one batch with their score's starts
    (scores.scored_descents); each trajectory is the one the run would have descended alone, to the bit, and each
    score curve the one score_curve gives alone."""
    import dataclasses

    import torch

    from pipeline.toy import resolve_start, start_of
    from pipeline.workloads.toy import scores
    from pipeline.workloads.toy.descent import run_descent
    from pipeline.workloads.toy.functions import get_function

    base = build_config("toy", {"optimizer": optimizer, "function": "rosenbrock", "start": "random", "steps": "300",
                                "lr": "0.003"})
    cfgs = [dataclasses.replace(base, seed=seed) for seed in (1, 2, 3)]
    fn = get_function("rosenbrock")
    curves, trajs = scores.scored_descents(fn, [c.optimizer_settings for c in cfgs], 16, [1, 2, 3], base.steps,
                                           base.tolerance, [(c.optimizer_settings, start_of(c)) for c in cfgs])
    for cfg, curve in zip(cfgs, curves):
        assert np.array_equal(curve, scores.score_curve(fn, cfg.optimizer_settings, 16, cfg.seed, cfg.steps,
                                                        cfg.tolerance))
    for cfg, together in zip(cfgs, trajs):
        alone = run_descent(fn, cfg.optimizer_settings, torch.tensor([resolve_start(cfg, fn)], dtype=torch.float64),
                            cfg.steps, cfg.tolerance)
        assert np.array_equal(together.positions, alone.positions) and np.array_equal(together.losses, alone.losses)
        assert (together.converged_step, together.diverged_step) == (alone.converged_step, alone.diverged_step)

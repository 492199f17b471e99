"""Shared fixtures: a real MLflow SQLite store in a temporary folder, and a clean environment for runs."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import tiers
from bench.data import SUBSET

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test-fast: one worker per core, so one torch thread each
    import torch

    torch.set_num_threads(1)
SHARED_SUBSET = SUBSET  # the real CIFAR-10 subset beside the checkout (bench/data.py says where)
_RUN_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI")


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory) -> str:
    """One SQLite tracking store for the session (creating its tables takes seconds)."""
    folder = tmp_path_factory.mktemp("store")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def tracking(store_uri, monkeypatch, tmp_path):
    """Point MLflow at the session store from a clean environment; returns an MlflowClient."""
    import mlflow

    for name in _RUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(store_uri)
    yield mlflow.MlflowClient(store_uri)
    while mlflow.active_run():
        mlflow.end_run()


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` from the repo root in a fresh process, capturing text output."""
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=merged, text=True,
                          capture_output=True, timeout=timeout)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in this process: `pipeline.cli.main(list(args))` with stdout and stderr captured,
    `env` applied to os.environ for the call only. Returns what run_cli returns, without paying for a fresh
    interpreter (importing torch and MLflow takes seconds). A crash is exit code 1 with its traceback on stderr,
    as in a process. Afterwards os.environ, MLflow's tracking URI and its active-run stack are as before."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from pipeline import cli as pipeline_cli

    saved_environ, saved_uri = dict(os.environ), tracking_utils._tracking_uri
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = pipeline_cli.main(list(args))
            except SystemExit as stop:  # sys.exit(n) somewhere below main
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught error
                traceback.print_exc()
                code = 1
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        if tracking_utils._tracking_uri != saved_uri:  # the code pointed MLflow at env's store
            mlflow.set_tracking_uri(saved_uri)
        for name in set(os.environ) - set(saved_environ):
            del os.environ[name]
        os.environ.update(saved_environ)  # also brings back what the code popped (MLFLOW_RUN_ID)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def runs_of(client, experiment: str) -> list:
    """Every run of `experiment` in the store, newest first."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment!r} was not created"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"])


def artifact_files(client, run_id: str, folder: str = "") -> set[str]:
    """Every artifact file path of a run, recursively."""
    files = set()
    for item in client.list_artifacts(run_id, folder or None):
        files |= artifact_files(client, run_id, item.path) if item.is_dir else {item.path}
    return files


def metric_history(client, run_id: str, key: str):
    """(steps, values) of one metric, in step order."""
    import numpy as np

    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.step for m in points], np.array([m.value for m in points])


def interruptible() -> None:
    """A child's preexec_fn: SIGINT as a terminal's command has it. A job a shell starts in the background (`make
    test &`, as CI may be) inherits SIGINT ignored: Python then never raises KeyboardInterrupt, and bash cannot
    trap it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def new_experiment() -> str:
    """A fresh experiment name, so tests sharing the store never see each other's runs."""
    import uuid

    return f"test-{uuid.uuid4().hex[:8]}"


def mlflow_run(entry: str, *params: str, experiment: str, timeout: float = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """`mlflow run <repo> -e ENTRY --env-manager local -P ...` as a user would type it, with this venv first on
    PATH. It runs from the test store's folder: `mlflow run` creates a new experiment's artifact root in the
    folder it runs from (./mlruns), which must not be the project."""
    env = {**os.environ, **(env or {}), "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local",
               "--experiment-name", experiment]
    for param in params:
        command += ["-P", param]
    store = env["MLFLOW_TRACKING_URI"]
    assert store.startswith("sqlite:///"), "mlflow_run needs a test store in MLFLOW_TRACKING_URI"
    folder = Path(store[len("sqlite:///"):]).parent
    return subprocess.run(command, cwd=folder, env=env, text=True, capture_output=True, timeout=timeout)


_CACHES = (".venv/", ".pytest_cache/", ".hypothesis/", "__pycache__/")


def project_files() -> list[str] | None:
    """`git status` of the project, ignored files included, less virtual environment and caches; None
    outside a git checkout."""
    done = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                          text=True, capture_output=True)
    if done.returncode != 0:
        return None
    return sorted(line for line in done.stdout.splitlines() if not any(cache in line for cache in _CACHES))


@pytest.fixture(scope="session", autouse=True)
def project_tree_unchanged():
    """The suite writes nothing into the project folder: stores, artifacts and data live in temporary folders."""
    before = project_files()
    yield
    after = project_files()
    assert after == before, f"the tests changed the project folder: {sorted(set(after) ^ set(before))}"


@pytest.fixture(scope="session")
def cifar_sweep(store_uri):
    """The issue's CIFAR sweep via `mlflow run`, run twice (the second must reuse every child); shared by the
    compare and predict tests. On tiny_cnn: what is checked (children, reuse, champion, its predictions) does not
    depend on the model, and test_cifar.py keeps resnet18 under `mlflow run`. Returns (experiment, registered
    model name, first, second)."""
    experiment, model_name = new_experiment(), f"m-{new_experiment()}"
    params = ("task=cifar", "model=tiny_cnn", "optimizers=momentum,adam,adadelta", "epochs=2", "train_limit=256",
              "val_limit=128", f"data_dir={SHARED_SUBSET}", f"model_name={model_name}")
    env = {"MLFLOW_TRACKING_URI": store_uri}
    first = mlflow_run("compare", *params, experiment=experiment, env=env)
    # The same sweep again, in this process (a second `mlflow run` costs seconds and tests nothing more here)
    second = cli("compare", *(f"--{param}" for param in params), "--experiment", experiment, env=env)
    return experiment, model_name, first, second


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects by the marks set here
def pytest_collection_modifyitems(config, items):
    """Tests that start processes go to the slow tier (tests/tiers.py)."""
    tiers.assign(items)


@pytest.fixture(autouse=True)
def fast_tier_starts_no_process(request):
    """The guard: a test in the fast tier that starts a process fails, saying what it started."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    with tiers.Tripwire() as wire:
        yield
    if wire.started:
        pytest.fail(tiers.guard_message(request.node, wire.started), pytrace=False)

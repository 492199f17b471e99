"""Against a real `mlflow server` on 127.0.0.1: concurrent runs lose nothing; a dead server fails fast."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest

from conftest import metric_history, new_experiment, run_cli, runs_of


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tracking server with a SQLite backend and a local artifact store, bound to 127.0.0.1 only."""
    folder = tmp_path_factory.mktemp("server")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
         str(folder / "artifacts")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_four_concurrent_runs_lose_no_metric(server, monkeypatch):
    experiment = new_experiment()
    env = {"MLFLOW_TRACKING_URI": server}
    names = ("sgd", "momentum", "adam", "rmsprop")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda name: run_cli("toy", "--optimizer", name, "--function", "booth",
                                                     "--lr", "0.01", "--steps", "400", "--tolerance", "0",
                                                     "--experiment", experiment, env=env), names))
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr[-1000:] for r in results]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    client = mlflow.MlflowClient(server)
    runs = runs_of(client, experiment)
    assert sorted(r.data.params["optimizer"] for r in runs) == sorted(names)
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("loss", "grad_norm", "distance_to_min"):
            assert metric_history(client, run.info.run_id, key)[0] == list(range(401)), key
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"trajectory.csv", "plots"}


def test_an_unreachable_server_is_one_line_within_seconds():
    began = time.monotonic()
    done = run_cli("toy", "--steps", "3", env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"})
    assert time.monotonic() - began < 30  # a hang guard; it takes a few seconds
    assert done.returncode == 2 and "does not answer" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

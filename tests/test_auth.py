"""`make server auth=true`: a real mlflow server with MLflow's basic-auth app. A missing or wrong login, or a
missing permission, is one line and exit code 2 before any run exists; with a login the run is stored whole."""
import base64
import json
import secrets
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from conftest import artifact_files, cli, metric_history, new_experiment, runs_of
from servers import free_port, start_server, stop_server

ADMIN = ("admin", secrets.token_urlsafe(16))  # a fresh admin password: the server refuses to start without one
ALICE = ("alice", secrets.token_urlsafe(16))
BOB = ("bob", secrets.token_urlsafe(16))
_LOGIN_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _request(url: str, login: tuple[str, str] | None = None, body: dict | None = None) -> int:
    """The HTTP status of a GET (or, with `body`, a JSON POST), with basic auth when `login` is given."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A basic-auth server on 127.0.0.1 with the users alice and bob (created by the admin)."""
    port = free_port()
    process = start_server(tmp_path_factory.mktemp("auth"), port, auth=True,
                           env={"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1]})
    url = f"http://127.0.0.1:{port}"
    for user, password in (ALICE, BOB):
        assert _request(f"{url}/api/2.0/mlflow/users/create", ADMIN, {"username": user, "password": password}) == 200
    yield url
    stop_server(process)


@pytest.fixture
def no_login(monkeypatch):
    """This process (and the runs it starts) without any login of the developer's."""
    for name in _LOGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _client(url: str, login: tuple[str, str], monkeypatch) -> mlflow.MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
    return mlflow.MlflowClient(url)


def _login(user: tuple[str, str]) -> dict:
    return {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}


def test_the_rest_api_needs_a_login_but_health_does_not(auth_server):
    search = f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _request(search) == 401
    assert _request(search, (ALICE[0], "wrong-password")) == 401
    assert _request(search, ALICE) == 200
    assert _request(f"{auth_server}/health") == 200  # why check_server asks for more than /health


@pytest.mark.parametrize("login,message", [
    ({}, "requires a login (HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    (_login((ALICE[0], "wrong-password")), "refused the login of user 'alice' (HTTP 401); check "
                                           "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
])
def test_a_missing_or_wrong_login_is_one_line_and_no_run(auth_server, no_login, login, message):
    experiment = new_experiment()
    done = cli("toy", "--steps", "3", "--experiment", experiment,
                   env={"MLFLOW_TRACKING_URI": auth_server, **login})
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [f"error: tracking server {auth_server} {message}"]
    admin = _client(auth_server, ADMIN, no_login)
    assert admin.get_experiment_by_name(experiment) is None
    assert admin.search_runs(["0"]) == []  # nor a run in the Default experiment


def test_with_a_login_the_run_finishes_and_every_metric_is_stored(auth_server, no_login):
    experiment = new_experiment()
    done = cli("toy", "--optimizer", "adam", "--function", "booth", "--lr", "0.05", "--steps", "200",
                   "--tolerance", "0", "--experiment", experiment,
                   env={"MLFLOW_TRACKING_URI": auth_server, **_login(ALICE)})
    assert done.returncode == 0, done.stderr[-3000:]
    admin = _client(auth_server, ADMIN, no_login)
    (run,) = runs_of(admin, experiment)
    assert run.info.status == "FINISHED" and run.info.user_id == "alice"
    for key in ("loss", "grad_norm", "distance_to_min"):
        steps, values = metric_history(admin, run.info.run_id, key)
        assert steps == list(range(201)) and np.isfinite(values).all(), key
    assert {"trajectory.csv", "config.json", "plots/contour.png"} <= artifact_files(admin, run.info.run_id)
    assert _request(f"{auth_server}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}") == 401


def test_another_users_experiment_is_one_line_and_no_run(auth_server, no_login):
    experiment = new_experiment()
    alice = _client(auth_server, ALICE, no_login)
    experiment_id = alice.create_experiment(experiment)  # bob may read it (default READ), not write to it
    done = cli("toy", "--steps", "3", "--experiment", experiment,
                   env={"MLFLOW_TRACKING_URI": auth_server, **_login(BOB)})
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"error: tracking server {auth_server} does not let user 'bob' start a run in experiment {experiment!r} "
        "(HTTP 403); ask its admin for that permission, or set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD to another user"]
    assert alice.search_runs([experiment_id]) == []

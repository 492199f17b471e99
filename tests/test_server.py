"""Against a real `mlflow server` on 127.0.0.1: concurrent runs lose nothing; a dead server fails fast."""
import json
import os
import subprocess
import sys
import time

import mlflow
import pytest
from conftest import REPO, SHARED_SUBSET, cli, metric_history, new_experiment, runs_of
from servers import free_port, start_server, stop_server


class Server:
    """A tracking server on 127.0.0.1 that a test may stop and start again, on the same port and stores."""

    def __init__(self, folder) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = start_server(folder, self.port)

    def stop(self) -> None:
        stop_server(self.process)

    def start(self) -> None:
        self.process = start_server(self.folder, self.port)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One tracking server for the module's tests (a start costs seconds), bound to 127.0.0.1 only; each test
    uses its own experiment. The outage test stops and restarts it."""
    running = Server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


# Four toy commands at once, each in its own process with its own connections to the server, forked from one
# process that did the imports first: four fresh interpreters would each spend seconds of CPU importing torch,
# MLflow and matplotlib. Prints the four exit codes as JSON once all have ended.
FOUR_AT_ONCE = """
import json, multiprocessing, sys
import pipeline.toy, pipeline.tracking.server  # noqa: F401 - what the toy command imports, once
from pipeline.cli import main
fork = multiprocessing.get_context("fork")
runs = [fork.Process(target=lambda argv=argv: sys.exit(main(argv))) for argv in json.loads(sys.argv[1])]
for run in runs:
    run.start()
for run in runs:
    run.join()
print(json.dumps([run.exitcode for run in runs]))
"""


def test_four_concurrent_runs_lose_no_metric(server, monkeypatch):
    experiment = new_experiment()
    names = ("sgd", "momentum", "adam", "rmsprop")
    argvs = [["toy", "--optimizer", name, "--function", "booth", "--lr", "0.01", "--steps", "400", "--tolerance",
              "0", "--experiment", experiment] for name in names]
    done = subprocess.run([sys.executable, "-c", FOUR_AT_ONCE, json.dumps(argvs)], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": server.url, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [0, 0, 0, 0], done.stderr[-3000:]  # each run's exit code
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    client = mlflow.MlflowClient(server.url)
    runs = runs_of(client, experiment)
    assert sorted(r.data.params["optimizer"] for r in runs) == sorted(names)
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("loss", "grad_norm", "distance_to_min"):
            assert metric_history(client, run.info.run_id, key)[0] == list(range(401)), key
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"trajectory.csv", "plots"}


def test_an_unreachable_server_is_one_line_within_seconds():
    began = time.monotonic()
    done = cli("toy", "--steps", "3", env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert time.monotonic() - began < 30  # a hang guard; it takes a few seconds
    assert done.returncode == 2 and "does not answer" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# `python -m pipeline` with the sender's longest pause between retries cut from 10 s to 1 s: the retry that
# gets through comes within a second of the server's return, not up to 10 s later. Nothing else changes.
QUICK_RETRIES = ("import runpy; import pipeline.tracking.outbox as outbox; outbox.RETRY_MAX_S = 1.0; "
                 "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)")


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason="needs the real CIFAR-10 subset")
def test_a_server_outage_mid_run_loses_no_epoch(server):
    experiment = new_experiment()
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "PYTHONUNBUFFERED": "1"}
    training = subprocess.Popen(
        [sys.executable, "-c", QUICK_RETRIES, "cifar", "--model", "tiny_cnn", "--data_dir", str(SHARED_SUBSET),
         "--epochs", "8", "--train_limit", "2048", "--val_limit", "128", "--system_metrics", "false",
         "--log_model", "false", "--experiment", experiment], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    output, failed_while_down = [], False
    for line in training.stdout:
        output.append(line)
        if "epoch 2/8" in line:
            server.stop()  # down from epoch 2 on ...
            for line in training.stdout:  # ... until sending the epochs trained since has failed ...
                output.append(line)
                if "retrying, training goes on" in line:
                    failed_while_down = True
                    break
            server.start()  # ... then back
            break
    output += training.stdout.readlines()
    training.wait(timeout=300)
    assert training.returncode == 0, "".join(output)[-3000:]
    assert failed_while_down, "".join(output)[-3000:]
    client = mlflow.MlflowClient(server.url)
    (run,) = runs_of(client, experiment)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_acc", "epoch_time"):
        assert sorted({m.step for m in client.get_metric_history(run.info.run_id, key)}) == list(range(1, 9))

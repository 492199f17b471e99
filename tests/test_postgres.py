"""`make server BACKEND=postgres`: a real mlflow server on a private PostgreSQL cluster, fed by the real entry
points; the rows are checked in PostgreSQL itself. Skipped without PostgreSQL, except in CI
(OPTLAB_REQUIRE_POSTGRES=1), where it must run."""
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import SHARED_SUBSET, artifact_files, cli, metric_history, new_experiment, runs_of
from servers import free_port, postgres_or_skip, start_server, stop_server

CIFAR_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time", "eval_time", "throughput", "lr",
                 "best_val_acc")


@pytest.fixture(scope="module")
def postgres_server():
    """(tracking URI, PostgreSQL cluster folder): the server and its cluster live for the module."""
    postgres_or_skip()
    # Not pytest's tmp_path: its parent folders are closed to the `postgres` user the cluster runs as.
    folder = Path(tempfile.mkdtemp(prefix="optlab-pg-"))
    folder.chmod(0o711)
    port = free_port()
    process = start_server(folder, port, backend="postgres")
    yield f"http://127.0.0.1:{port}", folder / "pgdata"
    stop_server(process)
    shutil.rmtree(folder, ignore_errors=True)


def _rows(pgdata: Path, sql: str, *args) -> list[tuple]:
    """Query the cluster's `mlflow` database directly, as the server's own user."""
    import psycopg2

    port = (pgdata / "data" / "postmaster.pid").read_text().splitlines()[3]
    with psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="mlflow",
                          passfile=str(pgdata / "pgpass")) as connection, connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchall()


def test_a_toy_run_is_stored_in_postgres(postgres_server):
    url, pgdata = postgres_server
    experiment = new_experiment()
    done = cli("toy", "--optimizer", "momentum", "--function", "booth", "--lr", "0.01", "--steps", "300",
                   "--tolerance", "0", "--experiment", experiment, env={"MLFLOW_TRACKING_URI": url})
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(url)
    (run,) = runs_of(client, experiment)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.params["optimizer"] == "momentum"
    for key in ("loss", "grad_norm", "distance_to_min"):
        steps, values = metric_history(client, run_id, key)
        assert steps == list(range(301)) and np.isfinite(values).all(), key
    assert artifact_files(client, run_id) == {"trajectory.csv", "config.json", "plots/contour.png",
                                              "plots/surface.png", "plots/loss.png"}
    counts = dict(_rows(pgdata, "SELECT key, count(*) FROM metrics WHERE run_uuid = %s GROUP BY key", run_id))
    assert counts == {"loss": 301, "grad_norm": 301, "distance_to_min": 301}
    assert _rows(pgdata, "SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
    assert _rows(pgdata, "SELECT count(*) FROM experiments WHERE name = %s", experiment) == [(1,)]


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")
def test_a_tiny_cifar_run_and_its_model_are_stored_in_postgres(postgres_server):
    url, pgdata = postgres_server
    experiment = new_experiment()
    done = cli("cifar", "--model", "tiny_cnn", "--epochs", "2", "--train_limit", "256", "--val_limit", "128",
                   "--data_dir", str(SHARED_SUBSET), "--system_metrics", "false", "--experiment", experiment,
                   "--checkpoint_every_s", "0", env={"MLFLOW_TRACKING_URI": url})  # 0: a checkpoint to upload too
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(url)
    (run,) = runs_of(client, experiment)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    for key in CIFAR_METRICS:
        steps, values = metric_history(client, run_id, key)
        assert steps == [1, 2] and np.isfinite(values).all(), key
    assert artifact_files(client, run_id) >= {"config.json", "plots/curves.png", "plots/confusion_matrix.png",
                                              "confusion_matrix.csv", "per_class_accuracy.csv",
                                              "checkpoints/last.pt"}
    counts = dict(_rows(pgdata, "SELECT key, count(*) FROM metrics WHERE run_uuid = %s GROUP BY key", run_id))
    assert {key: counts.get(key) for key in CIFAR_METRICS} == dict.fromkeys(CIFAR_METRICS, 2)
    models = _rows(pgdata, "SELECT model_id FROM logged_models WHERE source_run_id = %s", run_id)
    assert len(models) == 1 and run.data.tags["model_uri"] == f"models:/{models[0][0]}"
    inputs = _rows(pgdata, "SELECT count(*) FROM inputs WHERE destination_id = %s", run_id)
    assert inputs == [(2,)]  # the train and test datasets (mlflow.log_input)


def _log_the_same_params(url, run_ids, errors):
    """One process's part: log the same 20 params to every run, as tune's report logs each child's."""
    from pipeline.tracking.run import Run  # noqa: PLC0415

    client, failed = mlflow.MlflowClient(url), []
    for run_id in run_ids:
        try:
            Run(client, run_id, "0").log_params({f"p{index}": "same" for index in range(20)})
        except mlflow.exceptions.MlflowException as error:
            failed.append(str(error)[:200])
    errors.put(failed)


def test_processes_logging_the_same_params_to_a_run_at_once_all_succeed(postgres_server):
    """Two tune commands that finish together both log each child's params. The store checks for a param, then
    inserts it: two processes in between, and the later insert failed on PostgreSQL (duplicate key "param_pk"),
    which ended that command with exit 2 (as CI once saw). 4 processes x 80 runs here: before, about 1 in 120
    logs failed; now the later one reads the run again and finds its params there."""
    import multiprocessing

    url, _ = postgres_server
    client = mlflow.MlflowClient(url)
    experiment = client.create_experiment(new_experiment())
    run_ids = [client.create_run(experiment).info.run_id for _ in range(80)]
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    workers = [context.Process(target=_log_the_same_params, args=(url, run_ids, errors)) for _ in range(4)]
    for worker in workers:
        worker.start()
    failed = [message for _ in workers for message in errors.get(timeout=300)]
    for worker in workers:
        worker.join()
    assert failed == []
    assert all(client.get_run(run_id).data.params == {f"p{i}": "same" for i in range(20)} for run_id in run_ids)


def test_two_tune_commands_share_one_study_in_postgres(postgres_server):
    """Two `tune` commands, as on two machines: one PostgreSQL study storage, one tracking server. Each
    optimizer ends with exactly K counted trials, no trial ran twice, and both commands took trials."""
    import os
    import subprocess
    import sys

    import optuna
    from conftest import REPO

    from pipeline.sweeps.tune import search

    url, pgdata = postgres_server
    port = (pgdata / "data" / "postmaster.pid").read_text().splitlines()[3]
    storage = f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/optuna"
    experiment, k = new_experiment(), 4
    command = [sys.executable, "-m", "pipeline", "tune", "--optimizers", "adam,sgd", "--functions", "booth",
               "--trials", str(k), "--seeds", "1", "--steps", "800", "--tolerance", "0", "--starts", "8",
               "--storage", storage, "--experiment", experiment]
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PGPASSFILE": str(pgdata / "pgpass")}
    workers = [subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    client = mlflow.MlflowClient(url)
    runs = runs_of(client, experiment)
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len({r.data.tags["worker"] for r in trials}) == 2
    assert len([r for r in runs if r.data.tags.get("task") == "tune"]) == 1  # both logged under one parent
    with_pg = {**os.environ, "PGPASSFILE": str(pgdata / "pgpass")}
    os.environ.update(with_pg)
    rdb = optuna.storages.RDBStorage(storage)
    for optimizer in ("adam", "sgd"):
        name = trials[0].data.tags["study"].split(":")[0] + f":{optimizer}-booth:trials"
        study = optuna.load_study(study_name=name, storage=rdb)
        counts = search.counts(study)
        assert counts["complete"] + counts["pruned"] == k and counts["running"] == 0, counts
        ran = sorted(int(r.data.tags["trial"]) for r in trials if r.data.tags["optimizer"] == optimizer)
        assert ran == sorted(t.number for t in study.trials if not t.user_attrs.get("surplus"))
    assert all(r.info.status == "FINISHED" for r in runs)

"""Hardening, round 3 (issue 22): a landscape that cannot be drawn never fails a finished run; nproc refuses data
that leaves a process without a batch; `-P experiment=X` that `mlflow run` would not honour is refused; a redraw
registers nothing; and nothing optlab starts (servers, their job runners, torchrun's ranks) outlives the command
that started it, on SIGTERM or SIGINT."""
import csv
import io
import os
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import psutil
import pytest
import torch
from cifar_files import write_cifar_batches
from conftest import (REPO, SHARED_SUBSET, artifact_files, cli, interruptible, mlflow_run, new_experiment,
                      runs_of)

from pipeline.config.tasks import build_config
from pipeline.landscape.plane import RECORD_PER_EPOCH, Recorder
from pipeline.training.distributed import ShardedBatches, World, check_shares
from pipeline.training.hooks import MemoryLogger
from pipeline.workloads.cifar.data import CifarLoader, load_cifar10
from pipeline.workloads.cifar.models import build_model

needs_subset = pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")
SCAPE = ("--model", "tiny_cnn", "--landscape", "true", "--landscape_grid", "3", "--landscape_images", "16",
         "--data_dir", str(SHARED_SUBSET), "--train_limit", "64", "--val_limit", "16", "--batch_size", "16",
         "--epochs", "1", "--log_model", "false", "--system_metrics", "false", "--bf16", "false")
DRAWN = {"plots/landscape_contour.png", "plots/landscape_surface.png", "landscape.csv", "landscape_paths.csv"}


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: landscape")]


# ---- 1. the loss landscape never fails a finished run ---------------------------------------------------------

def test_a_weight_past_float16s_range_ends_the_path_instead_of_storing_inf():
    weight = torch.nn.Parameter(torch.zeros(3))
    recorder = Recorder([weight], steps_per_epoch=1)
    with torch.no_grad():
        weight += 60000.0  # float16 holds it
    recorder()
    with torch.no_grad():
        weight += 10000.0  # 70,000: finite in float32, inf in float16
    recorder(), recorder()
    assert recorder.broken and recorder.steps == [0, 1] and len(recorder.deltas) == 2
    assert all(bool(torch.isfinite(delta).all()) for delta in recorder.deltas)


@needs_subset
def test_paths_that_never_leave_the_start_are_one_line_and_the_run_stays_finished(tracking):
    experiment = new_experiment()
    done = cli("cifar", "--optimizer", "sgd", "--lr", "1e-12", *SCAPE, "--experiment", experiment)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _warnings(done.stderr) == ["warning: landscape not drawn: every recorded point is the start (no weight "
                                      "moved by more than float16 resolves, about 6e-8): no path to draw a plane "
                                      "through"], done.stderr
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert run.data.tags["landscape_skipped"].startswith("every recorded point is the start")
    assert not DRAWN & artifact_files(tracking, run.info.run_id)


@needs_subset
def test_weights_past_float16_cut_the_path_where_they_overflow_and_the_run_stays_finished(tracking):
    """sgd lr=1e4 on tiny_cnn: finite float32 weights past 65,504 (before: inf in the stored path, LinAlgError)."""
    experiment = new_experiment()
    done = cli("cifar", "--optimizer", "sgd", "--lr", "1e4", *SCAPE, "--experiment", experiment)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags and "landscape_skipped" not in run.data.tags
    assert DRAWN <= artifact_files(tracking, run.info.run_id) and not _warnings(done.stderr)
    paths = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(
        f"runs:/{run.info.run_id}/landscape_paths.csv"))))
    assert 1 < len(paths) < 1 + RECORD_PER_EPOCH  # cut where it overflowed
    assert all(np.isfinite(float(p[key])) for p in paths for key in ("x", "y"))


@needs_subset
def test_a_compare_whose_every_child_diverged_keeps_its_parent_finished(tracking):
    experiment = new_experiment()
    done = cli("compare", "--task", "cifar", "--optimizers", "sgd,adam", "--lr", "1e25", *SCAPE,
               "--experiment", experiment)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _warnings(done.stderr) == ["warning: landscape not drawn: every run diverged (adam, sgd): no path to "
                                      "draw"], done.stderr
    (parent,) = [r for r in runs_of(tracking, experiment) if r.data.tags.get("task") == "compare"]
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    assert parent.data.tags["landscape_skipped"] == "every run diverged (adam, sgd): no path to draw"
    assert not DRAWN & artifact_files(tracking, parent.info.run_id)


@needs_subset
def test_a_diverged_path_is_left_out_of_the_plane(capsys):
    """A diverged child's last recorded points (finite, far out) would take the plane: they are not in it."""
    from pipeline.landscape.report import draw

    cfg = build_config("cifar", {"model": "tiny_cnn", "landscape_grid": "3", "landscape_images": "16",
                                 "batch_size": "16", "data_dir": str(SHARED_SUBSET)})
    arrays = load_cifar10(SHARED_SUBSET, download=False, train_limit=16, val_limit=2)
    recorders = {}
    for label, scale in (("good", 0.01), ("bad", 3e3)):  # bad: far out, still within float16
        torch.manual_seed(cfg.seed)
        params = list(build_model("tiny_cnn").parameters())
        recorders[label] = Recorder(params, steps_per_epoch=1)
        with torch.no_grad():
            for p in params:
                p += scale * torch.randn_like(p)
        recorders[label]()
    run = MemoryLogger()
    assert draw(run, cfg, recorders, arrays, torch.device("cpu"), left_out={"bad"})
    assert "landscape: leaving out bad (diverged)" in capsys.readouterr().out
    assert {row.split(",")[0] for row in run.artifacts["landscape_paths.csv"].splitlines()[1:]} == {"good"}
    assert "landscape_skipped" not in run.tags


# ---- 2. nproc refuses data that leaves a process without a batch ------------------------------------------------

def test_every_rank_gets_two_images_of_a_batch_exactly_when_there_are_two_per_process():
    """The condition check_shares and the config test, against what ShardedBatches really hands each rank."""
    rng = np.random.default_rng(0)
    for processes in (2, 3, 4):
        for batch in range(2 * processes, 2 * processes + 4):
            for images in range(2, 3 * processes + batch):
                x, y = rng.integers(0, 255, (images, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, images)
                trained = []
                for rank in range(processes):
                    shares = [len(labels) for _, labels, _ in ShardedBatches(
                        CifarLoader(x, y, batch, train=True, seed=0), World(rank, processes), train=True)]
                    assert all(size >= 2 for size in shares), (processes, batch, images, shares)
                    trained.append(sum(shares))
                fits = images >= 2 * processes
                assert (min(trained) > 0) == fits, (processes, batch, images, trained)
                if fits:
                    check_shares(images, processes)
                else:
                    with pytest.raises(ValueError, match="fewer than 2 each"):
                        check_shares(images, processes)


def test_nproc_with_a_train_limit_that_starves_a_process_is_one_line_before_any_run(tracking):
    experiment = new_experiment()
    done = cli("cifar", "--nproc", "2", "--train_limit", "3", "--batch_size", "4", "--model", "tiny_cnn",
               "--data_dir", str(SHARED_SUBSET), "--experiment", experiment)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == ["error: train_limit: expected 0 (all) or at least 2 per process (>= 4 with "
                                        "nproc=2): a process with fewer trains no image, got 3"], done.stderr
    assert tracking.get_experiment_by_name(experiment) is None


def test_nproc_with_a_data_folder_too_small_for_its_processes_is_one_line_before_any_process(tracking, tmp_path):
    rng = np.random.default_rng(1)
    write_cifar_batches(tmp_path, rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 5),
                        rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 2))
    experiment = new_experiment()
    began = time.monotonic()
    done = cli("cifar", "--nproc", "4", "--batch_size", "8", "--model", "tiny_cnn", "--data_dir", str(tmp_path),
               "--download", "false", "--experiment", experiment)
    assert done.returncode == 2 and time.monotonic() - began < 30, done.stderr[-3000:]
    assert done.stderr.splitlines() == ["error: train_limit: 5 training images give 4 processes fewer than 2 each; "
                                        "use at least 8 (or fewer processes)"], done.stderr
    assert tracking.get_experiment_by_name(experiment) is None


# ---- 3. -P experiment=X under `mlflow run` ----------------------------------------------------------------------

@pytest.mark.parametrize("entry,args", [  # small settings: were the check to go, each would still end soon
    ("toy", ("--steps", "5")), ("cifar", ("--data_dir", "/nonexistent", "--download", "false")),
    ("compare", ("--optimizers", "sgd", "--steps", "5")),
    ("tune", ("--optimizers", "sgd", "--trials", "1", "--seeds", "1", "--steps", "5")),
    ("predict", ("--model_uri", "runs:/0123/model", "--input", "nothing.png")),
])
def test_an_experiment_param_mlflow_run_did_not_honour_is_refused_on_every_entry_point(tracking, entry, args):
    """Handed a run as `mlflow run` hands one: made in one experiment, with the user's -P experiment=<another>
    logged on it (mlflow run logs the raw -P strings)."""
    made, asked = new_experiment(), new_experiment()
    experiment_id = tracking.create_experiment(made)
    run_id = tracking.create_run(experiment_id).info.run_id
    tracking.log_param(run_id, "experiment", asked)
    handed = {"MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": experiment_id}
    done = cli(entry, *args, "--experiment", asked, env=handed)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.splitlines() == [f"error: experiment: `mlflow run` made its run in experiment {made!r} before "
                                        f"optlab started, and a run cannot move; pass --experiment-name {asked} to "
                                        f"`mlflow run` instead of -P experiment={asked}"], done.stderr
    (run,) = tracking.search_runs([experiment_id])
    assert run.info.status == "FAILED" and "--experiment-name" in run.data.tags["error"]
    assert tracking.get_experiment_by_name(asked) is None


@pytest.mark.slow
def test_mlflow_run_with_an_experiment_param_it_did_not_honour_is_refused(tracking, store_uri):
    made, asked = new_experiment(), new_experiment()
    done = mlflow_run("toy", f"experiment={asked}", "steps=5", experiment=made, env={"MLFLOW_TRACKING_URI": store_uri})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"error: experiment: `mlflow run` made its run in experiment {made!r}" in done.stderr, done.stderr[-2000:]
    (run,) = runs_of(tracking, made)
    assert run.info.status == "FAILED" and f"--experiment-name {asked}" in run.data.tags["error"]
    assert tracking.get_experiment_by_name(asked) is None
    agreed = mlflow_run("toy", f"experiment={made}", "steps=5", experiment=made, env={"MLFLOW_TRACKING_URI": store_uri})
    assert agreed.returncode == 0, agreed.stderr[-2000:]
    assert runs_of(tracking, made)[0].info.status == "FINISHED"


# ---- 4. a redraw changes nothing in the registry ----------------------------------------------------------------

def _registry(client, name: str) -> tuple[list[tuple[str, str]], str]:
    versions = sorted((v.version, v.run_id) for v in client.search_model_versions(f"name = '{name}'"))
    return versions, client.get_model_version_by_alias(name, "champion").version


@needs_subset
def test_a_redraw_registers_no_version_and_leaves_the_champion_alias_alone(tracking):
    experiment, name = new_experiment(), f"m-{new_experiment()}"
    tiny = ("--model", "tiny_cnn", "--data_dir", str(SHARED_SUBSET), "--train_limit", "64", "--val_limit", "32",
            "--batch_size", "16", "--epochs", "1", "--system_metrics", "false", "--model_name", name)
    sweep = cli("compare", "--task", "cifar", "--optimizers", "momentum,adam", *tiny, "--experiment", experiment)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (parent,) = [r for r in runs_of(tracking, experiment) if r.data.tags.get("task") == "compare"]
    versions, champion = _registry(tracking, name)
    other = next(version for version, _ in versions if version != champion)
    tracking.set_registered_model_alias(name, "champion", other)  # the user picked another champion
    # a newer adam run with a logged but unregistered model: the newest adam of the experiment
    assert cli("cifar", "--optimizer", "adam", "--lr", "0.01", *tiny, "--experiment", experiment).returncode == 0
    before = _registry(tracking, name)
    for source in (parent.info.run_id, experiment):
        redraw = cli("compare", "--task", "cifar", "--from_runs", source, "--experiment", experiment)
        assert redraw.returncode == 0, redraw.stderr[-3000:]
        assert _registry(tracking, name) == before, source
        newest = runs_of(tracking, experiment)[0]
        assert newest.data.tags["redrawn_from"] == source and "champion_version" not in newest.data.tags
        assert "epoch 1/1" not in redraw.stdout  # trained nothing


# ---- 5. nothing left running ------------------------------------------------------------------------------------

def _alive(processes: list[psutil.Process]) -> list[int]:
    left = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return left


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait_for_descendants(root: int, count: int, timeout_s: float = 120) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = psutil.Process(root).children(recursive=True)
        if len(found) >= count:
            return found
        time.sleep(0.5)
    pytest.fail(f"fewer than {count} processes under {root} after {timeout_s} s")


SERVE = """
import sys, time
from pathlib import Path
from bench.server import mlflow_server
with mlflow_server(Path(sys.argv[1])) as url:
    print(url, flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_bench_servers_end_with_their_process_group_on_sigterm(tmp_path):
    """As `timeout` stops `make bench`: SIGTERM to the process holding the server. Before, the server, its
    workers and its job runner stayed up."""
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("http://127.0.0.1:"), process.stderr.read()[-2000:]
        started = _wait_for_descendants(process.pid, 3)  # mlflow server, uvicorn, the job runner
        groups = {os.getpgid(p.pid) for p in started}
        assert process.pid not in groups  # the server has a group of its own
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        time.sleep(0.5)
        assert not _alive(started) and not any(_group_exists(group) for group in groups)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_grouped_sh_takes_its_command_s_whole_group_down(tmp_path, sig):
    """What `make ui` runs the UI under (and scripts/server.sh its server): the command and its children."""
    process = subprocess.Popen(["bash", str(REPO / "scripts" / "grouped.sh"), "bash", "-c",
                                "sleep 300 & sleep 300 & wait"], stdin=subprocess.DEVNULL,
                               preexec_fn=interruptible)
    started = _wait_for_descendants(process.pid, 3, timeout_s=20)
    groups = {os.getpgid(p.pid) for p in started}
    process.send_signal(sig)
    assert process.wait(timeout=30) == 128 + sig
    time.sleep(0.3)
    assert not _alive(started) and not any(_group_exists(group) for group in groups)


@pytest.mark.slow
def test_make_server_ends_its_server_and_job_runners_on_sigterm(tmp_path):
    """SIGTERM to scripts/server.sh alone, as make passes one on to it: before, it had exec'd `mlflow server`,
    which ignores a SIGTERM to its main process and kept its job runner and huey consumers up."""
    from servers import free_port, start_server

    process = start_server(tmp_path, free_port())
    try:
        started = _wait_for_descendants(process.pid, 3)
        groups = {os.getpgid(p.pid) for p in started}
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        time.sleep(0.5)
        assert not _alive(started) and not any(_group_exists(group) for group in groups)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@needs_subset
@pytest.mark.slow
def test_sigterm_to_an_nproc_launcher_leaves_no_rank_and_no_running_run(tracking, store_uri):
    experiment = new_experiment()
    command = [sys.executable, "-m", "pipeline", "cifar", "--model", "tiny_cnn", "--data_dir", str(SHARED_SUBSET),
               "--system_metrics", "false", "--bf16", "false", "--nproc", "2", "--epochs", "50", "--train_limit",
               "256", "--val_limit", "64", "--log_model", "false", "--experiment", experiment]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if "epoch 1/50" in line:
                break
        ranks = [p for p in psutil.Process(process.pid).children(recursive=True) if "RANK" in p.environ()]
        assert len(ranks) == 2
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.splitlines() == ["interrupted: open runs are marked KILLED"], stderr
    assert not _alive(ranks)
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "KILLED" and "error" not in run.data.tags

"""Issue 22 (hardening, round 3) for `tune`: a command killed while it creates the tune's runs does not leave the
next one stuck; an empty optimizer list and an in-memory storage are refused up front; `postgresql://` URLs work
and a database that cannot be reached says so; Ctrl-C and SIGTERM with two workers end every run and every
worker, in one line."""
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import REPO, SHARED_SUBSET, cli, interruptible, new_experiment, runs_of
from servers import free_port, postgres_or_skip
from test_tune import _storage

QUICK = ("--optimizers", "adam,sgd", "--functions", "booth", "--trials", "1", "--seeds", "1", "--steps", "5",
         "--starts", "2")
LONG_TRIALS = ("--optimizers", "adam,momentum", "--functions", "ackley", "--trials", "4", "--seeds", "1",
               "--steps", "20000", "--tolerance", "0", "--starts", "8", "--workers", "2")


def _one_line(done, start: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), done.stderr


def _no_run(client, experiment: str) -> None:
    found = client.get_experiment_by_name(experiment)
    assert found is None or not client.search_runs([found.experiment_id]), "a run was made"


# 2. One line, exit 2, before any run -----------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["compare", "tune"])
@pytest.mark.parametrize("optimizers", [",", " , ", ",,"])
def test_an_empty_optimizer_list_is_one_line_before_any_run(tracking, entry, optimizers):
    """Before: compare made an empty sweep and exited 0; tune made a parent run, then raised IndexError."""
    experiment = new_experiment()
    done = cli(entry, "--optimizers", optimizers, "--steps", "5", "--experiment", experiment)
    _one_line(done, "optimizers: expected a comma list of optimizer names or sets")
    _no_run(tracking, experiment)


@pytest.mark.parametrize("storage", ["sqlite://", "sqlite:///:memory:", "sqlite:///", "sqlite:///:memory:?cache=shared",
                                     "sqlite:///file::memory:?cache=shared", "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_storage_is_one_line_asking_for_a_file(tracking, storage):
    """Before, `sqlite://` with workers=2: every connection a new empty database, trials run twice, an Optuna
    traceback and 2 runs left RUNNING."""
    experiment = new_experiment()
    done = cli("tune", *QUICK, "--workers", "2", "--storage", storage, "--experiment", experiment)
    _one_line(done, "storage: expected a file path, e.g. sqlite:///optuna.db")
    _no_run(tracking, experiment)


# 3. Right messages ------------------------------------------------------------------------------------------------

def test_a_postgresql_url_takes_the_installed_driver_and_a_closed_port_says_it_could_not_connect(tracking):
    """Before: `postgresql://` (what params.yaml offers) failed with "install appropriate module", as SQLAlchemy
    maps it to psycopg 3, which is not installed."""
    from pipeline.sweeps.tune import search

    assert search.engine_url("postgresql://u@h:5/db") == "postgresql+psycopg2://u@h:5/db"
    assert search.engine_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert search.engine_url("sqlite:///x.db") == "sqlite:///x.db"
    experiment, port = new_experiment(), free_port()
    done = cli("tune", *QUICK, "--storage", f"postgresql://nobody:secret@127.0.0.1:{port}/optuna",
               "--experiment", experiment)
    _one_line(done, f"storage: cannot open postgresql://nobody:***@127.0.0.1:{port}/optuna: could not connect")
    assert "secret" not in done.stderr and "appropriate" not in done.stderr and "refused" in done.stderr
    _no_run(tracking, experiment)


@pytest.mark.skipif(bool(__import__("importlib.util").util.find_spec("pymysql")), reason="pymysql is installed")
def test_a_mysql_url_without_its_driver_names_the_package(tracking):
    experiment = new_experiment()
    done = cli("tune", *QUICK, "--storage", "mysql://u@127.0.0.1/x", "--experiment", experiment)
    _one_line(done, "storage: no mysql driver is installed for mysql://u@127.0.0.1/x: pip install pymysql")
    _no_run(tracking, experiment)


@pytest.fixture(scope="module")
def postgres_optuna():
    """(a `postgresql://` URL of a database `optuna` on a private cluster, PGPASSFILE) for the module."""
    postgres_or_skip()
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="optlab-pg-"))  # not tmp_path: the `postgres` user must reach it
    folder.chmod(0o711)
    script = REPO / "scripts" / "postgres.sh"
    done = subprocess.run(["bash", str(script), "start", str(folder / "pg"), str(free_port()), "optuna"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    yield done.stdout.strip().splitlines()[-1], str(folder / "pg" / "pgpass")
    subprocess.run(["bash", str(script), "stop", str(folder / "pg")], capture_output=True, timeout=120)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def test_a_tune_on_a_postgresql_url_runs_end_to_end(tracking, postgres_optuna):
    url, passfile = postgres_optuna
    assert url.startswith("postgresql://mlflow@127.0.0.1:")
    experiment = new_experiment()
    done = cli("tune", *QUICK, "--storage", url, "--experiment", experiment, env={"PGPASSFILE": passfile})
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_of(tracking, experiment)
    assert len([r for r in runs if r.data.tags.get("task") == "tune"]) == 1
    assert all(r.info.status == "FINISHED" for r in runs)
    key = next(r.data.tags["tune_key"] for r in runs if r.data.tags.get("task") == "tune")
    os.environ["PGPASSFILE"] = passfile
    try:
        study = optuna.load_study(study_name=f"optlab-tune-{key}:adam-booth:trials",
                                  storage=url.replace("postgresql:", "postgresql+psycopg2:"))
    finally:
        del os.environ["PGPASSFILE"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]


# 1. A tune is never stuck for good --------------------------------------------------------------------------------

def _claim_study(tmp_path, name="claim") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'claim.db'}")
    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True)


def test_a_try_whose_maker_fell_silent_is_failed_and_made_again(tmp_path):
    """A maker killed mid-way (its beat stands still), and one killed before it wrote anything (no attrs at all):
    each is failed after 3 beats, and the next process makes the thing, seeing the dead try's token."""
    from pipeline.sweeps.tune import claim

    for attrs in ({"token": "t-dead", "maker": "elsewhere:1", "beat_s": 1, "beat": 4}, {}):
        study = _claim_study(tmp_path, name=f"claim-{len(attrs)}")
        dead = study.ask()
        for key, value in attrs.items():
            dead.set_user_attr(key, value)
        seen = []
        start = time.monotonic()
        made = claim.made_once(study, lambda token, earlier: seen.append([t.user_attrs.get("token") for t in earlier])
                               or {"by": token}, lambda made: None, beat_s=1, wait_s=60)
        assert 3 <= time.monotonic() - start < 15
        assert study.trials[0].state == optuna.trial.TrialState.FAIL
        assert seen == [["t-dead"] if attrs else []] and made == study.trials[1].user_attrs["made"]


def test_a_live_maker_is_waited_for_and_not_replaced(tmp_path):
    """A maker that beats is alive however long it takes: the others wait (here up to 4 s), then say who."""
    from pipeline.sweeps.tune import claim

    study = _claim_study(tmp_path)
    live = study.ask()
    live.set_user_attr("maker", "busy-host:42")
    with claim._beating(live, 1):
        with pytest.raises(TimeoutError, match="busy-host:42"):
            claim.made_once(study, lambda token, dead: pytest.fail("made twice"), lambda made: None, 1, wait_s=4.5)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING


def test_a_maker_whose_try_was_taken_over_undoes_what_it_made(tmp_path):
    """A maker silent long enough for another to fail its try (stopped with Ctrl-Z, cut off) undoes its work
    instead of recording it, and the thing is made once more."""
    from pipeline.sweeps.tune import claim

    study, undone, calls = _claim_study(tmp_path), [], []
    other = optuna.load_study(study_name="claim", storage=f"sqlite:///{tmp_path / 'claim.db'}")  # another process

    def make(token, dead):
        calls.append(token)
        if len(calls) == 1:  # as a watcher does when this try stood still
            other.tell(study.trials[0].number, state=optuna.trial.TrialState.FAIL)
        return {"n": len(calls)}

    assert claim.made_once(study, make, undone.append, beat_s=1, wait_s=60) == {"n": 2}
    assert undone == [{"n": 1}]


def _storage_file(store_uri: str) -> str:
    return _storage(store_uri)[len("sqlite:///"):]


def _read(path: str, sql: str, *args):
    """Rows from a SQLite store another process writes to; None while it holds the lock."""
    try:  # read-write: a journal left by the killed process is rolled back, as its next user would
        with contextlib.closing(sqlite3.connect(path, timeout=0.05)) as connection:
            return connection.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return None


def _kill_while_creating_runs(store_uri: str, params: dict) -> bool:
    """Start the tune in a fresh process and SIGKILL it once its `:runs` study exists and some of its runs do,
    before their ids are recorded; False when the moment was missed (the ids were recorded first)."""
    from pipeline.config.tune import build_tune

    name = f"optlab-tune-{build_tune(params).key()}:runs"
    args = [part for key, value in params.items() for part in (f"--{key}", value)]
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "tune", *args], cwd=REPO,
                               env={**os.environ, "MLFLOW_TRACKING_URI": store_uri}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    optuna_db, mlflow_db = _storage_file(store_uri), store_uri[len("sqlite:///"):]
    recorded = ("SELECT count(*) FROM studies s LEFT JOIN study_user_attributes a ON a.study_id = s.study_id "
                "AND a.key = 'runs' WHERE s.study_name = ? GROUP BY s.study_id HAVING count(a.key) = 0")
    made = ("SELECT count(*) FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id JOIN tags t ON "
            "t.run_uuid = r.run_uuid WHERE e.name = ? AND t.key = 'tune_attempt' AND r.status = 'RUNNING'")
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if _read(optuna_db, recorded, name) and (_read(mlflow_db, made, params["experiment"]) or [(0,)])[0][0] >= 2:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    return process.returncode == -signal.SIGKILL and bool(_read(optuna_db, recorded, name))


def test_kill_9_while_creating_the_runs_leaves_the_same_command_to_create_them_again(tracking, store_uri):
    """Before: every later run of the command waited 300 s, then exit 2, and the runs the killed command had
    made stayed RUNNING for good."""
    for _ in range(3):  # the moment lasts a fraction of a second: should it be missed, once more
        experiment = new_experiment()
        params = {"optimizers": "adam,sgd,momentum", "functions": "booth,ackley", "trials": "1", "seeds": "1",
                  "steps": "5", "starts": "2", "heartbeat_s": "1", "experiment": experiment}
        if _kill_while_creating_runs(store_uri, params):
            break
    else:
        pytest.fail("three times the runs were recorded before the kill landed")
    orphans = [r for r in runs_of(tracking, experiment) if r.info.status == "RUNNING"]
    assert orphans and {r.data.tags["tune_attempt"] for r in orphans} != {""}
    start = time.monotonic()
    again = cli("tune", *[part for key, value in params.items() for part in (f"--{key}", value)],
                env={"MLFLOW_TRACKING_URI": store_uri})
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.monotonic() - start < 240 and "Traceback" not in again.stderr
    assert f"its {len(orphans)} run(s) ended FAILED" in again.stdout
    runs = runs_of(tracking, experiment)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for orphan in orphans:
        after = tracking.get_run(orphan.info.run_id)
        assert after.info.status == "FAILED" and "stopped before recording it" in after.data.tags["error"]
    parents = [r for r in runs if r.data.tags.get("task") == "tune" and r.info.status == "FINISHED"]
    assert len(parents) == 1
    assert len([r for r in runs if r.data.tags.get("role") == "optimizer" and r.info.status == "FINISHED"]) == 6


def test_two_commands_started_together_share_one_parent(tracking, store_uri):
    experiment = new_experiment()
    command = [sys.executable, "-m", "pipeline", "tune", *QUICK, "--experiment", experiment]
    started = [subprocess.Popen(command, cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": store_uri},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in started]
    assert [process.returncode for process in started] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    runs = runs_of(tracking, experiment)
    assert len([r for r in runs if r.data.tags.get("task") == "tune"]) == 1
    assert len([r for r in runs if r.data.tags.get("role") == "optimizer"]) == 2
    assert all(r.info.status == "FINISHED" for r in runs)


# 4, 5. Ctrl-C and SIGTERM with two workers ------------------------------------------------------------------------

def _start_tune(store_uri: str, experiment: str) -> subprocess.Popen:
    """A two-worker toy tune with trials of some seconds, in a process group of its own (as a terminal's job)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", "tune", *LONG_TRIALS, "--experiment", experiment],
                            cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": store_uri, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=interruptible)


def _both_at_work(client, experiment: str, process: subprocess.Popen) -> set[int]:
    """The pids of the two workers once each runs a trial (tag `worker` host:pid)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        found = client.get_experiment_by_name(experiment)
        running = client.search_runs([found.experiment_id], "tags.role = 'trial' and attributes.status = 'RUNNING'") \
            if found else []
        pids = {int(run.data.tags["worker"].rsplit(":", 1)[1]) for run in running}
        if len(pids) == 2:
            return pids
    pytest.fail(f"two workers did not both start a trial (exit {process.poll()})")


def _stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if " INFO " not in line]  # MLflow's own log lines


def _all_ended(client, experiment: str) -> None:
    runs = runs_of(client, experiment)
    assert {r.info.status for r in runs} <= {"KILLED", "FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert [r.info.status for r in runs if r.data.tags.get("task") == "tune"] == ["KILLED"]


def test_ctrl_c_to_the_terminals_group_with_two_workers_is_one_line_and_every_run_ends(tracking, store_uri):
    """Before: exit 130 and every run KILLED, but a traceback from the spawned worker, which got SIGINT twice
    (from the terminal, and from the command)."""
    experiment = new_experiment()
    process = _start_tune(store_uri, experiment)
    pids = _both_at_work(tracking, experiment, process)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert _stderr_lines(err) == ["interrupted: open runs are marked KILLED"], err
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    _all_ended(tracking, experiment)


def _spawned_worker(pid: int) -> psutil.Process | None:
    """The worker process `pid` spawned (not multiprocessing's resource tracker), once there is one."""
    for child in psutil.Process(pid).children():
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if "spawn_main" in command:
            return child
    return None


def test_ctrl_c_while_a_worker_still_starts_is_one_line(tracking, store_uri):
    """The spawned worker still imports torch when Ctrl-C reaches the group: no traceback from it either."""
    experiment = new_experiment()
    process = _start_tune(store_uri, experiment)
    deadline, worker = time.monotonic() + 180, None
    while time.monotonic() < deadline and worker is None and process.poll() is None:
        time.sleep(0.05)
        worker = _spawned_worker(process.pid)
    assert worker is not None, "no worker process started"
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert _stderr_lines(err) == ["interrupted: open runs are marked KILLED"], err
    assert not psutil.pid_exists(worker.pid)
    _all_ended(tracking, experiment)


def test_sigterm_to_the_main_process_stops_every_worker_and_ends_every_run(tracking, store_uri):
    """`timeout` and schedulers send SIGTERM to the command alone. Before: it died at once, its spawned worker
    went on, and the runs stayed RUNNING."""
    experiment = new_experiment()
    process = _start_tune(store_uri, experiment)
    pids = _both_at_work(tracking, experiment, process)
    (worker,) = pids - {process.pid}
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err, err
    assert _stderr_lines(err) == ["terminated: open runs are marked KILLED"], err
    assert not psutil.pid_exists(worker), f"worker {worker} outlived the command"
    _all_ended(tracking, experiment)


def test_signals_in_a_thread_other_than_the_main_one_leave_handlers_alone():
    from pipeline.tune import stopped_by_signals

    before, seen = signal.getsignal(signal.SIGTERM), []

    def inside() -> None:
        with stopped_by_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    assert seen == [before]
    with stopped_by_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) == before


class _SignalsWhenFreed:
    """An object whose finalizer is where SIGINT lands, as it landed in SQLAlchemy's weakref callbacks."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))  # Python runs the handler here, inside the finalizer, which swallows what it raises


def test_a_stop_signal_that_lands_in_a_finalizer_is_raised_again(capfd):
    """Before: the KeyboardInterrupt was swallowed ("Exception ignored in ...") and, later signals being ignored
    while runs end, the command never stopped."""
    from pipeline.tune import stopped_by_signals

    with pytest.raises(KeyboardInterrupt):
        with stopped_by_signals(numbers=(signal.SIGINT,)):
            _SignalsWhenFreed()  # freed at once
            time.sleep(5)
            pytest.fail("the signal was swallowed")
    assert "Exception ignored" not in capfd.readouterr().err


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")
def test_with_a_gpu_each_the_workers_train_to_the_end_however_long(tracking, store_uri):
    """Several GPUs (simulated: CUDA_VISIBLE_DEVICES=0,0; CPU here): one worker process per GPU does every trial
    and this process only waits. The workers are held (SIGSTOP) for 32 s mid-trial, so their work outlasts the
    30 s stop timeout on any machine. Before: it waited 30 s, then terminated them mid-trial, their runs stayed
    RUNNING and it did the rest alone. Trials of 8 epochs: on a loaded machine the two workers' starts can lie
    seconds apart, and both must be mid-trial at once."""
    experiment = new_experiment()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "tune", "--task", "cifar", "--optimizers", "adam", "--trials", "2",
         "--seeds", "1", "--model", "tiny_cnn", "--data_dir", str(SHARED_SUBSET), "--train_limit", "256",
         "--val_limit", "128", "--epochs", "8", "--log_model", "false", "--system_metrics", "false",
         "--heartbeat_s", "60", "--experiment", experiment], cwd=REPO, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "MLFLOW_TRACKING_URI": store_uri, "CUDA_VISIBLE_DEVICES": "0,0"})
    workers = _both_at_work(tracking, experiment, process)
    assert process.pid not in workers  # with a GPU each, this process only waits
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(32)
    for pid in workers:
        os.kill(pid, signal.SIGCONT)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0 and "warning" not in err, err[-3000:]
    runs = runs_of(tracking, experiment)
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status, r.data.tags.get("error", "")) for r in runs]
    done_by = {r.data.tags["worker"] for r in runs if r.data.tags.get("role") in ("trial", "seed")}
    assert {int(worker.rsplit(":", 1)[1]) for worker in done_by} == workers


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_run_again(tracking, store_uri):
    """A worker killed (or interrupted) between Optuna's ask and its first heartbeat leaves a RUNNING trial Optuna
    never finds stale. Before: it held the study's place for good, and every later command waited forever."""
    from pipeline.config.tune import build_tune

    params = {"optimizers": "adam", "functions": "booth", "trials": "1", "seeds": "1", "steps": "5", "starts": "2",
              "heartbeat_s": "1", "experiment": new_experiment()}
    cfg = build_tune(params)
    study = optuna.create_study(storage=_storage(store_uri), study_name=cfg.study_name(cfg.children[0]),
                                direction="minimize")
    study.ask()  # from a storage without heartbeats: as a worker killed before its first one leaves it
    done = subprocess.run([sys.executable, "-m", "pipeline", "tune",
                           *[part for key, value in params.items() for part in (f"--{key}", value)]], cwd=REPO,
                          env={**os.environ, "MLFLOW_TRACKING_URI": store_uri}, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    from pipeline.sweeps.tune import search

    study = optuna.load_study(study_name=study.study_name, storage=_storage(store_uri))
    # the stuck trial is failed and a copy queued; the queued default setting fills the one-trial budget, so the
    # copy is never run (surplus)
    assert search.counts(study) == {"complete": 1, "pruned": 0, "running": 0, "waiting": 0, "fail": 0,
                                    "surplus": 1, "retried": 1}
    assert all(r.info.status == "FINISHED" for r in runs_of(tracking, params["experiment"]))


def test_a_ctrl_c_handled_after_passing_through_pyrun_string_still_exits_130(tmp_path):
    """torch runs code through PyRun_String (pybind11's exec) while it imports; a Ctrl-C that lands there makes
    CPython mark the KeyboardInterrupt unhandled even though the command handles it, and the interpreter then
    ended itself by SIGINT (-2) after printing the one line (CI saw it in both Ctrl-C tests above). The command
    clears that mark once main has returned."""
    script = ("import ctypes, sys\n"
              "from pipeline.core.signals import forget_handled_interrupt\n"
              "run = ctypes.pythonapi.PyRun_String\n"
              "run.restype, run.argtypes = ctypes.py_object, [ctypes.c_char_p, ctypes.c_int, ctypes.py_object,"
              " ctypes.py_object]\n"
              "try:\n    run(b'raise KeyboardInterrupt', 257, {}, {})\nexcept KeyboardInterrupt:\n    pass\n"
              "if sys.argv[1] == 'clear':\n    forget_handled_interrupt()\n"
              "sys.exit(130)\n")
    import ctypes

    try:
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt")
    except ValueError:
        pytest.skip("this interpreter keeps the mark elsewhere (3.12+)")
    (tmp_path / "handled.py").write_text(script, encoding="utf-8")  # run with -m, as `python -m pipeline` runs
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    codes = {how: subprocess.run([sys.executable, "-m", "handled", how], cwd=tmp_path, env=env,
                                 preexec_fn=interruptible).returncode for how in ("clear", "keep")}
    assert codes == {"clear": 130, "keep": -signal.SIGINT}, codes

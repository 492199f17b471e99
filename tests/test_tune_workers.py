"""Many workers on one study: the exact budget when two ask at once, seed indices, two real worker processes on
the local default storage, and a worker killed with SIGKILL mid-trial whose trial is failed and retried."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import optuna
import pytest
from conftest import REPO, cli, new_experiment, run_cli, runs_of
from optuna.trial import TrialState
from test_tune import _studies

from pipeline.sweeps.tune import batch, search


class Plan(NamedTuple):  # what batch.in_turn reads of a StudyPlan
    label: str
    workload: str


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_when_two_workers_ask_for_the_last_place_the_later_trial_is_surplus_and_never_runs():
    study, budget = _study(), 2
    study.tell(study.ask(), 1.0)
    first, second = study.ask(), study.ask()  # two workers, one place left
    assert search._within_budget(study, first, budget) and not search._within_budget(study, second, budget)
    ran = []
    study.tell(first, 2.0)
    study.tell(second, state=TrialState.FAIL)
    assert not search.has_room(study, budget) and search.is_done(study, budget)
    search.run_one(study, budget, lambda trial: ran.append(trial.number) or 0.0)  # a late worker
    assert ran == [] and search.counts(study) == {"complete": 2, "pruned": 0, "running": 0, "waiting": 0,
                                                  "fail": 1, "surplus": 1, "retried": 0}


def test_with_as_many_studies_as_workers_a_worker_takes_all_that_is_left_of_a_study_else_its_part():
    """A toy batch of every trial left costs about what one trial does: two workers over 36 studies take whole
    studies (before, each took half of every study and ran twice the descents); over one study they split it."""
    study, budget = _study(), 8
    study.tell(study.ask(), 1.0)
    study.ask()  # running elsewhere
    assert batch.share(study, budget, workers=2, studies=36) == 6
    assert batch.share(study, budget, workers=2, studies=1) == 3
    assert batch.share(study, budget, workers=1) == 6
    study.enqueue_trial({"x": 1.0})  # a waiting retry counts among what is left
    assert batch.share(study, budget, workers=2, studies=2) == 6  # 1 waiting + 5 places
    for _ in range(6):
        study.ask()
    assert batch.share(study, budget, workers=2, studies=36) == 1  # nothing left: still one ask (it ends surplus)


def test_workers_taking_whole_studies_start_on_different_workloads_and_each_visits_every_study_once():
    """Two workers over the demo's 36 studies (optimizer-major: each optimizer on Rosenbrock, then on Ackley):
    worker 0 begins with every Rosenbrock study, worker 1 with every Ackley one, then each goes on round; so each
    mostly draws one function's picture backgrounds."""
    plans = [Plan(f"{optimizer}-{workload}", workload) for optimizer in ("adam", "sgd", "lion")
             for workload in ("rosenbrock", "ackley")]
    first, second = batch.in_turn(plans, 0, 2), batch.in_turn(plans, 1, 2)
    assert [p.label for p in first] == ["adam-rosenbrock", "sgd-rosenbrock", "lion-rosenbrock", "adam-ackley",
                                        "sgd-ackley", "lion-ackley"]
    assert [p.label for p in second] == [p.label for p in first[3:] + first[:3]]
    assert [p.label for p in batch.in_turn(plans, 2, 3)] == ["sgd-ackley", "lion-ackley", "adam-rosenbrock",
                                                            "sgd-rosenbrock", "lion-rosenbrock", "adam-ackley"]
    assert batch.in_turn(plans[:1], 1, 2) == plans[:1]  # fewer studies than workers: they split each, in one order
    assert batch.in_turn(plans, 0, 1) == first


def test_a_retry_is_run_before_new_points_and_keeps_the_trials_params():
    study, budget = _study(), 2
    dead = study.ask()
    dead.suggest_float("lr", 1e-3, 1.0, log=True)
    study.tell(dead, state=TrialState.FAIL)
    search.retry(study, study.trials[0])
    assert search.counts(study)["waiting"] == 1 and search.has_room(study, budget)
    search.run_one(study, budget, lambda trial: trial.suggest_float("lr", 1e-3, 1.0, log=True))
    retried = study.trials[1]
    assert retried.state == TrialState.COMPLETE and retried.params == study.trials[0].params
    assert search.counts(study)["retried"] == 1 and search.counts(study)["fail"] == 0


def test_seed_indices_follow_trial_numbers_whatever_order_workers_ask_in():
    study = _study()
    trials = [study.ask() for _ in range(3)]
    assert [search.seed_index(study, t) for t in (trials[2], trials[0], trials[1])] == [2, 0, 1]
    study.tell(trials[1], state=TrialState.FAIL)  # its seed is free again: the next new trial takes it
    assert search.seed_index(study, study.ask()) == 1


def test_a_study_that_keeps_failing_gives_up_instead_of_looping():
    study, budget = _study(), 2
    for _ in range(3):
        search.run_one(study, budget, lambda trial: 1 / 0)
    assert search.counts(study)["fail"] == 3 and not search.has_room(study, budget) and search.is_done(study, budget)


def _trial_runs(client, experiment):
    return [r for r in runs_of(client, experiment) if r.data.tags.get("role") == "trial"]


def test_two_worker_processes_share_the_local_study_and_run_no_trial_twice(tracking, store_uri):
    """One study, two workers: they start together and split its trials (batch.share)."""
    experiment, k = new_experiment(), 4
    done = run_cli("tune", "--optimizers", "adam", "--functions", "ackley", "--trials", str(k),
                   "--seeds", "1", "--steps", "800", "--tolerance", "0", "--starts", "8", "--workers", "2",
                   "--experiment", experiment, env={"MLFLOW_TRACKING_URI": store_uri})
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _trial_runs(tracking, experiment)
    assert len({r.data.tags["worker"] for r in trials}) == 2  # both processes took trials
    key = trials[0].data.tags["study"].split(":")[0].removeprefix("optlab-tune-")
    for label, study in _studies(store_uri, key, "trials").items():
        counts = search.counts(study)
        assert counts["complete"] + counts["pruned"] == k, (label, counts)
        ran = sorted(int(r.data.tags["trial"]) for r in trials if r.data.tags["optimizer"] == label.split("-")[0])
        assert ran == sorted(t.number for t in study.trials if not t.user_attrs.get("surplus")), label
    assert all(r.info.status == "FINISHED" for r in runs_of(tracking, experiment))


def _take_waiting(url, found):
    """A worker's loop, bare: take waiting trials (Optuna's ask) and tell each, until none waits."""
    import warnings  # noqa: PLC0415

    warnings.simplefilter("ignore")  # Optuna's note that heartbeats are meant for optimize()
    study = optuna.load_study(study_name="race", storage=search.open_storage(url, 60, None))
    taken, refused = [], 0
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        taken.append(trial.number)
        try:
            study.tell(trial, 1.0)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # another process took it too
            refused += 1
    found.put((taken, refused))


def test_on_sqlite_processes_that_take_waiting_trials_at_once_never_take_the_same_one(tmp_path):
    """Four processes empty a queue of 120 waiting trials at once (as workers take retries and seed reruns).
    Before: Python's sqlite3 began no transaction for Optuna's read before its write, so two processes took
    the same trial about once in eleven, and the later one's tell raised 'Cannot tell a COMPLETE trial'."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="race", storage=search.open_storage(url, 60, None))
    for index in range(120):
        study.enqueue_trial({"x": index}, skip_if_exists=False)
    context = multiprocessing.get_context("spawn")
    found = context.Queue()
    workers = [context.Process(target=_take_waiting, args=(url, found)) for _ in range(4)]
    for worker in workers:
        worker.start()
    results = [found.get(timeout=240) for _ in workers]
    for worker in workers:
        worker.join()
    taken = [number for numbers, _ in results for number in numbers]
    assert sum(refused for _, refused in results) == 0 and len(taken) == len(set(taken)) >= 120
    assert all(len(numbers) > 0 for numbers, _ in results)  # every process took some


def test_a_worker_killed_mid_trial_is_failed_and_retried_and_a_restarted_worker_completes(tracking, store_uri):
    experiment = new_experiment()
    params = ("tune", "--optimizers", "adam", "--functions", "ackley", "--trials", "2", "--seeds", "1",
              "--steps", "3000", "--tolerance", "0", "--starts", "8", "--heartbeat_s", "1",
              "--experiment", experiment)
    worker = subprocess.Popen([sys.executable, "-m", "pipeline", *params], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "MLFLOW_TRACKING_URI": store_uri})
    deadline, running = time.monotonic() + 120, []
    while time.monotonic() < deadline and not running:
        time.sleep(0.3)
        found = tracking.get_experiment_by_name(experiment)
        running = [r for r in (_trial_runs(tracking, experiment) if found else []) if r.info.status == "RUNNING"]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert running, "no trial started within 120 s"
    killed = running[0].info.run_id
    time.sleep(3.5)  # its heartbeats stopped: past the grace period of 3 heartbeats
    again = cli(*params, env={"MLFLOW_TRACKING_URI": store_uri})
    assert again.returncode == 0, again.stderr[-3000:]
    assert tracking.get_run(killed).info.status == "FAILED"
    assert "heartbeats" in tracking.get_run(killed).data.tags["error"]
    key = running[0].data.tags["study"].split(":")[0].removeprefix("optlab-tune-")
    (study,) = _studies(store_uri, key, "trials").values()
    counts = search.counts(study)
    # The killed worker's batch (both trials descend together): each of its runs FAILED, each trial retried.
    failed = [r for r in runs_of(tracking, experiment) if r.info.status == "FAILED"]
    assert all("heartbeats" in r.data.tags["error"] and r.data.tags["role"] == "trial" for r in failed)
    assert counts["complete"] == 2 and counts["retried"] == len(failed) and counts["running"] == 0
    statuses = [r.info.status for r in runs_of(tracking, experiment)]
    assert 1 <= statuses.count("FAILED") <= 2 and statuses.count("RUNNING") == 0


def test_on_a_machine_with_several_gpus_each_worker_sees_one():
    from pipeline.tune import gpu_plan

    assert gpu_plan(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert gpu_plan(2, ["3", "5", "7"]) == ["3", "5"]
    assert gpu_plan(3, ["0"]) == [None, None, None] and gpu_plan(2, []) == [None, None]


@pytest.mark.parametrize("visible,task,workers,expected", [("0,1,2,3", "cifar", "0", 4), ("0", "cifar", "0", 1),
                                                           ("", "cifar", "0", 1), ("0,1,2,3", "toy", "0", 1),
                                                           ("0,1,2,3", "cifar", "2", 2)])
def test_without_workers_a_cifar_tune_takes_one_worker_per_visible_gpu(monkeypatch, visible, task, workers, expected):
    """Issue 16: workers not given (0) is one worker per visible GPU; checked on the plan, as CI has no GPU."""
    from pipeline.config.tune import build_tune
    from pipeline.tune import worker_count

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert build_tune({"task": task}).workers == 0  # the default
    assert worker_count(build_tune({"task": task, "workers": workers})) == expected


def test_a_trial_interrupted_by_ctrl_c_is_queued_again_with_its_point():
    study, budget = _study(), 2

    def interrupted(trial):
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search.run_one(study, budget, interrupted)
    assert search.counts(study)["retried"] == 1 and search.counts(study)["waiting"] == 1
    search.run_one(study, budget, lambda trial: trial.suggest_float("lr", 1e-3, 1.0, log=True))
    assert study.trials[1].state == TrialState.COMPLETE and study.trials[1].params == study.trials[0].params


def test_the_seed_reruns_use_the_best_trial_ties_going_to_the_lowest_number():
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    for value in (0.3, 0.7, 0.7, 0.1):
        study.tell(study.ask(), value)
    assert search.best_trial(study).number == 1
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for value in (5.0, 2.0, 2.0):
        study.tell(study.ask(), value)
    assert search.best_trial(study).number == 1

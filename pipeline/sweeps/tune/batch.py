"""Several trials of one study at once, for samplers that know their next points without the last results (qmc,
grid, random): ask for a batch, run it as one (a toy study's trials descend together), tell each its score.

The rules of search.run_one hold for every trial of a batch: a waiting retry is asked first; each trial gets a
heartbeat and the mark `started` at once; one beyond the budget (another worker asked at the same moment) ends
FAILED as `surplus` before anything runs; the objective's own failure fails the batch's trials without raising;
Ctrl-C (or SIGTERM) queues every point again and is raised. Heartbeats go on for every trial of the batch from one
thread while it runs, as Optuna's own thread does for study.optimize's one trial.
"""
from __future__ import annotations

import contextlib
import math
import threading
import warnings
from typing import Any, Callable, Iterator, Sequence, TypeVar

import optuna
from optuna.trial import Trial, TrialState

from pipeline.core.background import in_background
from pipeline.sweeps.tune import search

BATCHED = ("qmc", "grid", "random")  # samplers whose points do not depend on the scores of running trials

Plan = TypeVar("Plan")  # a study's plan (config.tune.StudyPlan): anything with a `workload`
Prepare = Callable[[Trial], Any]  # called once a trial is asked (and is within the budget): its setting
Objective = Callable[[Sequence[Trial], Sequence[Any]], Sequence["float | BaseException"]]


def whole_studies(workers: int, studies: int) -> bool:
    """Whether local workers take whole studies (with at least as many studies as workers) rather than split each:
    a batched descent of every trial of a study costs about what one of a single trial does (the per-step work is
    the same), so workers spread over the studies where there are enough of them."""
    return studies >= workers


def in_turn(plans: Sequence[Plan], index: int, workers: int) -> list[Plan]:
    """The order local worker `index` of `workers` visits the studies in. Where they take whole studies: grouped
    by workload, each worker starting at its own part (worker 1 of 2 at the second half) and going on round, so
    that each descends mostly one workload (a toy function's picture backgrounds, viz/paths.py, or a workload's
    data, are then made in one process, not in all). Otherwise every worker's order is the tune's, so that they
    split each study together."""
    if not whole_studies(workers, len(plans)):
        return list(plans)
    rank = {workload: place for place, workload in enumerate(dict.fromkeys(plan.workload for plan in plans))}
    grouped = sorted(plans, key=lambda plan: rank[plan.workload])
    begin = index * len(grouped) // max(1, workers)
    return grouped[begin:] + grouped[:begin]


def share(study: optuna.Study, budget: int, workers: int, studies: int = 1) -> int:
    """How many trials one of `workers` local workers takes from a study at a time: what is left (waiting retries,
    then places under the budget), all of it or its part (whole_studies)."""
    found = search.counts(study)
    live = found["complete"] + found["pruned"] + found["running"] + found["waiting"]
    left = found["waiting"] + max(0, budget - live)
    return max(1, left if whole_studies(workers, studies) else math.ceil(left / max(1, workers)))


def run_batch(study: optuna.Study, budget: int, size: int, prepare: Prepare, objective: Objective) -> int:
    """Ask for up to `size` trials of `study` and run those within the budget together; returns how many ran.
    `objective(trials, settings)` gives one score per trial, or an exception for a trial that failed."""
    trials: list[Trial] = []
    settings: list[Any] = []
    with _beating(study, trials):
        try:
            for _ in range(size):
                trial = _ask(study, budget)
                if trial is None:
                    break
                trials.append(trial)
                settings.append(prepare(trial))
            if not trials:
                return 0
            outcomes: Sequence[Any] = objective(trials, settings)
        except KeyboardInterrupt:  # not the points' fault: each is queued again for the next run
            for trial in trials:
                _end(study, trial, None, retry=True)
            raise
        except Exception as error:  # noqa: BLE001 - the objective reported it; its trials fail, the tune goes on
            outcomes = [error] * len(trials)
    for trial, outcome in zip(trials, outcomes):
        _end(study, trial, outcome)
    return len(trials)


def _ask(study: optuna.Study, budget: int) -> Trial | None:
    """A new trial (a waiting retry first), started; None, and the trial ended as surplus, past the budget."""
    with warnings.catch_warnings():  # Optuna's heartbeats are for study.optimize; a batch beats in _beating
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    search._mark_started(trial)
    if search._within_budget(study, trial, budget):
        return trial
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    return None


def _end(study: optuna.Study, trial: Trial, outcome: Any, retry: bool = False) -> None:
    """Tell the trial its score (FAILED for an exception); with `retry`, queue its point again first."""
    if retry:
        (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
        search.retry(study, frozen)
    if isinstance(outcome, float) and math.isfinite(outcome):
        study.tell(trial, outcome)
    else:
        study.tell(trial, state=TrialState.FAIL)


@contextlib.contextmanager
def _beating(study: optuna.Study, trials: list[Trial]) -> Iterator[None]:
    """A heartbeat for every trial in `trials` (a list that grows as trials are asked) every interval, from a
    thread, while the block runs; nothing for a storage without heartbeats."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial in list(trials):
                with contextlib.suppress(Exception):  # a storage that hiccups misses this beat, not the next
                    storage.record_heartbeat(trial._trial_id)

    with in_background(beat, stop, "optlab-heartbeats"):
        yield

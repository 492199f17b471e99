"""Optuna for `tune`: the storage workers share, samplers and pruners, and a worker's share of a study with an
exact budget. Optuna samples, prunes, stores and fails the trials of dead workers (heartbeats); this module
only decides which trial a worker may run so that every study ends with exactly its budget of counted trials.

Counted trials are COMPLETE or PRUNED. A worker runs a trial only while fewer than `budget` trials are live
(counted, running or waiting); should two workers ask at once for the last place, the one whose trial has the
higher number sees it is surplus and ends it FAILED (user attr `surplus`) before running anything. A trial whose
worker stops sending heartbeats is failed by whichever worker notices, and retried once per death.
"""
from __future__ import annotations

import math
import random
import time
import warnings
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from pipeline.core.errors import UsageError, one_line
from pipeline.core.sqlite import write_ahead
from pipeline.sweeps.tune.results import best_of

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
MAX_RETRIES = 3  # a trial whose workers keep dying is retried at most this often
GRACE_BEATS = 3  # heartbeats a trial may miss before it counts as dead
SCHEMA_TRIES = 4  # attempts to open a storage whose tables another worker is creating
Bounds = dict[str, tuple[float, float]]  # dimension -> (low, high), searched log-uniform
_UNSTARTED: dict[tuple[str, int], float] = {}  # (study, trial number) -> when this process first saw it RUNNING


class Surplus(Exception):
    """This worker's new trial would exceed the study's budget: it ends unrun."""


def redacted(url: str) -> str:
    """A database URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url  # noqa: PLC0415

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported as given, minus anything after '@'
        return url.split("@")[-1]


# A URL that names no driver gets the first installed of these (SQLAlchemy's own default, psycopg 3 or
# mysqlclient, is not in requirements.txt): scheme -> (driver, module, pip package), in order of preference.
DRIVERS = {"postgresql": (("psycopg2", "psycopg2", "psycopg2-binary"), ("psycopg", "psycopg", "psycopg")),
           "mysql": (("pymysql", "pymysql", "pymysql"), ("mysqldb", "MySQLdb", "mysqlclient"))}


def engine_url(url: str) -> str:
    """The URL SQLAlchemy is given: `postgresql://...` as `postgresql+psycopg2://...` (the installed driver);
    a URL whose driver is not installed is one UsageError."""
    import importlib.util  # noqa: PLC0415

    scheme, _, rest = url.partition("://")
    if scheme not in DRIVERS:
        return url
    for driver, module, _ in DRIVERS[scheme]:
        if importlib.util.find_spec(module):
            return f"{scheme}+{driver}://{rest}"
    raise UsageError(f"storage: no {scheme} driver is installed for {redacted(url)}: pip install "
                     f"{DRIVERS[scheme][0][2]}")


def open_storage(url: str, heartbeat_s: int, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None) -> Any:
    """Optuna's RDB storage at `url` (SQLite for one machine, PostgreSQL for many), with heartbeats; a database
    that cannot be reached is one UsageError. Workers that start together on an empty database race to create
    its tables: the losers try again, and then find them."""
    from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError  # noqa: PLC0415

    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else \
        {"pool_pre_ping": True, "connect_args": {} if "connect_timeout=" in url else {"connect_timeout": 10}}
    target = engine_url(url)
    write_ahead(url)  # SQLite: workers' reads no longer wait for each other's writes (core/sqlite.py)
    for attempt in range(SCHEMA_TRIES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                storage = optuna.storages.RDBStorage(target, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                                                     grace_period=GRACE_BEATS * heartbeat_s,
                                                     heartbeat_stale_trial_callback=on_stale)
                if url.startswith("sqlite"):
                    _one_transaction_at_a_time(storage.engine)
                return storage
            except (IntegrityError, ProgrammingError) as error:
                if attempt + 1 == SCHEMA_TRIES:
                    raise UsageError(f"storage: cannot open {redacted(url)} ({one_line(error)})") from None
                time.sleep(1.0 + random.random())
            except (OperationalError, InterfaceError) as error:
                if url.startswith("sqlite"):  # a file that cannot be opened or written
                    raise UsageError(f"storage: cannot open {redacted(url)} ({one_line(error)})") from None
                raise UsageError(f"storage: cannot open {redacted(url)}: could not connect to its database server "
                                 f"({_reason(error)}); check that it runs and that host, port, database and login "
                                 "(PGPASSFILE) are right") from None
            except Exception as error:  # noqa: BLE001 - any driver's error: the user's URL or database
                raise UsageError(f"storage: cannot open {redacted(url)} ({one_line(error)})") from None
    raise AssertionError("unreachable")


def _one_transaction_at_a_time(engine: Any) -> None:
    """SQLite transactions that take the write lock as they begin. Python's sqlite3 begins one only at the first
    write, so Optuna's read-then-write steps (take a waiting trial, fail a stale one) ran in two processes at once
    and both took the same trial: one told it, the other found it COMPLETE. (PostgreSQL locks the row it reads.)"""
    from sqlalchemy import event  # noqa: PLC0415

    @event.listens_for(engine, "connect")
    def _connect(connection: Any, _record: Any) -> None:
        connection.isolation_level = None  # SQLAlchemy says when a transaction begins, not the driver

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections Optuna opened to create its tables begin the old way


def _reason(error: Exception) -> str:
    """The driver's own words for a failed connection (SQLAlchemy wraps them in its type and a link), one line."""
    cause = getattr(error, "orig", None) or error
    return " ".join(str(cause).split())[:300] or type(cause).__name__


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a dead worker's trial again, with the same params (Optuna's retry callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)


def grid(dims: tuple[str, ...], bounds: Bounds, budget: int) -> dict[str, list[float]]:
    """Log-spaced values per dimension: `budget` of them for one dimension, a square grid of at least `budget`
    points for two (a grid study stops at `budget` of them, in the sampler's seeded order)."""
    side = budget if len(dims) == 1 else math.ceil(budget ** (1 / len(dims)))
    values = {}
    for dim in dims:
        low, high = (math.log10(b) for b in bounds[dim])
        values[dim] = [10 ** (low + (high - low) * i / max(side - 1, 1)) for i in range(side)]
    return values


def make_sampler(name: str, dims: tuple[str, ...], bounds: Bounds, budget: int, seed: int) -> Any:
    """The sampler, seeded alike for every study: qmc, grid and random propose the same points to every
    optimizer that searches the same dimensions."""
    samplers = optuna.samplers
    if name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False)
    if name == "grid":
        return samplers.GridSampler(grid(dims, bounds, budget), seed=seed)
    if name == "tpe":
        return samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, budget // 2)))
    return samplers.RandomSampler(seed=seed)


def make_pruner(name: str, epochs: int) -> Any:
    """Hyperband over epochs (val_acc reported after each), or none."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def suggest(trial: Trial, dims: tuple[str, ...], bounds: Bounds) -> dict[str, float]:
    """The trial's point: each searched dimension log-uniform within its bounds."""
    return {dim: trial.suggest_float(dim, *bounds[dim], log=True) for dim in dims}


def classified(study: optuna.Study) -> list[tuple[FrozenTrial, str]]:
    """Each trial with its state name (lower case); failed ones told apart as `surplus` (never run) and
    `retried` (their worker died and a copy was queued), so `fail` is a trial that failed by itself."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", ())}
    found = []
    for trial in trials:
        state = trial.state.name.lower()
        if trial.state == TrialState.FAIL and trial.user_attrs.get("surplus"):
            state = "surplus"
        elif trial.state == TrialState.FAIL and trial.number in retried:
            state = "retried"
        found.append((trial, state))
    return found


def counts(study: optuna.Study) -> dict[str, int]:
    """How many trials are in each state of `classified`."""
    found = dict.fromkeys(("complete", "pruned", "running", "waiting", "fail", "surplus", "retried"), 0)
    for _, state in classified(study):
        found[state] += 1
    return found


def is_done(study: optuna.Study, budget: int) -> bool:
    """Every counted trial is in, or so many failed that the study gives up; nothing runs or waits."""
    found = counts(study)
    settled = not (found["running"] or found["waiting"])
    return settled and (found["complete"] + found["pruned"] >= budget or found["fail"] >= max(3, budget))


def has_room(study: optuna.Study, budget: int) -> bool:
    """Whether a worker may start a trial now: one waits (a retry), or fewer than `budget` are live."""
    found = counts(study)
    if found["fail"] >= max(3, budget):
        return False
    return bool(found["waiting"]) or found["complete"] + found["pruned"] + found["running"] < budget


def fail_stale(study: optuna.Study, grace_s: float) -> None:
    """Fail (and queue again) the trials of workers that stopped sending heartbeats, and those of workers that
    died before their first (Optuna never finds those stale): RUNNING, never `started`, for `grace_s` here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = time.monotonic()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        first = _UNSTARTED.setdefault((study.study_name, trial.number), now)
        if trial.user_attrs.get("started") == trial.number or now - first <= grace_s:
            continue
        try:  # the process that ends it queues it again; another that tried at once finds it ended
            retry(study, study.tell(trial.number, state=TrialState.FAIL))
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            pass


def _within_budget(study: optuna.Study, trial: Trial, budget: int) -> bool:
    live = sorted(t.number for t in study.get_trials(deepcopy=False, states=LIVE))
    return trial.number not in live or live.index(trial.number) < budget


def run_one(study: optuna.Study, budget: int, objective: Callable[[Trial], float]) -> None:
    """Run one trial of `study` (a waiting retry first), unless it turns out surplus. The objective's own
    failures end the trial FAILED and are not raised (the objective reports them); Ctrl-C is, and the
    interrupted point is queued again."""
    def guarded(trial: Trial) -> float:
        _mark_started(trial)
        if not _within_budget(study, trial, budget):
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number} is beyond the budget of {budget}")
        try:
            return objective(trial)
        except KeyboardInterrupt:  # not the point's fault: the same point is queued for the next run
            (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
            retry(study, frozen)
            raise

    study.optimize(guarded, n_trials=1, catch=(Exception,))


def _mark_started(trial: Trial) -> None:
    """A heartbeat, then the mark `started` (this trial's number: a retry inherits its original's user attrs): a
    trial marked so is one Optuna finds stale should its worker die; one never marked, fail_stale fails."""
    storage = trial.storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)():
        storage.record_heartbeat(trial._trial_id)  # the id the trial was asked with: no lookups in the storage
    trial.set_user_attr("started", trial.number)


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best complete trial, ties to the lowest number (the rule the tuned table reports by)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise ValueError(f"study {study.study_name} has no complete trial")
    return best_of(done, study.direction == optuna.study.StudyDirection.MAXIMIZE)


def seed_index(study: optuna.Study, trial: Trial) -> int:
    """Which of the seed reruns this trial is: a retry keeps its own; a new one takes the lowest index no
    live trial with a lower number holds (those without one yet take theirs first, in number order)."""
    if "seed_index" in trial.user_attrs:
        return int(trial.user_attrs["seed_index"])
    taken: set[int] = set()
    for other in sorted(study.get_trials(deepcopy=False, states=LIVE), key=lambda t: t.number):
        if other.number >= trial.number:
            break
        held = other.user_attrs.get("seed_index")
        taken.add(int(held) if held is not None else min(set(range(len(taken) + 1)) - taken))
    index = min(set(range(len(taken) + 1)) - taken)
    trial.set_user_attr("seed_index", index)
    return index

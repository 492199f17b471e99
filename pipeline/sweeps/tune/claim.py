"""Something many processes sharing an Optuna storage need, made once (a tune's MLflow runs): by the first to ask,
found by the rest, and made again by the next to look when its maker dies on the way.

Each try is a trial of one study. The lowest-numbered live one makes the thing (a later one, asked at the same
moment, ends unrun: `surplus`); its result is the COMPLETE trial's user attr `made`. While it works, a thread
counts up its user attr `beat` every `beat_s` seconds; a watcher that sees the count stand still for
GRACE_BEATS beats (on its own clock: machines' clocks may differ) ends the try FAILED and makes the thing itself.
A maker that finds its try failed meanwhile (it fell silent: stopped, cut off) undoes what it made and waits for
the new one. (Optuna's own heartbeats do not serve here: a trial killed before its first one never goes stale.)
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
import warnings
from typing import Any, Callable, Iterator

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from pipeline.core.background import in_background
from pipeline.sweeps.tune.search import GRACE_BEATS

POLL_S = 1.0  # seconds between looks at a try another process makes
Made = dict[str, Any]
_MAKING = (TrialState.RUNNING, TrialState.COMPLETE)  # a try with a lower number in these makes it, not this one


def made_once(study: optuna.Study, make: Callable[[str, list[FrozenTrial]], Made], undo: Callable[[Made], None],
              beat_s: int, wait_s: float) -> Made:
    """What `make(token, dead)` returns, made in one process however many call this at once. `token` names this
    try (a maker tags what it makes with it); `dead` are the failed earlier tries that began (user attrs `token`
    and `maker`, host:pid), whose leftovers `make` cleans up. Raises TimeoutError naming the maker when a live
    one takes longer than `wait_s`."""
    seen: dict[int, tuple[Any, float]] = {}
    deadline = time.monotonic() + wait_s
    while True:
        trials = study.get_trials(deepcopy=False)
        done = [t.user_attrs["made"] for t in trials if t.state == TrialState.COMPLETE and "made" in t.user_attrs]
        if done:
            return done[0]
        live = [t for t in trials if t.state == TrialState.RUNNING and _alive(study, t, seen, beat_s)]
        if not live:
            _try(study, make, undo, beat_s)
            deadline = time.monotonic() + wait_s
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(live[0].user_attrs.get("maker", "another process"))
        time.sleep(POLL_S)


def _alive(study: optuna.Study, trial: FrozenTrial, seen: dict[int, tuple[Any, float]], beat_s: int) -> bool:
    """Whether the try's beat moved within the grace period (on this process's clock); a try that stood still
    past it is ended FAILED here (if no other process did first)."""
    now, beat = time.monotonic(), trial.user_attrs.get("beat")
    if trial.number not in seen or seen[trial.number][0] != beat:
        seen[trial.number] = (beat, now)
        return True
    grace = GRACE_BEATS * max(beat_s, int(trial.user_attrs.get("beat_s", beat_s)))
    if now - seen[trial.number][1] <= grace:
        return True
    with contextlib.suppress(UpdateFinishedTrialError, ValueError):  # ValueError: another process told it first
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return False


def _try(study: optuna.Study, make: Callable[[str, list[FrozenTrial]], Made], undo: Callable[[Made], None],
         beat_s: int) -> None:
    """One try here: surplus when another began at the same moment, else make it and record it."""
    with warnings.catch_warnings():  # Optuna's heartbeats are for study.optimize; a try keeps its own `beat`
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    if [t for t in study.get_trials(deepcopy=False, states=_MAKING) if t.number < trial.number]:
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return
    token = uuid.uuid4().hex
    dead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if "token" in t.user_attrs]
    try:  # the token before anything is made: a successor finds whatever this try tagged with it
        for key, value in {"token": token, "maker": f"{socket.gethostname()}:{os.getpid()}", "beat_s": beat_s}.items():
            trial.set_user_attr(key, value)
        with _beating(trial, beat_s):
            made = make(token, dead)
    except BaseException:  # an error or Ctrl-C: what was made ended with it (FAILED, KILLED); the next try begins anew
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    try:
        trial.set_user_attr("made", made)
        study.tell(trial, 0.0)
    except (UpdateFinishedTrialError, ValueError):  # another process ended this try: it makes its own
        undo(made)


@contextlib.contextmanager
def _beating(trial: Trial, beat_s: int) -> Iterator[None]:
    """Count up the trial's user attr `beat` every `beat_s` seconds from a thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while not stop.wait(beat_s):
            count += 1
            try:
                trial.set_user_attr("beat", count)
            except UpdateFinishedTrialError:  # another process ended this try
                return
            except Exception:  # noqa: BLE001 - a storage that hiccups: this beat is missed, the next may land
                continue

    with in_background(beat, stop, "optlab-beat"):
        yield

"""A background sender for run logging: calls leave the training thread, keep their order, and are retried
until the tracking server answers again, so an outage loses nothing. Knows nothing of MLflow itself: the
caller says which errors are permanent (a refused request, an unwritable folder), and those are retried only a
few times, then given up and reported once, so they never hold back what is queued behind them."""
from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Callable

from pipeline.core.errors import one_line

RETRY_FIRST_S = 0.5  # first pause after a failed call; doubles up to RETRY_MAX_S
RETRY_MAX_S = 10.0
PERMANENT_TRIES = 3  # attempts at a call that fails with a permanent error before it is given up

Call = Callable[[], object]
GiveUp = Callable[[BaseException], None]


def never_permanent(error: BaseException) -> bool:
    """The default: every failure may be an outage, so every call is retried until it goes through."""
    return False


class Outbox:
    """Runs submitted calls one at a time on a worker thread: transient failures are retried until the call
    succeeds; permanent ones (as `is_permanent` says) PERMANENT_TRIES times, then `on_give_up` is called."""

    def __init__(self, name: str = "optlab-outbox",
                 is_permanent: Callable[[BaseException], bool] = never_permanent) -> None:
        self._calls: queue.Queue[tuple[str, Call, GiveUp | None] | None] = queue.Queue()
        self._stop = threading.Event()
        self._is_permanent = is_permanent
        self.failures = 0  # failed attempts so far
        self.given_up: list[tuple[str, BaseException]] = []  # calls abandoned, with the last error
        self._worker = threading.Thread(target=self._drain, name=name, daemon=True)
        self._worker.start()

    def submit(self, what: str, call: Call, on_give_up: GiveUp | None = None) -> None:
        """Queue `call` (described by `what` in warnings); returns at once."""
        self._calls.put((what, call, on_give_up))

    def _drain(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                self._calls.task_done()
                return
            self._deliver(*item)
            self._calls.task_done()

    def _deliver(self, what: str, call: Call, on_give_up: GiveUp | None) -> None:
        pause, permanent_failures = RETRY_FIRST_S, 0
        while True:
            try:
                call()
                return
            except Exception as error:  # noqa: BLE001 - any failure of the store is retried or reported
                self.failures += 1
                permanent_failures += bool(self._is_permanent(error))
                if permanent_failures >= PERMANENT_TRIES or self._stop.is_set():
                    self._give_up(what, error, on_give_up)
                    return
                if self.failures == 1 or pause >= RETRY_MAX_S:
                    print(f"warning: logging {what} failed ({type(error).__name__}); retrying, training goes on",
                          file=sys.stderr)
                time.sleep(pause)
                pause = min(2 * pause, RETRY_MAX_S)

    def _give_up(self, what: str, error: BaseException, on_give_up: GiveUp | None) -> None:
        """Abandon one call: warn on the first abandoned call only, and tell its submitter."""
        if not self.given_up:
            print(f"warning: gave up logging {what} ({one_line(error)})", file=sys.stderr)
        self.given_up.append((what, error))
        if on_give_up is not None:
            try:
                on_give_up(error)
            except Exception as report_error:  # noqa: BLE001 - reporting must not kill the sender
                print(f"warning: could not record that {what} failed ({type(report_error).__name__})",
                      file=sys.stderr)

    def flush(self, timeout_s: float = 600.0) -> bool:
        """Wait until every queued call is delivered or given up, or `timeout_s` passes; True when none is left."""
        deadline = time.monotonic() + timeout_s
        with self._calls.all_tasks_done:  # woken the moment the last call is delivered (no polling delay)
            while self._calls.unfinished_tasks and (left := deadline - time.monotonic()) > 0:
                self._calls.all_tasks_done.wait(left)
            return not self._calls.unfinished_tasks

    def close(self, timeout_s: float = 600.0) -> bool:
        """Deliver what is queued (up to `timeout_s`), then stop the worker; True when nothing was lost."""
        delivered = self.flush(timeout_s)
        self._stop.set()
        self._calls.put(None)
        self._worker.join(timeout=RETRY_MAX_S + 5)
        return delivered and not self.given_up

"""A background sender for run logging: calls leave the training thread, keep their order, and are retried
until the tracking server answers again, so an outage loses nothing. Knows nothing of MLflow itself."""
from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Callable

RETRY_FIRST_S = 0.5  # first pause after a failed call; doubles up to RETRY_MAX_S
RETRY_MAX_S = 10.0


class Outbox:
    """Runs submitted calls one at a time on a worker thread, retrying a failing call until it succeeds."""

    def __init__(self, name: str = "optlab-outbox") -> None:
        self._calls: queue.Queue[tuple[str, Callable[[], object]] | None] = queue.Queue()
        self._stop = threading.Event()
        self.failures = 0  # failed attempts so far (each retried)
        self._worker = threading.Thread(target=self._drain, name=name, daemon=True)
        self._worker.start()

    def submit(self, what: str, call: Callable[[], object]) -> None:
        """Queue `call` (described by `what` in warnings); returns at once."""
        self._calls.put((what, call))

    def _drain(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                self._calls.task_done()
                return
            self._deliver(*item)
            self._calls.task_done()

    def _deliver(self, what: str, call: Callable[[], object]) -> None:
        pause = RETRY_FIRST_S
        while True:
            try:
                call()
                return
            except Exception as error:  # noqa: BLE001 - any failure of the store is retried, never lost
                self.failures += 1
                if self._stop.is_set():
                    print(f"warning: gave up logging {what} ({type(error).__name__})", file=sys.stderr)
                    return
                if self.failures == 1 or pause >= RETRY_MAX_S:
                    print(f"warning: logging {what} failed ({type(error).__name__}); retrying, training goes on",
                          file=sys.stderr)
                time.sleep(pause)
                pause = min(2 * pause, RETRY_MAX_S)

    def flush(self, timeout_s: float = 600.0) -> bool:
        """Wait until every queued call is delivered or `timeout_s` passes; True when all were delivered."""
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
        return delivered

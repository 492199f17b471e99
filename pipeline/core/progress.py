"""Progress a person reads: one bar per phase of a long sweep (tqdm, on stderr, with what runs now, the count and
an ETA) when stderr is a terminal; in a log, one line per phase when it ends. Workers only count (`Counter`),
from any thread or process; the bar redraws itself from the count."""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Iterator

REFRESH_S = 0.5  # how often a bar reads the count


class Counter:
    """Finished units (runs, children) and what runs now. `shared` (a multiprocessing Value('i')) lets worker
    processes count into the same number; without it the count is this process's."""

    def __init__(self, shared: Any = None) -> None:
        self.shared = shared
        self.own = 0
        self.now = ""

    def advance(self, count: int = 1) -> None:
        if self.shared is None:
            self.own += count
            return
        with self.shared.get_lock():
            self.shared.value += count

    def study(self, label: str) -> None:
        """What this process works on now (the bar's postfix)."""
        self.now = label

    @property
    def value(self) -> int:
        return self.own if self.shared is None else int(self.shared.value)


@contextlib.contextmanager
def bar(phase: str, total: int, counter: Counter, unit: str = "run", initial: int = 0,
        stream: Any = None) -> Iterator[Counter]:
    """A bar for the block, `initial` of `total` done at the start, advanced as `counter` counts. On a terminal
    the finished bar stays (one line per phase); elsewhere the phase ends with one line, unless it was
    interrupted (an error or Ctrl-C then says what happened)."""
    stream = stream or sys.stderr
    began = time.monotonic()
    if not _is_terminal(stream):
        yield counter
        done = min(total, initial + counter.value)
        print(f"{phase}: {done} of {total} {unit}s in {time.monotonic() - began:.0f} s", file=stream, flush=True)
        return
    from tqdm import tqdm  # noqa: PLC0415 - only where a bar is drawn

    shown = tqdm(total=total, initial=initial, desc=phase, unit=unit, file=stream, dynamic_ncols=True, leave=True)
    stop = threading.Event()

    def redraw() -> None:
        shown.n = min(total, initial + counter.value)
        shown.set_postfix_str(counter.now, refresh=False)
        shown.refresh()

    def follow() -> None:
        while not stop.wait(REFRESH_S):
            redraw()

    thread = threading.Thread(target=follow, name="optlab-progress", daemon=True)
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join()
        counter.now = ""
        redraw()
        shown.close()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

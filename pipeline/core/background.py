"""A loop on a daemon thread for the length of a block (heartbeats): started on entry, told to stop and joined on
exit, whatever ends the block."""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def in_background(work: Callable[[], None], stop: threading.Event, name: str) -> Iterator[None]:
    """Run `work` (which returns once `stop` is set) on a thread while the block runs."""
    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

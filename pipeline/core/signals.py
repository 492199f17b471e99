"""Ctrl-C and SIGTERM for a command with worker processes: both stop the work as Ctrl-C does, once."""
from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

from pipeline.core.errors import Terminated


@contextlib.contextmanager
def stopped_by_signals(numbers: tuple[int, ...] | None = None, restore: bool = True) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM (`timeout`, a scheduler) stop the block as Ctrl-C does (KeyboardInterrupt;
    Terminated for SIGTERM), once: a terminal signals every process of its group, and the command then stops its
    workers itself, so later signals are ignored while runs end KILLED. One that lands in a finalizer (which
    swallows exceptions) is raised again at once. By default a signal this process ignores (SIGINT in a background
    job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    numbers = numbers or tuple(n for n in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(n) != signal.SIG_IGN)
    saved, hook, state = {n: signal.getsignal(n) for n in numbers}, sys.unraisablehook, {"raised": 0, "again": 0}

    def stop(number: int, _frame: object) -> None:
        if state["raised"] and not state["again"]:
            return
        state.update(raised=number, again=0)
        raise Terminated("SIGTERM") if number == signal.SIGTERM else KeyboardInterrupt

    def swallowed(unraisable: Any) -> None:
        if not (state["raised"] and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            return hook(unraisable)
        state["again"] = 1  # from another thread, a moment later: here, it would be raised in this hook
        threading.Timer(0.05, _thread.interrupt_main, (state["raised"],)).start()

    for number in saved:
        signal.signal(number, stop)
    sys.unraisablehook = swallowed
    try:
        yield
    finally:
        if restore:
            sys.unraisablehook = hook
            for number, handler in saved.items():
                signal.signal(number, handler)


def forget_handled_interrupt() -> None:
    """Clear CPython's mark of a Ctrl-C it thinks nobody handled. A KeyboardInterrupt that passes through code run
    by PyRun_String (pybind11's exec, as torch runs while it imports) sets that mark even when ours then catches
    it, and the interpreter ends itself by SIGINT at exit (-2, not our 130). Best effort: an interpreter that
    keeps the mark elsewhere (3.12+) is left as it is."""
    import ctypes  # noqa: PLC0415

    try:
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (ValueError, AttributeError, OSError):
        pass

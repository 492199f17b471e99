"""The error the command line turns into one clear line (exit 2), and every exit code optlab uses.

A diverged run is an outcome, not an error: it is recorded on the run and exits 3."""
from __future__ import annotations


class UsageError(ValueError):
    """A bad value from the user: the message is one line naming it and the valid choices (exit 2)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, a scheduler, `kill`), taken as Ctrl-C is: open runs end KILLED (exit 143)."""


def one_line(error: BaseException) -> str:
    """An error as one short line for a message: its type and the first line of its text (200 characters)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_ARTIFACTS = 4  # trained to the end, metrics stored, but the store refused some artifacts
EXIT_WORKER_DIED = 5  # a process of a multi-process job (nproc, torchrun) died or crashed: the job was stopped
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_TERMINATED = 143  # SIGTERM, as shells report it (a command that takes it as Ctrl-C: `tune`)
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (`| head`), as shells report SIGPIPE

"""Errors the command line turns into one clear line and an exit code."""
from __future__ import annotations


class UsageError(ValueError):
    """A bad value from the user: the message is one line naming it and the valid choices (exit 2)."""


class DivergedError(RuntimeError):
    """Training produced a NaN or infinite loss (exit 3)."""


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_ARTIFACTS = 4  # trained to the end, metrics stored, but the store refused some artifacts
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

"""SQLite databases that several processes write at once (the embedded MLflow store, a tune's optuna.db) in
write-ahead-log mode: a reader never waits for a writer, and a commit appends to one log instead of making and
deleting a rollback journal. Measured on the demo's toy tune with two workers: 61 s against 70 s
(docs/performance.md). The mode is kept in the file; it needs every process on one machine, as SQLite's locking
does anyway (PostgreSQL is the store for many machines)."""
from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path

LOCK_WAIT_S = 60.0  # how long switching the mode waits for another process's transaction


def database_file(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL (relative to this folder, or absolute with four slashes); None for
    another database, an in-memory one, or a URL that is not one."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+")[0] != "sqlite":
        return None
    path = rest.split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def write_ahead(url: str) -> None:
    """Put the SQLite database of `url` in WAL mode (made, empty, if it is not there yet), once per file and
    process. Nothing for other URLs; best effort otherwise: a folder that cannot hold it, or a file that is not
    a database, is left for the store's own error to report."""
    path = database_file(url)
    if path is not None:
        _switch(path.resolve())


@functools.lru_cache(maxsize=None)
def _switch(path: Path) -> None:
    if not path.parent.is_dir():
        return
    with contextlib.suppress(sqlite3.Error, OSError):
        with contextlib.closing(sqlite3.connect(path, timeout=LOCK_WAIT_S)) as connection:
            connection.execute("PRAGMA journal_mode=WAL").fetchall()

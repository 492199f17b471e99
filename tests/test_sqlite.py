"""SQLite files that several processes write at once are in WAL mode: the helper on real files, and the stores a
real tune leaves (the embedded MLflow store and optuna.db beside it)."""
import contextlib
import sqlite3

import pytest

from pipeline.core.sqlite import database_file, write_ahead


def _mode(path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]


@pytest.mark.parametrize("url,expected", [
    ("sqlite:///mlflow.db", "mlflow.db"), ("sqlite:////tmp/x/optuna.db", "/tmp/x/optuna.db"),
    ("sqlite+pysqlite:///a.db?timeout=5", "a.db"), ("sqlite:///:memory:", None), ("sqlite://", None),
    ("postgresql://u@h/db", None), ("http://127.0.0.1:5000", None), ("mlflow.db", None),
])
def test_the_file_of_a_sqlite_url(url, expected):
    found = database_file(url)
    assert (str(found) if found is not None else None) == expected


def test_a_store_in_the_old_journal_mode_is_switched_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE runs (id TEXT)")
        connection.execute("INSERT INTO runs VALUES ('a')")
        connection.commit()
    assert _mode(path) == "delete"
    write_ahead(f"sqlite:///{path}")
    assert _mode(path) == "wal"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("SELECT id FROM runs").fetchall() == [("a",)]


def test_a_new_store_is_made_in_wal_mode_and_what_is_no_database_is_left_alone(tmp_path):
    write_ahead(f"sqlite:///{tmp_path / 'new.db'}")
    assert _mode(tmp_path / "new.db") == "wal"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, 32 bytes of it..")
    write_ahead(f"sqlite:///{junk}")  # no error here: the store's own open reports it
    assert junk.read_bytes() == b"not a database, 32 bytes of it.."
    write_ahead(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    assert not (tmp_path / "missing").exists()

"""What the GPU check's steps share: the context they run in, a bounded subprocess, the wheels, the data folder
and reads of the SQLite tracking store (plain sqlite3: this module runs before MLflow is importable)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

REPO = Path(__file__).resolve().parents[1]
SUBSET = Path("data") / "cifar10-subset"
TEXT = Path("data") / "tinyshakespeare"  # shakespeare_gpt's input.txt
# On a lent GPU machine the checkout's own shared/ travels; beside a developer's checkout it is ../shared.
SHARED_FOLDERS = (REPO.parent / "shared", REPO / "shared")
# What steps need from the wheels (modules); checked when no wheels are installed
NEEDED = ("mlflow", "sqlalchemy", "alembic", "optuna", "pytorch_optimizer", "schedulefree", "yaml", "tqdm", "psutil")
_RUN_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@dataclass
class Outcome:
    """What one step did: passed, failed or skipped, in how long, why (one line) and its figures."""

    status: str
    detail: str = ""
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    output: str = ""  # the end of the commands' output, for the report


@dataclass(frozen=True)
class Step:
    """One step of the check: its number and name, its time budget, whether it needs CUDA, and its work."""

    number: int
    name: str
    budget_s: float
    cuda_only: bool
    work: Callable[["Context", float], Outcome]  # (context, seconds it may take) -> outcome


@dataclass
class Context:
    """Settings and state shared by every step."""

    device: str
    quick: bool
    out: Path
    tmp: Path
    log: TextIO
    deadline: float  # time.monotonic() by which the whole check ends
    wheels: Path
    install: str  # auto, yes or no
    env: dict[str, str] = field(default_factory=dict)
    data_dir: Path | None = None
    facts: dict = field(default_factory=dict)  # what scripts/gpu_probe.py found

    @property
    def store(self) -> Path:
        return self.tmp / "mlflow.db"

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Ran:
    """A finished (or stopped) command."""

    code: int
    output: str
    seconds: float
    timed_out: bool


def base_env(tmp: Path, site: Path | None) -> dict[str, str]:
    """The environment of every command: this one, the wheels and the project on PYTHONPATH, one SQLite store in
    the temporary folder, no run handed down, no telemetry (the GPU machine reaches nothing)."""
    env = {key: value for key, value in os.environ.items() if key not in _RUN_ENV}
    paths = [str(site)] if site else []
    env.update(PYTHONPATH=os.pathsep.join([*paths, str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
               PYTHONUNBUFFERED="1", MPLBACKEND="Agg", MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    return env


def run(ctx: Context, command: list[str], limit_s: float, cwd: Path = REPO, env: dict | None = None) -> Ran:
    """Run `command` in a process group of its own, output merged and logged; past `limit_s` the group gets
    SIGTERM (runs end KILLED), then SIGKILL 15 s later."""
    ctx.log.write(f"\n$ {' '.join(command)}   (cwd {cwd}, limit {limit_s:.0f} s)\n")
    ctx.log.flush()
    began = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, env={**ctx.env, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    timed_out = False
    try:
        output, _ = process.communicate(timeout=max(limit_s, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        output = _stop(process)
    except KeyboardInterrupt:
        _stop(process)
        raise
    ctx.log.write(output)
    return Ran(process.returncode, output, time.monotonic() - began, timed_out)


def _stop(process: subprocess.Popen) -> str:
    """SIGTERM to the group, SIGKILL if it lingers; whatever it had printed."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return process.communicate(timeout=wait_s)[0] or ""
        except subprocess.TimeoutExpired:
            continue
    return ""


def find_shared(relative: Path, marker: str) -> Path | None:
    """shared/<relative> beside the checkout or in it, whichever holds `marker`."""
    for shared in SHARED_FOLDERS:
        if (shared / relative / marker).exists():
            return shared / relative
    return None


def find_data_dir() -> Path | None:
    """The CIFAR-10 subset (the folder holding cifar-10-batches-py)."""
    return find_shared(SUBSET, "cifar-10-batches-py")


def missing_modules(python: str, env: dict[str, str]) -> list[str]:
    """The NEEDED modules `python` cannot find with `env`."""
    code = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
    done = subprocess.run([python, "-c", code, *NEEDED], env=env, text=True, capture_output=True, timeout=60)
    return done.stdout.split()


def install_wheels(ctx: Context, wheels: Path, site: Path, limit_s: float) -> Outcome:
    """pip install --no-index --no-deps every wheel of `wheels` into `site` (a temporary folder)."""
    found = sorted(wheels.glob("*.whl"))
    ran = run(ctx, [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--no-compile", "--target", str(site), *map(str, found)], limit_s)
    if ran.code != 0:
        return Outcome("failed", f"pip install exited {ran.code}", ran.seconds, output=ran.output)
    size = sum(path.stat().st_size for path in found) / 2**20
    return Outcome("passed", f"{len(found)} wheels ({size:.1f} MiB) from {wheels} into {site}", ran.seconds)


def wheels_python(wheels: Path) -> str | None:
    """The Python version `make gpu-wheels` downloaded for (its python-version file), or None."""
    marker = wheels / "python-version"
    return marker.read_text(encoding="utf-8").strip() if marker.is_file() else None


def query(store: Path, sql: str, *args: object) -> list[tuple]:
    """Rows of one read-only query on the tracking store (empty when there is no store yet)."""
    if not store.is_file():
        return []
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as connection:
        return connection.execute(sql, args).fetchall()


def runs_of(store: Path, experiment: str) -> list[tuple[str, str]]:
    """(run id, status) of every run of `experiment`, oldest first."""
    return query(store, "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e ON r.experiment_id = "
                        "e.experiment_id WHERE e.name = ? ORDER BY r.start_time, r.run_uuid", experiment)


def history(store: Path, run_id: str, key: str) -> list[float]:
    """A metric's values in step order."""
    return [row[0] for row in query(store, "SELECT value FROM metrics WHERE run_uuid = ? AND key = ? "
                                           "ORDER BY step, timestamp", run_id, key)]


def latest(store: Path, run_id: str) -> dict[str, float]:
    """Every metric's last value."""
    return dict(query(store, "SELECT key, value FROM latest_metrics WHERE run_uuid = ?", run_id))


def tags(store: Path, run_id: str) -> dict[str, str]:
    """A run's tags and params together (params win)."""
    found = dict(query(store, "SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
    return {**found, **dict(query(store, "SELECT key, value FROM params WHERE run_uuid = ?", run_id))}


def tail(text: str, lines: int) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.rstrip().splitlines()[-lines:])

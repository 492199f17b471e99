"""A throw-away local `mlflow server` (SQLite backend, proxied artifacts) that is always stopped afterwards."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

START_TIMEOUT_S = 120  # database migrations and workers take ~10-30 s on 2 busy cores
STOP_TIMEOUT_S = 15  # after SIGTERM, before SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    """Whether the server's /health endpoint answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_up(url: str, process: subprocess.Popen, log_file: Path) -> None:
    """Poll /health until it answers; raise with the log's tail if the server exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers(url):
            return
        time.sleep(0.5)
    tail = log_file.read_text(errors="replace")[-2000:]
    state = f"exited with {process.returncode}" if process.poll() is not None else f"no answer in {START_TIMEOUT_S} s"
    raise RuntimeError(f"mlflow server at {url} {state}; its log ends with:\n{tail}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (it, its uvicorn workers, its job runner and that one's huey
    consumers), then SIGKILL whatever is left of the group: `mlflow server` itself ignores a SIGTERM to its
    main process, and a member may outlive the leader."""
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)  # the group made by start_new_session: only what we started
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(process):
            time.sleep(0.1)
    process.poll()


def _group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the server's group is left (the leader is reaped as it goes)."""
    process.poll()
    try:
        os.killpg(process.pid, 0)
        return True
    except ProcessLookupError:
        return False


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (`timeout`, `kill`, make passing one on) raised as SystemExit for the block, so that `finally`
    blocks run and stop the server, where its default action would end this process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated) if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL \
        else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """Run `mlflow server` on 127.0.0.1 with its store in `folder`, in a process group of its own; yields its
    URL and stops the whole group on exit, SIGTERM included."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]  # as `make server`, on a fresh store
    log_file = folder / "server.log"
    with _sigterm_as_exit(), log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=folder, start_new_session=True)
        try:
            _wait_until_up(url, process, log_file)
            yield url
        finally:
            _stop(process)

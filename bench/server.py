"""A throw-away local `mlflow server` (SQLite backend, proxied artifacts) that is always stopped afterwards."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
    """SIGTERM the server's own process group (it and its workers), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)  # the group made by start_new_session: only what we started
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """Run `mlflow server` on 127.0.0.1 with its store in `folder`; yields its URL and stops it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]  # as `make server`, on a fresh store
    log_file = folder / "server.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=folder, start_new_session=True)
    try:
        _wait_until_up(url, process, log_file)
        yield url
    finally:
        _stop(process)

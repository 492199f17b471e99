"""Real tracking servers for tests, started the way `make server` starts them (scripts/server.sh), on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from glob import glob
from pathlib import Path

import pytest
from conftest import REPO


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path, port: int, backend: str = "sqlite", auth: bool = False,
                 env: dict | None = None) -> subprocess.Popen:
    """scripts/server.sh (one worker) with its stores in `folder`, on 127.0.0.1:port, once /health answers.

    backend="postgres" puts a private PostgreSQL cluster in folder/pgdata; auth=True needs
    MLFLOW_AUTH_ADMIN_PASSWORD in `env` on the first start. The server's output goes to folder/server.log.
    """
    settings = {"PYTHON": sys.executable, "HOST": "127.0.0.1", "PORT": str(port), "STORE_DIR": str(folder),
                "BACKEND": backend, "AUTH": "true" if auth else "false", "PGPORT": str(free_port())}
    log = open(folder / "server.log", "a")
    process = subprocess.Popen(["bash", str(REPO / "scripts" / "server.sh"), "--workers", "1"],
                               env={**os.environ, **settings, **(env or {})}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    if wait_healthy(process, port):
        return process
    if process.poll() is None:
        stop_server(process)
    tail = (folder / "server.log").read_text(errors="replace")[-3000:]
    pytest.fail(f"mlflow server did not start (exit {process.poll()}); its log ends:\n{tail}")


def wait_healthy(process: subprocess.Popen, port: int, seconds: float = 90) -> bool:
    """Whether the server on 127.0.0.1:port answers /health within `seconds` (False once it has exited)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return True
        except OSError:
            time.sleep(0.5)
    return False


def stop_server(process: subprocess.Popen) -> None:
    """Stop a server started by start_server: its whole process group (workers too; the script then stops
    its PostgreSQL cluster)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    process.wait(timeout=60)


def postgres_or_skip() -> None:
    """Skip when PostgreSQL is not installed, or fail when OPTLAB_REQUIRE_POSTGRES=1 (CI installs it)."""
    if shutil.which("postgres") or glob("/usr/lib/postgresql/*/bin/postgres"):
        return
    if os.environ.get("OPTLAB_REQUIRE_POSTGRES") == "1":
        pytest.fail("OPTLAB_REQUIRE_POSTGRES=1 but PostgreSQL is not installed (no postgres on PATH or in "
                    "/usr/lib/postgresql/*/bin)")
    pytest.skip("PostgreSQL is not installed (no postgres on PATH or in /usr/lib/postgresql/*/bin)")

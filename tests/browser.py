"""The MLflow UI in headless Chromium: start `mlflow ui` on a store, render a page (its DOM or a screenshot).

Also a script: `python tests/browser.py OUT.png` runs a tiny cifar compare in a temporary store and writes the
screenshot of the link it prints (`make ui-shot` refreshes docs/img/compare-ui.png with it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from servers import free_port, stop_server, wait_healthy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script (make ui-shot): bench beside tests
from bench.data import SUBSET  # noqa: E402

WINDOW = "1600,2000"  # tall enough that every chart is on screen: the UI draws only visible ones


def chromium() -> str | None:
    """The Chromium binary (Debian's `chromium`), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def start_ui(store: str, port: int) -> subprocess.Popen:
    """`mlflow ui` on `store` at 127.0.0.1:port, once /health answers."""
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host",
                                "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    if not wait_healthy(process, port):
        stop_server(process)
        raise RuntimeError(f"mlflow ui did not start on port {port} (exit {process.poll()})")
    return process


def render(url: str, screenshot: Path | None = None, budget_ms: int = 30000, wait_for: str = "val_acc",
           tries: int = 3) -> str:
    """The page's DOM once it shows `wait_for` (a cold server answers the first loads slowly: up to `tries`
    renders of `budget_ms` virtual time each), and then its screenshot, when asked."""
    binary = chromium()
    assert binary, "Chromium is not installed (apt-get install chromium)"
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--virtual-time-budget={budget_ms}",
             f"--window-size={WINDOW}"]
    with tempfile.TemporaryDirectory(prefix="optlab-chromium-") as profile:
        flags.append(f"--user-data-dir={profile}")
        for _ in range(tries):
            dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180,
                                 check=True).stdout
            if wait_for in dom:
                break
        if screenshot is not None:  # after the DOM: the server has warmed up, so the charts are drawn in time
            subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
        return dom


def tiny_compare(store: str) -> str:
    """A two-optimizer cifar compare on the real subset in `store`; returns the UI link it printed."""
    done = subprocess.run([sys.executable, "-m", "pipeline", "compare", "--task", "cifar", "--optimizers",
                           "momentum,adam", "--model", "tiny_cnn", "--epochs", "3", "--train_limit", "256",
                           "--val_limit", "128", "--data_dir", str(SUBSET), "--log_model", "false",
                           "--register", "false", "--system_metrics", "false", "--experiment", "optlab-compare"],
                          cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": store}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("this sweep in the MLflow UI: "))
    return line.split(": ", 1)[1].split(" ")[0]


def main(out: str) -> int:
    """Refresh the README's screenshot: a tiny compare, the UI on its store, the printed link rendered."""
    with tempfile.TemporaryDirectory(prefix="optlab-ui-") as folder:
        store = f"sqlite:///{folder}/mlflow.db"
        link = tiny_compare(store)
        port = free_port()
        process = start_ui(store, port)
        try:
            render(link.replace("127.0.0.1:5000", f"127.0.0.1:{port}"), Path(out).resolve())
        finally:
            stop_server(process)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "docs" / "img" / "compare-ui.png")))

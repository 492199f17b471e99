"""The machine the benchmark ran on, the device it used, and timing helpers shared by every row."""
from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average(flag_busy: bool = False) -> str:
    """The 1-minute load average; with flag_busy, marked when other work occupies half the cores or more.

    On a busy machine torch's intra-op threads wait for each other and our figures drop by up to 30x.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "unknown"
    busy = flag_busy and load >= 0.5 * (os.cpu_count() or 1)
    return f"{load:.2f}" + (" (busy: figures may be low, rerun on a quiet machine)" if busy else "")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when torch sees one, else cpu; 'cuda' without one is an error (exit 2 in the CLI)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device; use --device auto or cpu")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """'cuda (NVIDIA H200)' or 'cpu'."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def header(device: torch.device, argv: list[str]) -> list[str]:
    """The lines printed above the table: machine, software, device and the exact command."""
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
        f"load average {load_average(flag_busy=True)} at start",
        f"software: python {platform.python_version()}, torch {torch.__version__}, {platform.system()}",
        f"device: {device_name(device)}",
        f"command: {shlex.join(['python', '-m', 'bench', *argv])}",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]


def sync(device: torch.device) -> None:
    """Wait for queued device work so that wall-clock timings cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(work: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The fastest of `repeats` timed calls, in seconds: the least disturbed by other processes."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        work()
        sync(device)
        best = min(best, time.perf_counter() - began)
    return best


def interleaved_best(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Call every measure once per round, in turn, and keep each one's highest rate.

    Taking turns exposes each measure to the same background load; the best round is the least disturbed one.
    """
    best = {name: 0.0 for name in measures}
    for round_ in range(rounds):
        for name, measure in measures.items():
            value = measure()
            best[name] = max(best[name], value)
            log(f"  round {round_ + 1}/{rounds} {name}: {value:,.1f}/s")
    return best


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)

"""`python -m bench`: time our paths against the notebook's, in one run, and print one table (docs/performance.md)."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path

import torch

from bench.machine import header, load_average, log, resolve_device
from bench.table import Row, format_markdown, format_text

ROWS = ("toy", "cifar", "mlflow", "tracking", "tune", "landscape", "cuda")

# Row group -> (module, function(device, quick) -> list[Row]); imported only when asked for, so that
# `--rows toy` starts without loading MLflow or torchvision.
RUNNERS = {"toy": ("bench.toy", "toy_rows"), "cifar": ("bench.cifar", "cifar_rows"),
           "mlflow": ("bench.overhead", "overhead_rows"),
           "tracking": ("bench.tracking", "tracking_rows"), "tune": ("bench.pruning", "pruning_rows"),
           "landscape": ("bench.landscape", "landscape_rows"), "cuda": ("bench.cuda", "cuda_rows")}


def run_group(name: str, device: torch.device, quick: bool) -> list[Row]:
    """Import the group's module and measure its rows."""
    module, function = RUNNERS[name]
    return getattr(importlib.import_module(module), function)(device, quick)


def row_names(text: str) -> list[str]:
    """Parse --rows: a comma list of known row groups, in table order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown rows {', '.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(ROWS)}")
    return [name for name in ROWS if name in names]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="Time our paths against the notebook's in one run; print one table.")
    parser.add_argument("--quick", action="store_true", help="smoke version: fewer points, batches, rounds (~1 min)")
    parser.add_argument("--rows", type=row_names, default=list(ROWS),
                        help=f"comma list from {','.join(ROWS)} (default: all)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    parser.add_argument("--out", type=Path, help="also write the table as Markdown to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected rows, print the table on stdout (progress on stderr); exit 0, or 2 on bad input."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # SIGTERM (`timeout`, make passing one on) as an orderly exit: servers and temporary folders are cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines = header(device, argv)
    began = time.perf_counter()
    rows: list[Row] = []
    for name in args.rows:
        group_began = time.perf_counter()
        rows += run_group(name, device, args.quick)
        log(f"{name}: done in {time.perf_counter() - group_began:.0f} s")
    lines.append(f"wall time: {time.perf_counter() - began:.0f} s for the rows below; "
                 f"load average {load_average()} at the end")
    print(format_text(rows, lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(format_markdown(rows, lines), encoding="utf-8")
        log(f"wrote {args.out}")
    return 0

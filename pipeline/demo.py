"""`make demo`: the notebook's whole story as tracked sweeps: toy functions, then CIFAR-10, then a fair tune. It
says what it is about to do and about how long each part takes, keeps each sweep's own per-run lines to itself,
and ends with the tables, the verdict and the links."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time

import torch

from pipeline import tracking
from pipeline.compare import sweep
from pipeline.config.compare import build_compare
from pipeline.config.tune import build_tune
from pipeline.core.errors import EXIT_OK, UsageError
from pipeline.tune import tune

# Every registered optimizer on Rosenbrock's curved valley, with one shared step size.
TOY = {"task": "toy", "function": "rosenbrock", "lr": "0.002", "steps": "1000"}
# The notebook's seven optimizers plus nesterov: its full setting on a GPU, a few minutes' worth on a CPU.
CIFAR_GPU = {"task": "cifar", "epochs": "5", "batch_size": "32"}
CIFAR_CPU = {"task": "cifar", "epochs": "2", "train_limit": "256", "val_limit": "256", "system_metrics": "false"}
# Then every optimizer tuned alike (8 trials each, the first its default; best setting over 3 seeds), in two
# worker processes where there are two cores (measured: docs/performance.md).
TUNE = {"task": "toy", "functions": "rosenbrock,ackley", "trials": "8", "seeds": "3",
        "workers": str(max(1, min(2, os.cpu_count() or 1)))}
# About how long each part takes on 2 CPU cores (measured: docs/performance.md), said before it starts.
EXPECTED_CPU_S = {"toy": 25, "cifar": 90, "tune": 50}


def where_to_look(experiment: str) -> str:
    """How to open the MLflow UI on the store these runs went to."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"Open the MLflow UI at {uri} (experiment {experiment})."
    return (f"Runs are in {uri}. Open the UI: make ui, then http://127.0.0.1:5000 (experiment {experiment}); "
            "tick the child runs and press Compare.")


def quietly(part: str, what: str, work):
    """Announce a part, run it with its per-run lines kept back (errors and warnings still reach stderr), say
    how long it took; returns what `work()` returns."""
    expected = "" if torch.cuda.is_available() else f" (about {EXPECTED_CPU_S[part]} s on 2 CPU cores)"
    print(f"{what}{expected} ...", flush=True)
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        found = work()
    print(f"  done in {time.perf_counter() - began:.0f} s", flush=True)
    return found


def main(data_dir: str | None = None) -> int:
    """Run the toy sweep, the CIFAR sweep (skipped with one line when no data can be had), then a toy tune."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (tables made, monitors) are not news
    print("optlab demo: three tracked sweeps, as the notebook's story; the tables, the verdict and the links come "
          "at the end.")
    summaries, views = [], []
    toy = build_compare(TOY)
    run_id, markdown, _ = quietly("toy", "1/3 toy comparison: every optimizer on Rosenbrock at one lr",
                                  lambda: sweep(toy))
    summaries.append(markdown)
    views.append(("toy comparison", run_id))
    cifar_params = {**(CIFAR_GPU if torch.cuda.is_available() else CIFAR_CPU),
                    **({"data_dir": data_dir} if data_dir else {})}
    try:
        cifar = build_compare(cifar_params)
        run_id, markdown, uri = quietly("cifar", "2/3 CIFAR-10 comparison: the notebook's optimizers",
                                        lambda: sweep(cifar))
        summaries.append(markdown + (f"\nBest model: {uri}\n" if uri else ""))
        views.append(("CIFAR-10 comparison", run_id))
    except UsageError as error:
        print(f"CIFAR-10 comparison skipped: {error}. Run `make demo DATA=<folder with cifar-10-batches-py>`.")
    run_id, _, lines = quietly("tune", "3/3 tune: every optimizer tuned alike on Rosenbrock and Ackley "
                               f"({TUNE['trials']} trials each, the best rerun on {TUNE['seeds']} seeds)",
                               lambda: tune(build_tune(TUNE)))
    views.append(("tune (its verdict; tuned.md and verdict.md on the run)", run_id))
    print("\n".join(summaries))
    print("What the tune shows: a comparison at one shared lr is not the comparison once each is tuned.")
    print("\n".join(f"  {line}" for line in lines))
    print(where_to_look(toy.experiment))
    for what, view in views:
        print(f"  the {what}: {tracking.sweep_link(view)}")
    return EXIT_OK

"""`make demo`: the notebook's whole story as tracked sweeps: toy functions, then CIFAR-10."""
from __future__ import annotations

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
CIFAR_CPU = {"task": "cifar", "epochs": "2", "train_limit": "512", "val_limit": "256"}
# Then every optimizer tuned alike (8 trials each, best setting over 3 seeds) on two functions: minutes on a CPU.
TUNE = {"task": "toy", "functions": "rosenbrock,ackley", "trials": "8", "seeds": "3"}


def where_to_look(experiment: str) -> str:
    """How to open the MLflow UI on the store these runs went to."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"Open the MLflow UI at {uri} (experiment {experiment})."
    return (f"Runs are in {uri}. Open the UI: make ui, then http://127.0.0.1:5000 (experiment {experiment}); "
            "tick the child runs and press Compare.")


def main(data_dir: str | None = None) -> int:
    """Run the toy sweep, the CIFAR sweep (skipped with one line when no data can be had), then a toy tune."""
    summaries, views = [], []
    toy = build_compare(TOY)
    run_id, markdown, _ = sweep(toy)
    summaries.append(markdown)
    views.append(("toy comparison", run_id))
    cifar_params = {**(CIFAR_GPU if torch.cuda.is_available() else CIFAR_CPU),
                    **({"data_dir": data_dir} if data_dir else {})}
    try:
        run_id, markdown, uri = sweep(build_compare(cifar_params))
        summaries.append(markdown + (f"\nBest model: {uri}\n" if uri else ""))
        views.append(("CIFAR-10 comparison", run_id))
    except UsageError as error:
        print(f"CIFAR-10 comparison skipped: {error}. Run `make demo DATA=<folder with cifar-10-batches-py>`.")
    run_id, markdown, lines = tune(build_tune(TUNE))
    views.append(("tune", run_id))
    print("\n".join(summaries))
    print(markdown)
    print("What the tune shows: a comparison at one shared lr is not the comparison once each is tuned.")
    print("\n".join(f"  {line}" for line in lines))
    print(where_to_look(toy.experiment))
    for what, view in views:
        print(f"  the {what}: {tracking.sweep_link(view)}")
    return EXIT_OK

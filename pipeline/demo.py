"""`make demo`: the notebook's toy story as tracked runs, then where to look."""
from __future__ import annotations

from pipeline import tracking
from pipeline.config import build_config
from pipeline.errors import EXIT_OK
from pipeline.toy import run_toy

# (function, optimizer, lr): the notebook's momentum against its successors on two classic landscapes.
TOY_RUNS = [
    ("rosenbrock", "sgd", "0.001"), ("rosenbrock", "momentum", "0.001"), ("rosenbrock", "nesterov", "0.001"),
    ("rosenbrock", "adam", "0.02"), ("ackley", "sgd", "0.05"), ("ackley", "momentum", "0.05"),
    ("ackley", "adam", "0.05"),
]


def where_to_look(experiments: list[str]) -> str:
    """How to open the MLflow UI on the store these runs went to."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"Runs are on the tracking server: open {uri} (experiments: {', '.join(experiments)})."
    return (f"Runs are in {uri}. Open the UI with `make ui`, then http://127.0.0.1:5000 "
            f"(experiments: {', '.join(experiments)}).")


def run_demo(_config: object = None) -> int:
    """Run the demo's toy runs; a diverged run is reported but does not stop the others."""
    for function, optimizer, lr in TOY_RUNS:
        config = build_config("toy", {"function": function, "optimizer": optimizer, "lr": lr,
                                      "steps": "2000", "start": "-3,3.5" if function == "ackley" else "default"})
        run_toy(config)
    print(where_to_look(["optlab-toy"]))
    return EXIT_OK

"""What `mlflow run` hands the process it starts: the run it made (MLFLOW_RUN_ID). Light on purpose (no
mlflow import), so a refused input is reported without loading MLflow unless there is a run to tell."""
from __future__ import annotations

import os

RUN_ID = "MLFLOW_RUN_ID"  # set by `mlflow run` (its new run, or the one named by --run-id)


def handed_run_id() -> str | None:
    """The id of the run `mlflow run` made or continues for this process, if any."""
    return os.environ.get(RUN_ID) or None


def take_handed_run_id() -> str | None:
    """The handed run's id, removed from the environment: the first run opened takes it, no later one."""
    return os.environ.pop(RUN_ID, None) or None


"""Everything that talks to MLflow, and the only package that imports it.

- `server`: where runs go (the tracking URI), a check of the server at the edge, store errors told apart;
- `run`: `open_run(...)` -> `Run`, the one way to start or continue a run (top level or nested) and log to it;
- `experiments`: which experiment a run goes to, made and marked for the UI;
- `store`: questions asked of stored runs (resumable, reusable, histories, artifacts, models, aliases);
- `launcher`: what `mlflow run` hands the process (MLFLOW_RUN_ID); light, loads no MLflow.

Names are loaded on first use, so `from pipeline import tracking` costs nothing until a run is touched.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "server": ("tracking_uri", "check_server", "is_permanent", "is_store_error"),
    "run": ("Run", "open_run", "handed_run_tags", "existing_run", "fail_run", "kill_run", "end_run",
            "note_handed_run", "check_handed_experiment"),
    "experiments": ("ensure_experiment", "local_store_folder"),
    "store": ("find_resumable_run", "find_finished_run", "running_runs", "fetch_run", "latest_runs", "last_step",
              "run_exists", "download", "load_predictor", "set_alias", "add_to_sweep", "sweep_link",
              "share_sweep_view", "SWEEPS_TAG"),
    "launcher": ("record_refusal",),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Load the submodule that holds `name` on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.tracking.{_WHERE[name]}"), name)

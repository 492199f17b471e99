"""Experiments: the one a run goes to (as `mlflow run` chose it, or by name, made with its artifacts beside a
SQLite store), marked so the UI opens it on its runs, and experiment tags set by processes that may race."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

import mlflow

from pipeline.tracking.server import tracking_uri

# The UI opens an experiment in its GenAI overview unless this tag says it holds model-training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXPERIMENT_NOTE = ("Runs of optlab, which compares deep-learning optimizers. Parent runs (compare, tune) hold the "
                   "summary in their description and artifacts; their children are one run per optimizer.")


def mark_experiment(client: mlflow.MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as model training (the UI then opens on its runs) and describe it, unless it says so
    already (a description someone wrote is kept)."""
    tags = client.get_experiment(experiment_id).tags
    wanted = dict(EXPERIMENT_KIND) if tags.get("mlflow.note.content") else \
        {**EXPERIMENT_KIND, "mlflow.note.content": EXPERIMENT_NOTE}
    for key, value in wanted.items():
        if tags.get(key) != value:
            set_experiment_tag(client, experiment_id, key, value)


def set_experiment_tag(client: mlflow.MlflowClient, experiment_id: str, key: str, value: str) -> None:
    """Set an experiment tag; processes that race to set it (runs starting together, tune commands finishing
    together) may lose to each other: that is fine once the tag is there."""
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except mlflow.exceptions.MlflowException:
        if key not in client.get_experiment(experiment_id).tags:
            raise


def experiment_id_for(client: mlflow.MlflowClient, experiment: str) -> str:
    """The experiment runs go to: MLFLOW_EXPERIMENT_ID / _NAME when set (as by `mlflow run`), else `experiment`."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    return ensure_experiment(client, os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)


def ensure_experiment(client: mlflow.MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing (artifacts beside a SQLite store, in mlruns/)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    folder = _sqlite_dir(mlflow.get_tracking_uri())
    location = str(folder / "mlruns" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)) if folder is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(name)  # a concurrent run created it first: use theirs
        if found is None:
            raise
        return found.experiment_id


def local_store_folder() -> Path:
    """The folder of the SQLite tracking store in use, else the current folder: where local state goes."""
    return _sqlite_dir(tracking_uri()) or Path.cwd()


def _sqlite_dir(uri: str) -> Path | None:
    """The folder of a sqlite:/// store, where its runs' artifacts go too; None for other stores."""
    prefix = "sqlite:///"  # then a relative path, or an absolute one that starts with one more '/'
    if not uri.startswith(prefix):
        return None
    return Path(unquote(uri[len(prefix):].split("?")[0])).resolve().parent

"""The only module that imports mlflow: runs, params, metrics, figures, files and tags."""
from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import unquote

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from pipeline.config import PROJECT_ROOT

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
_BATCH = 1000  # MLflow accepts at most 1000 metrics in one log_batch call


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store in the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_dir(uri: str) -> Path | None:
    """The folder of a sqlite:/// store, where its runs' artifacts go too; None for other stores."""
    prefix = "sqlite:///"  # then a relative path, or an absolute one that starts with one more '/'
    if not uri.startswith(prefix):
        return None
    return Path(unquote(uri[len(prefix):].split("?")[0])).resolve().parent


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created if missing (artifacts beside a SQLite store, in mlruns/)."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    folder = _sqlite_dir(mlflow.get_tracking_uri())
    location = None
    if folder is not None:
        location = str(folder / "mlruns" / re.sub(r"[^A-Za-z0-9._-]+", "_", name))
    return client.create_experiment(name, artifact_location=location)


class RunHandle:
    """The active run: its id and the status it will end with."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.status = RunStatus.to_string(RunStatus.FINISHED)

    def fail(self) -> None:
        """End the run as FAILED without raising (e.g. it diverged)."""
        self.status = RunStatus.to_string(RunStatus.FAILED)


@contextmanager
def tracked_run(experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[RunHandle]:
    """Start a run, or continue the one `mlflow run` made (MLFLOW_RUN_ID); it ends FAILED on errors."""
    mlflow.set_tracking_uri(tracking_uri())
    experiment_chosen = any(os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                                                          "MLFLOW_EXPERIMENT_NAME"))
    experiment_id = None if experiment_chosen else ensure_experiment(experiment)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=None if os.environ.get("MLFLOW_RUN_ID")
                           else run_name, tags=dict(tags or {}))
    handle = RunHandle(run.info.run_id)
    try:
        yield handle
    except KeyboardInterrupt:
        handle.status = RunStatus.to_string(RunStatus.KILLED)
        raise
    except BaseException:
        handle.fail()
        raise
    finally:
        mlflow.flush_async_logging()
        mlflow.end_run(handle.status)


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params the run does not have yet (`mlflow run` has already logged the ones given with -P)."""
    client = MlflowClient()
    present = client.get_run(run_id).data.params
    fresh = [Param(key, str(value)) for key, value in params.items() if key not in present]
    if fresh:
        client.log_batch(run_id, params=fresh)


def log_metric_series(run_id: str, series: Mapping[str, Sequence[float]], steps: Sequence[int]) -> int:
    """Log whole metric histories (value i at steps[i]) in as few calls as MLflow allows; returns the calls."""
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(step))
               for key, values in series.items() for value, step in zip(values, steps)]
    client = MlflowClient()
    calls = 0
    for begin in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[begin: begin + _BATCH])
        calls += 1
    return calls


def log_figure(figure: Any, artifact_file: str) -> None:
    """Save a matplotlib Figure into the active run's artifacts."""
    mlflow.log_figure(figure, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    """Save text (CSV, Markdown) into the active run's artifacts."""
    mlflow.log_text(text, artifact_file)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Save a dict as JSON or YAML (by extension) into the active run's artifacts."""
    mlflow.log_dict(dict(data), artifact_file)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run."""
    mlflow.set_tags({key: str(value) for key, value in tags.items()})

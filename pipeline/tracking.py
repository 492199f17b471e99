"""The only module that imports mlflow: runs, params, metrics, figures, files and tags."""
from __future__ import annotations

import os
import re
import time
import warnings
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import unquote

import mlflow
import mlflow.data
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


def experiment_id_for(experiment: str) -> str:
    """The experiment runs go to: MLFLOW_EXPERIMENT_ID / _NAME when set (as by `mlflow run`), else `experiment`."""
    mlflow.set_tracking_uri(tracking_uri())
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    return ensure_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)


@contextmanager
def tracked_run(experiment: str, run_name: str, tags: Mapping[str, str] | None = None,
                run_id: str | None = None, system_metrics: bool = False) -> Iterator[RunHandle]:
    """Start a run, or continue one (`run_id`, or MLFLOW_RUN_ID from `mlflow run`); it ends FAILED on errors."""
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    experiment_id = None if run_id else experiment_id_for(experiment)
    mlflow.set_tracking_uri(tracking_uri())
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=None if run_id else run_name,
                           tags=dict(tags or {}), log_system_metrics=system_metrics)
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


def log_epoch_metrics(run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """One epoch's metrics in one call, sent off the training thread (flushed when the run ends)."""
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
    MlflowClient().log_batch(run_id, metrics=batch, synchronous=False)


def log_dataset(name: str, features: Any, targets: Any, source: str, digest: str, context: str) -> None:
    """Record which data the active run used (name, source folder, size, digest) with mlflow.log_input."""
    with warnings.catch_warnings():  # a local folder matches two equivalent source kinds; either is right
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(features, targets=targets, source=str(Path(source).resolve()),
                                         name=name, digest=digest)
    mlflow.log_input(dataset, context=context)


def log_file(local_path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a local file into the active run's artifacts (under the folder `artifact_path`)."""
    mlflow.log_artifact(str(local_path), artifact_path)


def download(run_id: str, artifact_path: str, folder: str | Path) -> Path | None:
    """A run's artifact copied into `folder`; None when the run has no such artifact."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar for one small file
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                        dst_path=str(folder)))
    except (OSError, mlflow.exceptions.MlflowException):
        return None


def log_pytorch_model(model: Any, input_example: Any, name: str = "model") -> str:
    """Log a torch model with its signature (inferred from `input_example`); returns its model URI."""
    import mlflow.pytorch  # noqa: PLC0415 - loads torch-specific MLflow code only when a model is logged

    requirements = [f"{package}=={version(package)}" for package in ("torch", "torchvision", "mlflow", "numpy")]
    info = mlflow.pytorch.log_model(model, name=name, input_example=input_example, pip_requirements=requirements)
    return info.model_uri


def find_resumable_run(experiment: str, config_hash: str) -> str | None:
    """The newest run of `experiment` with this config hash that did not finish (crashed, killed, failed)."""
    client = MlflowClient()
    runs = client.search_runs([experiment_id_for(experiment)],
                              filter_string=f"tags.config_hash = '{config_hash}'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    unfinished = [run for run in runs if run.info.status != "FINISHED"]
    return unfinished[0].info.run_id if unfinished else None


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

"""A run is an object: `open_run(...)` starts one (top level or nested, new or continued) and hands back a
`Run` whose methods log to it; the run ends FINISHED, FAILED (an error, or `fail()`) or KILLED (Ctrl-C) with
its block. Several can be open at once (lockstep children), each logging from any thread."""
from __future__ import annotations

import json
import tempfile
import time
import warnings
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mlflow
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline.core.errors import UsageError, one_line
from pipeline.core.handed import take_handed_run_id
from pipeline.tracking.experiments import experiment_id_for, mark_experiment
from pipeline.tracking.modelfiles import pickle_off
from pipeline.tracking.server import connect, is_store_error, refusals_as_usage_errors, registry_quiet
from pipeline.training.hooks import Step

_BATCH = 1000  # MLflow accepts at most 1000 metrics in one log_batch call
# Points of a sweep run's per-step history: the MLflow UI charts at most 320 of a metric's points (it samples
# the rest away), and each point costs the SQLite store about 0.15-0.35 ms to insert, so a tune's 396 runs of 500
# steps logged every step spent a minute on points nobody sees; 51 (every 10th step of 500) draw the same curve.
# Every step is still in trajectory.csv where there is one.
HISTORY_POINTS = 51
# How a store says that a row another process just wrote is there (PostgreSQL, SQLite, MySQL, SQLAlchemy)
DUPLICATE_KEY = ("duplicate key", "UniqueViolation", "UNIQUE constraint failed", "Duplicate entry", "IntegrityError")
FINISHED, FAILED, KILLED = (RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))


def history_steps(series: Mapping[str, Sequence[float]], at_most: int | None = None, budget: int | None = None,
                  stamp: int | None = None) -> list[Step]:
    """Per-step series of one length (step = index) as steps to log: every step, or about `at_most` of them, every
    k-th step of a `budget` of steps (the series' own length by default) and the last, so that runs of one
    budget that stopped at different steps share their steps; one timestamp (they were computed together)."""
    count = len(next(iter(series.values())))
    kept: Sequence[int] = range(count)
    if at_most is not None and count > at_most:
        stride = -(-max(budget or 0, count - 1) // (at_most - 1))
        kept = [*range(0, count - 1, stride), count - 1]
    now = int(time.time() * 1000) if stamp is None else stamp
    return [(step, now, {key: float(values[step]) for key, values in series.items()}) for step in kept]


class Run:
    """One MLflow run: its id, the status it will end with, and everything that logs to it."""

    def __init__(self, client: mlflow.MlflowClient, run_id: str, experiment_id: str) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.status = FINISHED

    def fail(self, message: str = "") -> None:
        """End the run FAILED without raising (e.g. it diverged); `message` is written on it as the reason."""
        self.status = FAILED
        if message:
            self.note_error(message)

    def note_error(self, message: str, tags: Mapping[str, str] | None = None) -> None:
        """Say on the run why it failed: tag `error` and its description (what the UI shows first). Best
        effort: a store that is down cannot be told, and the message is printed anyway."""
        try:
            self.set_tags({**(tags or {}), "error": message[:5000], "mlflow.note.content": f"**Failed:** {message}"})
        except Exception as error:  # noqa: BLE001 - reporting a failure must not raise another
            if not is_store_error(error):
                raise

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params the run does not have yet (`mlflow run` has already logged the ones given with -P). Another
        process logging the same params at the same moment (two tune commands reporting one tune) makes the
        store refuse the later insert (a duplicate key): then what it holds is read again and the rest logged."""
        for attempt in range(2):
            present = self.client.get_run(self.run_id).data.params
            fresh = [Param(key, str(value)) for key, value in params.items() if key not in present]
            if not fresh:
                return
            try:
                self.client.log_batch(self.run_id, params=fresh)
                return
            except mlflow.exceptions.MlflowException as error:
                if attempt or not any(word in str(error) for word in DUPLICATE_KEY):
                    raise

    def log_steps(self, steps: Sequence[Step], params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> int:
        """Several steps' metrics in as few calls as MLflow allows (1000 values a call), with `params` and `tags`
        (a fresh run's: nothing checks for params logged before) in the first; raises on failure (the Outbox
        retries it). Returns the calls made."""
        metrics = [Metric(key, float(value), stamp, int(step)) for step, stamp, values in steps
                   for key, value in values.items()]
        first = {"params": [Param(k, str(v)) for k, v in (params or {}).items()],
                 "tags": [RunTag(k, str(v)) for k, v in (tags or {}).items()]}
        if not (metrics or first["params"] or first["tags"]):
            return 0
        room = _BATCH - len(first["params"]) - len(first["tags"])
        self.client.log_batch(self.run_id, metrics=metrics[:room], **first)
        for begin in range(room, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[begin: begin + _BATCH])
        return 1 + max(0, -(-(len(metrics) - room) // _BATCH))

    def log_metrics(self, metrics: Mapping[str, float], step: int, tags: Mapping[str, Any] | None = None) -> None:
        """One step's metrics, now, in one call (with `tags`, if given)."""
        self.log_steps([(step, int(time.time() * 1000), metrics)], tags=tags)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run, in one call."""
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib Figure, or one drawn already (PNG bytes), into the run's artifacts."""
        if not isinstance(figure, bytes):
            self.client.log_figure(self.run_id, figure, artifact_file)
            return
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
            (Path(scratch) / name).write_bytes(figure)
            self.client.log_artifact(self.run_id, str(Path(scratch) / name), folder or None)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Save text (CSV, Markdown) into the run's artifacts."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """Save a dict as JSON or YAML (by extension) into the run's artifacts."""
        self.client.log_dict(self.run_id, dict(data), artifact_file)

    def log_files(self, files: Mapping[str, bytes | str | Mapping[str, Any]]) -> None:
        """Several artifacts at once (artifact path -> content: bytes, text, or a dict written as JSON as
        log_dict writes it), in one upload."""
        with tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
            for artifact_file, content in files.items():
                target = Path(scratch) / artifact_file
                target.parent.mkdir(parents=True, exist_ok=True)
                data = content if isinstance(content, (bytes, str)) else json.dumps(dict(content), indent=2, default=str)
                target.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
            self.client.log_artifacts(self.run_id, scratch)

    def log_file(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file into the run's artifacts (under the folder `artifact_path`)."""
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_dataset(self, name: str, features: Any, targets: Any, source: str, digest: str, context: str) -> None:
        """Record which data the run used (name, source folder, shape, digest), as mlflow.log_input does."""
        import mlflow.data  # noqa: PLC0415 - loads pandas: only runs that record a dataset pay for it

        with warnings.catch_warnings():  # a local folder matches two equivalent source kinds; either is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(features, targets=targets, source=str(Path(source).resolve()),
                                             name=name, digest=digest)
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        self.client.log_inputs(self.run_id, datasets=[entity])

    def log_model(self, model: Any, input_example: Any, registered_name: str | None = None,
                  metadata: Mapping[str, Any] | None = None) -> str:
        """Log a torch model as `model` with its signature (from `input_example`) and `metadata` (in its MLmodel
        file), optionally registered under `registered_name`; returns its model URI."""
        import mlflow.pytorch  # noqa: PLC0415 - torch-specific MLflow code, loaded only when a model is logged

        # mlflow's own version: mlflow-skinny (as on a lent GPU machine) has no `mlflow` distribution
        requirements = [f"{package}=={version(package)}" for package in ("torch", "torchvision")] + \
            [f"mlflow=={mlflow.__version__}", f"numpy=={version('numpy')}"]
        # Created here, in the run's experiment: outside an active run MLflow would file it under the fluent
        # API's experiment (Default), where runs:/<run_id>/model does not find it.
        logged = self.client.create_logged_model(self.experiment_id, name="model", source_run_id=self.run_id)
        with pickle_off(), registry_quiet():  # log_model loads the model back to check its input example: as predict loads it
            info = mlflow.pytorch.log_model(model, name="model", input_example=input_example, run_id=self.run_id,
                                            model_id=logged.model_id, pip_requirements=requirements,
                                            registered_model_name=registered_name, metadata=dict(metadata or {}))
        return info.model_uri


@contextmanager
def open_run(experiment: str, name: str, tags: Mapping[str, str] | None = None, parent: Run | None = None,
             run_id: str | None = None, system_metrics: bool = False, keep_running: bool = False) -> Iterator[Run]:
    """Start a run (nested under `parent`, in its experiment), or continue `run_id`, or the run `mlflow run`
    made for this process; it ends with the block: FINISHED, FAILED (an error, or `fail()`), KILLED (Ctrl-C).
    `keep_running=True` leaves a run that ends well RUNNING (work in other processes goes on under it)."""
    client = connect()
    handed = None
    if parent is None and run_id is None:  # consumed here: a nested run must not take `mlflow run`'s run
        run_id = handed = take_handed_run_id()
    renamed = {**(tags or {}), MLFLOW_RUN_NAME: name} if handed else tags  # not `mlflow run`'s random name
    with refusals_as_usage_errors(f"start a run in experiment {experiment!r}"):  # e.g. someone else's
        run = _continue(client, run_id, renamed) if run_id else _create(client, experiment, name, tags, parent)
    monitor = _system_metrics(run.run_id, resumed=bool(run_id)) if system_metrics else None
    try:
        yield run
    except KeyboardInterrupt:
        run.status = KILLED
        raise
    except Exception as error:
        run.fail(str(error) if isinstance(error, UsageError) else one_line(error))
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        if not (keep_running and run.status == FINISHED):
            _terminate(run)


def _create(client: mlflow.MlflowClient, experiment: str, name: str, tags: Mapping[str, str] | None,
            parent: Run | None) -> Run:
    """A new run, with MLflow's own context tags (source, user, git commit) as `mlflow.start_run` adds them."""
    experiment_id = parent.experiment_id if parent else experiment_id_for(client, experiment)
    if parent is None:
        mark_experiment(client, experiment_id)
    given = {**(tags or {}), MLFLOW_RUN_NAME: name, **({MLFLOW_PARENT_RUN_ID: parent.run_id} if parent else {})}
    created = client.create_run(experiment_id, run_name=name, tags=resolve_tags(given))
    return Run(client, created.info.run_id, experiment_id)


def _continue(client: mlflow.MlflowClient, run_id: str, tags: Mapping[str, str] | None) -> Run:
    """An existing run, RUNNING again, with `tags` set (a resumed run, or the one `mlflow run` made)."""
    found = client.get_run(run_id)
    client.update_run(run_id, status="RUNNING")
    mark_experiment(client, found.info.experiment_id)  # e.g. one `mlflow run --experiment-name` just made
    run = Run(client, run_id, found.info.experiment_id)
    if tags:
        run.set_tags(tags)
    _clear_failure(client, run, found.data.tags)
    return run


def _clear_failure(client: mlflow.MlflowClient, run: Run, tags: Mapping[str, str]) -> None:
    """A failed run that is continued no longer says it failed: its error moves to tag `resumed_after`."""
    if "error" not in tags:
        return
    run.set_tags({"resumed_after": tags["error"]})
    client.delete_tag(run.run_id, "error")
    if tags.get("mlflow.note.content", "").startswith("**Failed:**"):
        client.delete_tag(run.run_id, "mlflow.note.content")


def _system_metrics(run_id: str, resumed: bool) -> Any:
    """MLflow's sampler of CPU, memory (and GPU) figures, logging to `run_id` until finished."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # noqa: PLC0415

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed)
    monitor.start()
    return monitor


def _terminate(run: Run) -> None:
    """End the run with its status (best effort when the store itself is what failed)."""
    try:
        run.client.set_terminated(run.run_id, run.status)
    except Exception as error:  # noqa: BLE001
        if not is_store_error(error) or run.status == FINISHED:
            raise


def existing_run(run_id: str) -> Run:
    """A handle on a stored run, to nest new runs under it (its status is left as it is)."""
    client = connect()
    return Run(client, run_id, client.get_run(run_id).info.experiment_id)


def end_run(run_id: str, status: str) -> None:
    """End run `run_id` with `status` (FINISHED, FAILED, KILLED); best effort when the store fails."""
    try:
        connect().set_terminated(run_id, status)
    except Exception as error:  # noqa: BLE001
        if not is_store_error(error):
            raise


def kill_run(run_id: str) -> None:
    """End run `run_id` KILLED (interrupted) unless it FINISHED, dropping the failure its processes wrote as
    they were stopped. Best effort when the store fails."""
    try:
        client = connect()
        found = client.get_run(run_id)
        if found.info.status == FINISHED:
            return
        for key in ("error", "mlflow.note.content"):
            if key in found.data.tags and (key == "error" or found.data.tags[key].startswith("**Failed:**")):
                client.delete_tag(run_id, key)
        client.set_terminated(run_id, KILLED)
    except Exception as error:  # noqa: BLE001
        if not is_store_error(error):
            raise


def fail_run(run_id: str, message: str) -> None:
    """End run `run_id` FAILED, saying why (tag `error`, description). Best effort when the store fails."""
    try:
        client = connect()
        run = Run(client, run_id, client.get_run(run_id).info.experiment_id)
        run.fail(message)
        _terminate(run)
    except Exception as error:  # noqa: BLE001
        if not is_store_error(error):
            raise

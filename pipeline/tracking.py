"""The only module that imports mlflow: runs, params, metrics, figures, files and tags."""
from __future__ import annotations

import os
import re
import time
import urllib.request
import warnings
from contextlib import contextmanager, nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import unquote

import mlflow
import mlflow.data
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds, read_mlflow_creds
from mlflow.utils.rest_utils import http_request

from pipeline.config import PROJECT_ROOT
from pipeline.errors import UsageError

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
_BATCH = 1000  # MLflow accepts at most 1000 metrics in one log_batch call


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store in the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# Fail an HTTP call in seconds, not minutes: the Outbox retries it for as long as an outage lasts.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our downloads are a file or a model


def check_server(uri: str | None = None, timeout_s: float = 5.0) -> None:
    """For an http(s) tracking URI, fail fast with one line when the server does not answer (MLflow itself
    retries for minutes), or refuses our login: before any run exists."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            response.read(64)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UsageError(f"tracking server {uri} does not answer ({reason}); start it (make server) or point "
                         "MLFLOW_TRACKING_URI elsewhere") from None
    # /health is open even on a server with a login (mlflow server --app-name basic-auth): ask for something
    # that needs one, with the credentials MLflow's client would send.
    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                                max_retries=0, timeout=timeout_s, params={"max_results": 1})
    except (OSError, mlflow.exceptions.MlflowException):
        return  # not a login problem: MLflow's own calls report (and the Outbox retries) the rest
    if response.status_code in (401, 403):
        raise UsageError(_refusal(uri, response.status_code, "read experiments"))


def _refusal(uri: str, status: int, action: str) -> str:
    """One line for a server that refused us (HTTP 401 or 403), naming the variables that hold the login."""
    user = read_mlflow_creds().username
    if status == 401 and not user:
        return (f"tracking server {uri} requires a login (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD")
    if status == 401:
        return (f"tracking server {uri} refused the login of user {user!r} (HTTP 401); check "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    return (f"tracking server {uri} does not let user {user!r} {action} (HTTP 403); ask its admin for that "
            "permission, or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to another user")


@contextmanager
def _refusals_as_usage_errors(action: str) -> Iterator[None]:
    """A 401/403 from the server while doing `action` becomes one UsageError line (exit 2), not a traceback."""
    try:
        yield
    except mlflow.exceptions.MlflowException as error:
        status = error.get_http_status_code()
        if status not in (401, 403):
            raise
        raise UsageError(_refusal(tracking_uri(), status, action)) from None


def is_permanent(error: BaseException) -> bool:
    """Whether retrying `error` cannot help: the server refused the request (HTTP 4xx other than 408/429), or
    the local artifact folder cannot be written. Outages (no answer, 5xx, a busy database) are transient."""
    import requests  # noqa: PLC0415 - MLflow's HTTP client: its connection errors are OSErrors too

    if isinstance(error, mlflow.exceptions.MlflowException):
        status = error.get_http_status_code()
        return 400 <= status < 500 and status not in (408, 429)
    if isinstance(error, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return False
    return isinstance(error, OSError)


def is_store_error(error: BaseException) -> bool:
    """Whether `error` came from the tracking or artifact store (refused, down, or a folder it cannot write),
    rather than from a bug: those are reported in one line, never as a traceback."""
    import requests  # noqa: PLC0415

    return isinstance(error, (mlflow.exceptions.MlflowException, requests.exceptions.RequestException, OSError))


def note_error(run_id: str, message: str, tags: Mapping[str, str] | None = None) -> None:
    """Say on the run why it failed: tag `error` and the run's description (what the UI shows first).
    Best effort: a store that is down cannot be told, and the message is printed anyway."""
    try:
        set_tags(run_id, {**(tags or {}), "error": message[:5000], "mlflow.note.content": f"**Failed:** {message}"})
    except Exception as error:  # noqa: BLE001 - reporting a failure must not raise another
        if not is_store_error(error):
            raise


def one_line(error: BaseException) -> str:
    """An error as one short line: its type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


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
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(name)  # a concurrent run created it first: use theirs
        if found is None:
            raise
        return found.experiment_id


class RunHandle:
    """The active run: its id and the status it will end with."""

    def __init__(self, run_id: str, experiment_id: str) -> None:
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.status = RunStatus.to_string(RunStatus.FINISHED)

    def fail(self) -> None:
        """End the run as FAILED without raising (e.g. it diverged)."""
        self.status = RunStatus.to_string(RunStatus.FAILED)


def launcher_run_tags() -> dict[str, str] | None:
    """The tags of the run `mlflow run` handed this process (MLFLOW_RUN_ID), or None when it handed none."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    mlflow.set_tracking_uri(tracking_uri())
    return dict(MlflowClient().get_run(run_id).data.tags)


def record_refusal(message: str) -> None:
    """Input refused before any run of ours started: when `mlflow run` made a run for this process, end it
    FAILED with the message as its description and tag `error`, so the UI says why. Best effort."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        mlflow.set_tracking_uri(tracking_uri())
        note_error(run_id, message)
        MlflowClient().set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except Exception as error:  # noqa: BLE001 - the refusal is printed either way
        if not is_store_error(error):
            raise


def experiment_id_for(experiment: str) -> str:
    """The experiment runs go to: MLFLOW_EXPERIMENT_ID / _NAME when set (as by `mlflow run`), else `experiment`."""
    mlflow.set_tracking_uri(tracking_uri())
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    return ensure_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)


@contextmanager
def tracked_run(experiment: str, run_name: str, tags: Mapping[str, str] | None = None,
                run_id: str | None = None, system_metrics: bool = False,
                parent: RunHandle | None = None) -> Iterator[RunHandle]:
    """Start a run, or continue one (`run_id`, or MLFLOW_RUN_ID from `mlflow run`); it ends FAILED on errors.

    With `parent` (the active run) the new run is nested under it, in the parent's experiment.
    """
    mlflow.set_tracking_uri(tracking_uri())
    if parent is None:
        check_server(tracking_uri())
        # Consumed here: mlflow.start_run would otherwise give `mlflow run`'s run to the first nested child too.
        run_id = run_id or os.environ.pop("MLFLOW_RUN_ID", None)
    with _refusals_as_usage_errors(f"start a run in experiment {experiment!r}"):  # e.g. someone else's
        experiment_id = None if run_id else (parent.experiment_id if parent else experiment_id_for(experiment))
        run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=None if run_id else run_name,
                               tags=dict(tags or {}), log_system_metrics=system_metrics, nested=parent is not None)
    if run_id and tags:  # start_run applies tags only to runs it creates, not to one it continues
        mlflow.set_tags(dict(tags))
    handle = RunHandle(run.info.run_id, run.info.experiment_id)
    try:
        yield handle
    except KeyboardInterrupt:
        handle.status = RunStatus.to_string(RunStatus.KILLED)
        raise
    except BaseException as error:
        handle.fail()
        _note_failure(handle, error)
        raise
    finally:
        mlflow.flush_async_logging()
        mlflow.end_run(handle.status)


@contextmanager
def child_run(parent: RunHandle, run_name: str, tags: Mapping[str, str]) -> Iterator[RunHandle]:
    """A run nested under `parent` that is not made the active run (several can be open at once); it ends
    FINISHED, FAILED (an error, or `fail()`) or KILLED (Ctrl-C)."""
    run = MlflowClient().create_run(parent.experiment_id, run_name=run_name,
                                    tags={**tags, MLFLOW_PARENT_RUN_ID: parent.run_id})
    handle = RunHandle(run.info.run_id, parent.experiment_id)
    with _ending(handle):
        yield handle
    mlflow.flush_async_logging()
    MlflowClient().set_terminated(handle.run_id, handle.status)


@contextmanager
def _ending(handle: RunHandle) -> Iterator[None]:
    """Set the status a run ends with from how its block ended; a refused input is written on the run."""
    try:
        yield
    except KeyboardInterrupt:
        handle.status = RunStatus.to_string(RunStatus.KILLED)
        _end_quietly(handle)
        raise
    except BaseException as error:
        handle.fail()
        _note_failure(handle, error)
        _end_quietly(handle)
        raise


def _note_failure(handle: RunHandle, error: BaseException) -> None:
    """Write why a run failed on it: a refused input's own line, else the error's type and message."""
    if isinstance(error, Exception):
        note_error(handle.run_id, str(error) if isinstance(error, UsageError) else one_line(error))


def _end_quietly(handle: RunHandle) -> None:
    """Give an interrupted or failed run its status now (best effort: the store may be the problem)."""
    try:
        MlflowClient().set_terminated(handle.run_id, handle.status)
    except Exception as error:  # noqa: BLE001
        if not is_store_error(error):
            raise


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
    return _log_batches(run_id, [Metric(key, float(value), now, int(step))
                                 for key, values in series.items() for value, step in zip(values, steps)])


def log_steps(run_id: str, steps: Sequence[tuple[int, int, Mapping[str, float]]]) -> None:
    """Several steps' metrics, each (step, timestamp in ms, {key: value}), in as few calls as MLflow allows;
    synchronous, raises on failure (the Outbox retries it)."""
    _log_batches(run_id, [Metric(key, float(value), stamp, int(step))
                          for step, stamp, values in steps for key, value in values.items()])


def log_metrics_now(run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """One step's metrics in one synchronous call that raises on failure."""
    log_steps(run_id, [(step, int(time.time() * 1000), metrics)])


def _log_batches(run_id: str, metrics: list[Metric]) -> int:
    """log_batch calls of at most _BATCH metrics each; returns how many were made."""
    client = MlflowClient()
    for begin in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[begin: begin + _BATCH])
    return -(-len(metrics) // _BATCH)


def log_dataset(run_id: str, name: str, features: Any, targets: Any, source: str, digest: str,
                context: str) -> None:
    """Record which data a run used (name, source folder, shape, digest), as mlflow.log_input does."""
    with warnings.catch_warnings():  # a local folder matches two equivalent source kinds; either is right
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(features, targets=targets, source=str(Path(source).resolve()),
                                         name=name, digest=digest)
    entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
    MlflowClient().log_inputs(run_id, datasets=[entity])


def log_file(run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a local file into a run's artifacts (under the folder `artifact_path`)."""
    MlflowClient().log_artifact(run_id, str(local_path), artifact_path)


def download(run_id: str, artifact_path: str, folder: str | Path) -> Path | None:
    """A run's artifact copied into `folder`; None when the run has no such artifact."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                        dst_path=str(folder)))
    except (OSError, mlflow.exceptions.MlflowException):
        return None


def log_pytorch_model(run_id: str, model: Any, input_example: Any, registered_name: str | None = None) -> str:
    """Log a torch model as `model` of run `run_id` with its signature (from `input_example`), optionally
    registered under `registered_name`; returns its model URI. Call it last: it needs the run active, and a run
    activated here for it is ended (FINISHED) afterwards."""
    import mlflow.pytorch  # noqa: PLC0415 - loads torch-specific MLflow code only when a model is logged

    requirements = [f"{package}=={version(package)}" for package in ("torch", "torchvision", "mlflow", "numpy")]
    active = mlflow.active_run()
    context = nullcontext() if active and active.info.run_id == run_id else mlflow.start_run(run_id, nested=True)
    with context:
        info = mlflow.pytorch.log_model(model, name="model", input_example=input_example,
                                        pip_requirements=requirements, registered_model_name=registered_name)
    return info.model_uri


def load_predictor(model_uri: str) -> Callable[[Any], Any]:
    """A logged model's predict function (float32 NCHW array -> logits), or a UsageError naming the URI."""
    import mlflow.pyfunc  # noqa: PLC0415

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.pyfunc.load_model(model_uri).predict
    except (mlflow.exceptions.MlflowException, OSError, ValueError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UsageError(f"model_uri: cannot load {model_uri!r} from {tracking_uri()} ({reason})") from None


def set_alias(model_name: str, run_id: str, alias: str) -> str:
    """Point `models:/<model_name>@<alias>` at the version holding run `run_id`'s model (registering it if
    needed); returns that version."""
    client = MlflowClient()
    versions = [v for v in client.search_model_versions(f"name = '{model_name}'") if v.run_id == run_id]
    if versions:
        version = max(versions, key=lambda v: int(v.version)).version
    else:
        version = mlflow.register_model(f"runs:/{run_id}/model", model_name).version
    client.set_registered_model_alias(model_name, alias, version)
    return str(version)


def find_resumable_run(experiment: str, config_hash: str) -> str | None:
    """The newest run of `experiment` with this config hash that did not finish (crashed, killed, failed), and
    did not diverge (continuing that would diverge again)."""
    client = MlflowClient()
    runs = client.search_runs([experiment_id_for(experiment)],
                              filter_string=f"tags.config_hash = '{config_hash}'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    unfinished = [run for run in runs if run.info.status != "FINISHED" and run.data.tags.get("diverged") != "true"]
    return unfinished[0].info.run_id if unfinished else None


def find_finished_run(experiment_id: str, config_hash: str, code: str) -> str | None:
    """The newest run with this config hash and code version that reached an outcome (finished, or failed by
    diverging, which the same code and config would do again), if any: a sweep reuses it."""
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.config_hash = '{config_hash}' and tags.code_version = '{code}'",
        order_by=["attributes.start_time DESC"], max_results=50)
    for run in runs:
        if run.info.status == "FINISHED" or run.data.tags.get("diverged") == "true":
            return run.info.run_id
    return None


def fetch_run(run_id: str, metric_keys: Sequence[str]) -> dict[str, Any]:
    """A run's status, params, tags and the full history of each of `metric_keys`, as plain data."""
    client = MlflowClient()
    run = client.get_run(run_id)
    histories = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in metric_keys}
    return {"run_id": run_id, "status": run.info.status, "params": dict(run.data.params),
            "tags": dict(run.data.tags), "metrics": histories, "experiment_id": run.info.experiment_id}


def latest_runs(experiment: str, task: str) -> list[str]:
    """Ids of the newest run per optimizer of `task` in `experiment` (for redrawing a comparison)."""
    found = MlflowClient().get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = MlflowClient().search_runs([found.experiment_id], filter_string=f"tags.task = '{task}'",
                                      order_by=["attributes.start_time DESC"], max_results=1000)
    newest: dict[str, str] = {}
    for run in runs:
        newest.setdefault(run.data.params.get("optimizer", run.info.run_id), run.info.run_id)
    return list(newest.values())


def last_step(run_id: str, key: str) -> int:
    """The highest step at which run `run_id` has logged metric `key`; 0 when it has none."""
    return max((m.step for m in MlflowClient().get_metric_history(run_id, key)), default=0)


def run_exists(run_id: str) -> bool:
    """Whether the store has a run with this id."""
    try:
        MlflowClient().get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def log_figure(run_id: str, figure: Any, artifact_file: str) -> None:
    """Save a matplotlib Figure into a run's artifacts."""
    MlflowClient().log_figure(run_id, figure, artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    """Save text (CSV, Markdown) into a run's artifacts."""
    MlflowClient().log_text(run_id, text, artifact_file)


def log_dict(run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    """Save a dict as JSON or YAML (by extension) into a run's artifacts."""
    MlflowClient().log_dict(run_id, dict(data), artifact_file)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a run, in one call."""
    MlflowClient().log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

"""Where runs go and what can go wrong there: the tracking URI, a check of the server at the edge, and how
store errors are told apart (refused for good, an outage, a bug)."""
from __future__ import annotations

import io
import os
import urllib.request
from contextlib import contextmanager
from typing import Iterator

import mlflow
from mlflow.utils.credentials import get_default_host_creds, read_mlflow_creds
from mlflow.utils.rest_utils import http_request

from pipeline.core.errors import UsageError
from pipeline.core.sqlite import write_ahead
from pipeline.core.provenance import PROJECT_ROOT

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"

# Fail an HTTP call in seconds, not minutes: the Outbox retries it for as long as an outage lasts.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our downloads are a file or a model


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store in the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect() -> mlflow.MlflowClient:
    """A client of the store runs go to (and the fluent API pointed at it too, for model loading)."""
    uri = tracking_uri()
    write_ahead(uri)  # an embedded SQLite store: workers' writes queue less (core/sqlite.py)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


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
def refusals_as_usage_errors(action: str) -> Iterator[None]:
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



@contextmanager
def registry_quiet() -> Iterator[None]:
    """MLflow's registry says "Successfully registered model ..." and "Created version ..." on stderr for every
    version (its own stream, not a logger): kept back for the block; the run and the summary say what was
    registered."""
    from mlflow.utils import logging_utils  # noqa: PLC0415

    saved, logging_utils.MLFLOW_LOGGING_STREAM = logging_utils.MLFLOW_LOGGING_STREAM, io.StringIO()
    try:
        yield
    finally:
        logging_utils.MLFLOW_LOGGING_STREAM = saved

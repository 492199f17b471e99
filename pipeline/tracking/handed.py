"""The run `mlflow run` made for this process before optlab started: its tags, the experiment it went to, and
what to say on it when the work is logged elsewhere or fails before a run of ours exists."""
from __future__ import annotations

import shlex
from typing import Mapping

from mlflow.entities import RunTag

from pipeline.core.errors import UsageError
from pipeline.core.handed import handed_run_id, take_handed_run_id
from pipeline.tracking.run import fail_run
from pipeline.tracking.server import connect


def handed_run_tags() -> dict[str, str] | None:
    """The tags of the run `mlflow run` handed this process, or None when it handed none."""
    run_id = handed_run_id()
    return dict(connect().get_run(run_id).data.tags) if run_id else None


def check_handed_experiment() -> None:
    """`-P experiment=X` under `mlflow run`, whose run went to another experiment (the one --experiment-name
    names, else Default) before this process started: refused, since a run cannot move. `mlflow run` logs the raw
    -P strings on a run it makes, so a fresh one (no `task` tag of ours yet) has param `experiment` only when the
    user gave it."""
    run_id = handed_run_id()
    if not run_id:
        return
    client = connect()
    run = client.get_run(run_id)
    asked = run.data.params.get("experiment")
    if asked is None or "task" in run.data.tags:
        return
    actual = client.get_experiment(run.info.experiment_id).name
    if asked != actual:
        raise UsageError(f"experiment: `mlflow run` made its run in experiment {actual!r} before optlab started, "
                         f"and a run cannot move; pass --experiment-name {shlex.quote(asked)} to `mlflow run` "
                         f"instead of -P experiment={shlex.quote(asked)}")


def note_handed_run(message: str, tags: Mapping[str, str]) -> None:
    """Say on the run `mlflow run` made for this process (if any) what became of it, when the work is logged
    elsewhere (a tune command that joined an existing study); `mlflow run` ends it when the process does."""
    run_id = take_handed_run_id()
    if run_id:
        noted = {**tags, "mlflow.note.content": message}
        connect().log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in noted.items()])


def fail_handed_run(message: str) -> None:
    """End the run `mlflow run` made for this process FAILED, with `message` as its description and tag
    `error`, so the UI says why. Best effort: the message is printed either way."""
    fail_run(handed_run_id(), message)

"""Questions asked of stored runs and models: a run to resume, a finished one to reuse, a run's history, the
newest runs of an experiment, an artifact, a model to predict with, a registry alias."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import mlflow

from pipeline.core.errors import UsageError, one_line
from pipeline.tracking.experiments import experiment_id_for, set_experiment_tag
from pipeline.tracking.modelfiles import check_model_folder, load_refusal, pickle_off
from pipeline.tracking.server import connect, registry_quiet, tracking_uri


def find_resumable_run(experiment: str, config_hash: str) -> str | None:
    """The newest run of `experiment` with this config hash that did not finish (crashed, killed, failed), and
    did not diverge (continuing that would diverge again)."""
    client = connect()
    runs = client.search_runs([experiment_id_for(client, experiment)],
                              filter_string=f"tags.config_hash = '{config_hash}'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    unfinished = [run for run in runs if run.info.status != "FINISHED" and run.data.tags.get("diverged") != "true"]
    return unfinished[0].info.run_id if unfinished else None


def find_finished_run(experiment_id: str, config_hash: str, code: str) -> str | None:
    """The newest run with this config hash and code version that reached an outcome (finished, or failed by
    diverging, which the same code and config would do again), if any: a sweep reuses it."""
    runs = connect().search_runs(
        [experiment_id], filter_string=f"tags.config_hash = '{config_hash}' and tags.code_version = '{code}'",
        order_by=["attributes.start_time DESC"], max_results=50)
    for run in runs:
        if run.info.status == "FINISHED" or run.data.tags.get("diverged") == "true":
            return run.info.run_id
    return None


def running_runs(experiment: str, tag: str, value: str) -> list[str]:
    """The runs of `experiment` (where this process files runs) still RUNNING whose tag `tag` is `value`."""
    client = connect()
    found = client.search_runs([experiment_id_for(client, experiment)], max_results=1000,
                               filter_string=f"tags.{tag} = '{value}' and attributes.status = 'RUNNING'")
    return [run.info.run_id for run in found]


def fetch_run(run_id: str, metric_keys: Sequence[str]) -> dict[str, Any]:
    """A run's status, params, tags and the full history of each of `metric_keys`, as plain data."""
    client = connect()
    run = client.get_run(run_id)
    histories = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in metric_keys}
    return {"run_id": run_id, "status": run.info.status, "params": dict(run.data.params),
            "tags": dict(run.data.tags), "metrics": histories, "experiment_id": run.info.experiment_id}


def latest_runs(experiment: str, task: str) -> list[str]:
    """Ids of the newest run per optimizer of `task` in `experiment` (for redrawing a comparison)."""
    client = connect()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.task = '{task}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    newest: dict[str, str] = {}
    for run in runs:
        newest.setdefault(run.data.params.get("optimizer", run.info.run_id), run.info.run_id)
    return list(newest.values())


def last_step(run_id: str, key: str) -> int:
    """The highest step at which run `run_id` has logged metric `key`; 0 when it has none."""
    return max((m.step for m in connect().get_metric_history(run_id, key)), default=0)


def run_exists(run_id: str) -> bool:
    """Whether the store has a run with this id."""
    try:
        connect().get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def download(run_id: str, artifact_path: str, folder: str | Path) -> Path | None:
    """A run's artifact copied into `folder`; None when the run has no such artifact."""
    connect()
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                        dst_path=str(folder)))
    except (OSError, mlflow.exceptions.MlflowException):
        return None


def load_predictor(model_uri: str) -> Callable[[Any], Any]:
    """A logged model's predict function (uint8 NHWC images -> class probabilities), or a UsageError naming
    the URI. The model is downloaded, its folder checked to be optlab's pt2 model (modelfiles), and loaded with
    MLflow's pickle deserialization off: no file of it runs code."""
    import mlflow.pyfunc  # noqa: PLC0415

    connect()
    where = f"{model_uri!r} from {tracking_uri()}"
    with tempfile.TemporaryDirectory(prefix="optlab-model-") as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))
        except (mlflow.exceptions.MlflowException, OSError, ValueError) as error:
            raise UsageError(f"model_uri: cannot load {where} ({one_line(error)})") from None
        check_model_folder(local, model_uri)
        with pickle_off():
            try:
                return mlflow.pyfunc.load_model(str(local)).predict
            except Exception as error:  # noqa: BLE001 - a damaged archive can raise almost anything in torch
                raise UsageError(f"model_uri: cannot load {where} ({load_refusal(error)})") from None


def set_alias(model_name: str, run_id: str, alias: str) -> str:
    """Point `models:/<model_name>@<alias>` at the version holding run `run_id`'s model (registering it if
    needed); returns that version."""
    client = connect()
    versions = [v for v in client.search_model_versions(f"name = '{model_name}'") if v.run_id == run_id]
    if versions:
        version = max(versions, key=lambda v: int(v.version)).version
    else:
        with registry_quiet():
            version = mlflow.register_model(f"runs:/{run_id}/model", model_name).version
    client.set_registered_model_alias(model_name, alias, version)
    return str(version)


SWEEPS_TAG = "sweeps"  # the parent run ids of every sweep (compare, tune) a run belongs to, comma-separated
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves a local store
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # the UI reads a shared view's state from this experiment tag


def add_to_sweep(run_ids: Sequence[str], sweep_id: str) -> None:
    """Tag each run as part of sweep `sweep_id` (a reused child joins every sweep that uses it)."""
    client = connect()
    for run_id in run_ids:
        have = client.get_run(run_id).data.tags.get(SWEEPS_TAG, "")
        if sweep_id not in have.split(","):
            client.set_tag(run_id, SWEEPS_TAG, ",".join(filter(None, [have, sweep_id]))[-5000:])


def share_sweep_view(experiment_id: str, sweep_id: str, group: tuple[str, str], role: str = "",
                     key: str = "", scatter: Sequence[tuple[str, str]] = ()) -> None:
    """Store a UI view of the sweep in the experiment (the UI's own shared views: experiment tag
    `mlflow.sharedViewState.<key>`, key `sweep_id` unless given): its runs (those tagged `role`, if given), grouped
    by `group` = (param or tag, name) so that every child shows (the runs table keeps children folded under their
    parent, and a view cannot unfold them), one chart line or bar each; `scatter` (param, metric) pairs open as
    scatter charts first (lr against score), in a section of their own."""
    search = f"tags.{SWEEPS_TAG} LIKE '%{sweep_id}%'" + (f" AND tags.role = '{role}'" if role else "")
    state = {"searchFilter": search, "orderByKey": "attributes.start_time",
             "orderByAsc": False, "useGroupedValuesInCharts": False, "hideEmptyCharts": True,
             "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": group[0], "groupByData": group[1]}]}}
    if scatter:  # every run a point (the UI shows the first 10 rows' by default: here, two optimizers' trials)
        section, state["runsHiddenMode"], state["runsHidden"] = "optlab-scatter", "CUSTOM", []
        state["compareRunSections"] = [{"uuid": section, "name": "Against the searched setting", "display": True,
                                        "isReordered": False, "deleted": False, "isGenerated": False}]
        state["compareRunCharts"] = [
            {"uuid": f"optlab-{x}-{y}", "type": "SCATTER", "runsCountToCompare": 1000, "metricSectionId": section,
             "deleted": False, "isGenerated": False, "displayName": f"{y} against {x}",
             "xaxis": {"key": x, "type": "PARAM"}, "yaxis": {"key": y, "type": "METRIC"}} for x, y in scatter]
    set_experiment_tag(connect(), experiment_id, f"{SHARED_VIEW_TAG}{key or sweep_id}", json.dumps(state))


def sweep_link(sweep_id: str, key: str = "") -> str:
    """A UI link that opens the sweep's shared view (share_sweep_view; `key` as given there) in the
    model-training mode, as charts."""
    experiment_id = connect().get_run(sweep_id).info.experiment_id
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return (f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={key or sweep_id}&compareRunsMode=CHART"
            "&workflowType=machine_learning")

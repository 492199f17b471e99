"""The `tune` entry point: every optimizer gets the same budget of Optuna trials from one search space, its best
setting is rerun over seeds, and one MLflow parent run holds the comparison. The same command on other machines
(same storage, same tracking server) joins the study; run again, it continues it."""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import time

import optuna

from pipeline import search, tracking
from pipeline.config import as_params
from pipeline.errors import EXIT_OK, UsageError
from pipeline.summary import parent_name
from pipeline.trials import RunIds, Worker, cifar_inputs, on_stale
from pipeline.tune_config import TuneConfig
from pipeline.tune_report import collect, report

JOIN_TIMEOUT_S = 300  # how long a joining worker waits for the first one to create the MLflow runs
STOP_TIMEOUT_S = 30  # how long an interrupted command waits for its workers to end their runs


def storage_url(cfg: TuneConfig) -> str:
    """The Optuna storage: as given, else optuna.db beside the tracking store (or in this folder)."""
    if cfg.storage:
        return cfg.storage
    return f"sqlite:///{tracking.local_store_folder() / 'optuna.db'}"


def _parent_params(cfg: TuneConfig) -> dict[str, str]:
    own = {k: v for k, v in as_params(cfg).items() if k != "children"}
    base = [as_params(plan.base) for plan in cfg.children]
    shared = {k: v for k, v in base[0].items() if all(b.get(k) == v for b in base) and k not in own}
    return {**shared, **own, "optimizers": ",".join(dict.fromkeys(p.optimizer for p in cfg.children)),
            "workloads": ",".join(dict.fromkeys(p.workload for p in cfg.children)), "storage": search.redacted(
                storage_url(cfg)), "tune_key": cfg.key()}


def create_runs(cfg: TuneConfig) -> RunIds:
    """The parent run and one child per (optimizer, workload), left RUNNING for the workers."""
    tags = {"task": "tune", "tune_task": cfg.task, "tune_key": cfg.key()}  # `sweeps`: set once the id is known
    optimizers = len({plan.optimizer for plan in cfg.children})
    name = parent_name("tune", cfg.task, optimizers, time.time(), f"-{cfg.trials}x{cfg.seeds}")
    with tracking.open_run(cfg.experiment, name, tags, keep_running=True) as parent:
        parent.log_params(_parent_params(cfg))
        parent.set_tags({tracking.SWEEPS_TAG: parent.run_id})
        children = {}
        for plan in cfg.children:
            child_tags = {"role": "optimizer", "optimizer": plan.optimizer, "workload": plan.workload,
                          "study": cfg.study_name(plan), tracking.SWEEPS_TAG: parent.run_id}
            with tracking.open_run(cfg.experiment, plan.label, child_tags, parent=parent, keep_running=True) as run:
                children[plan.label] = run.run_id
    return RunIds(parent.run_id, children)


def join(cfg: TuneConfig, storage: object) -> RunIds:
    """The tune's runs: made by the first process (which records them in the storage), found by every other."""
    name = f"optlab-tune-{cfg.key()}:runs"
    if search.claim(storage, name):
        ids = create_runs(cfg)
        optuna.load_study(study_name=name, storage=storage).set_user_attr(
            "runs", {"parent": ids.parent, "children": dict(ids.children)})
        return ids
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = optuna.load_study(study_name=name, storage=storage).user_attrs.get("runs")
        if runs:
            if not tracking.run_exists(runs["parent"]):
                raise UsageError(f"storage: this tune's study names run {runs['parent']}, which the tracking store "
                                 f"{tracking.tracking_uri()} lacks; point at the same tracking store, or give a "
                                 "new storage or experiment")
            tracking.note_handed_run(f"This command joined tune run {runs['parent']}: its trials are logged there.",
                                     {"joined_tune_run": runs["parent"]})
            return RunIds(runs["parent"], runs["children"])
        time.sleep(1.0)
    raise UsageError(f"storage: no runs recorded for study {name} after {JOIN_TIMEOUT_S} s (did its first worker "
                     "die while creating them?)")


def _worker_process(cfg: TuneConfig, ids: RunIds, url: str) -> None:
    """A local worker process: the same loop as the main one."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        Worker(cfg, ids, search.open_storage(url, cfg.heartbeat_s, on_stale)).work()
    except KeyboardInterrupt:
        sys.exit(130)


def gpu_plan(workers: int, visible: list[str]) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each worker: one GPU each, round robin, when there are several GPUs; None
    (inherit) otherwise."""
    if len(visible) < 2:
        return [None] * workers
    return [visible[index % len(visible)] for index in range(workers)]


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, without starting CUDA (the workers choose theirs before they do)."""
    import torch  # noqa: PLC0415

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def worker_count(cfg: TuneConfig) -> int:
    """workers=0: one worker per visible GPU for cifar on a machine with several, else one."""
    if cfg.workers:
        return cfg.workers
    gpus = _visible_gpus() if cfg.task == "cifar" else []
    return len(gpus) if len(gpus) > 1 else 1


def run_workers(cfg: TuneConfig, ids: RunIds, url: str, storage: object, cifar: tuple | None = None) -> None:
    """Take trials here and in workers-1 more processes until every study is done. With several GPUs every
    worker is a process of its own, each seeing one GPU (CUDA_VISIBLE_DEVICES), and this one only waits."""
    devices = gpu_plan(cfg.workers, _visible_gpus() if cfg.workers > 1 and cfg.task == "cifar" else [])
    here = devices[0] is None  # no GPU split: this process is worker 0
    context, extra = multiprocessing.get_context("spawn"), []
    for index, device in enumerate(devices[1:] if here else devices, start=1 if here else 0):
        with _environment("CUDA_VISIBLE_DEVICES", device):
            extra.append(context.Process(target=_worker_process, args=(cfg, ids, url), name=f"optlab-worker-{index}"))
            extra[-1].start()
    try:
        if here:
            Worker(cfg, ids, storage, cifar).work()
    except BaseException:  # Ctrl-C (or a crash) here: the workers stop as on Ctrl-C (their runs end KILLED)
        for process in extra:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        raise
    finally:
        for process in extra:
            process.join(timeout=STOP_TIMEOUT_S)
            if process.is_alive():
                process.terminate()
    failed = [p.name for p in extra if p.exitcode not in (0, None)]
    if failed:
        print(f"warning: worker processes {', '.join(failed)} ended with errors", file=sys.stderr)
    if not here:
        Worker(cfg, ids, storage, cifar).work()  # whatever the workers left (one died): done here, on the default GPU


@contextlib.contextmanager
def _environment(name: str, value: str | None):
    """os.environ[name] = value for the block (None: unchanged), as spawned processes inherit it."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None and saved is None:
            os.environ.pop(name, None)
        elif value is not None:
            os.environ[name] = saved


def main(cfg: TuneConfig) -> int:
    """The `tune` entry point: print the tuned table and which optimizer wins before and after tuning."""
    run_id, markdown, lines = tune(cfg)
    print(markdown)
    print("\n".join(lines))
    print(f"tune run {run_id}")
    local = "" if tracking.tracking_uri().startswith("http") else " (after `make ui`)"
    link = tracking.sweep_link(run_id)
    print(f"this tune in the MLflow UI: {link}{local}")
    return EXIT_OK


def tune(cfg: TuneConfig) -> tuple[str, str, list[str]]:
    """Join (or start) the study, work until every study is done, report; returns (parent run id, the tuned
    table in Markdown, one line per workload saying who wins at default settings and who wins tuned)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = dataclasses.replace(cfg, workers=worker_count(cfg))
    cifar = cifar_inputs(cfg) if cfg.task == "cifar" else None  # no data, no device: one line before any run
    url = storage_url(cfg)
    storage = search.open_storage(url, cfg.heartbeat_s, on_stale)
    ids = join(cfg, storage)
    print(f"tune {cfg.task}: {len(cfg.children)} studies (optimizer x workload), {cfg.trials} trials and "
          f"{cfg.seeds} seeds each, {cfg.workers} worker(s) here; storage {search.redacted(url)}; tune run "
          f"{ids.parent}", flush=True)
    with tracking.open_run(cfg.experiment, f"tune-{cfg.task}", run_id=ids.parent) as parent:
        try:
            run_workers(cfg, ids, url, storage, cifar)
        except KeyboardInterrupt:  # the parent ends KILLED with its block; the per-optimizer runs too
            for run_id in ids.children.values():
                tracking.end_run(run_id, "KILLED")
            raise
        results = collect(cfg, Worker(cfg, ids, storage))
        markdown, lines = report(cfg, parent, ids, results)
        tracking.share_sweep_view(parent.experiment_id, parent.run_id, ("tag", "optimizer"))
    return parent.run_id, markdown, lines

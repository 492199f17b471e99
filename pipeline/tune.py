"""The `tune` entry point: every optimizer gets the same budget of Optuna trials from one search space, its best
setting is rerun over seeds, and one MLflow parent run holds the comparison. The same command on other machines
(same storage, same tracking server) joins the study; run again, it continues it."""
from __future__ import annotations

import atexit
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

import optuna

from pipeline import tracking
from pipeline.config.tasks import as_params
from pipeline.config.tune import TuneConfig
from pipeline.core import progress
from pipeline.core.env import environment
from pipeline.core.errors import EXIT_INTERRUPTED, EXIT_OK, UsageError
from pipeline.core.progress import Counter
from pipeline.core.signals import stopped_by_signals
from pipeline.sweeps.summary import parent_name
from pipeline.sweeps.tune import batch, claim, search, trained
from pipeline.sweeps.tune.studies import Studies
from pipeline.sweeps.tune.worker import RunIds, Worker, enqueue_default, on_stale

READY_TIMEOUT_S = 120  # how long the first worker waits for the others to start (each imports torch first)
JOIN_TIMEOUT_S = 300  # how long a command waits for another, alive, that is creating the MLflow runs
STOP_TIMEOUT_S = 30  # how long an interrupted command waits for its workers to end their runs
ATTEMPT_TAG = "tune_attempt"  # on the parent and per-optimizer runs: which try at creating them made them


def storage_url(cfg: TuneConfig) -> str:
    """The Optuna storage: as given, else optuna.db beside the tracking store (or in this folder)."""
    if cfg.storage:
        return cfg.storage
    return f"sqlite:///{tracking.local_store_folder() / 'optuna.db'}"


def _parent_params(cfg: TuneConfig) -> dict[str, str]:
    own = {k: v for k, v in as_params(cfg).items() if k not in ("children", "skipped")}
    base = [as_params(plan.base) for plan in cfg.children]
    shared = {k: v for k, v in base[0].items() if all(b.get(k) == v for b in base) and k not in own}
    return {**shared, **own, "optimizers": ",".join(dict.fromkeys(p.optimizer for p in cfg.children)),
            "workloads": ",".join(dict.fromkeys(p.workload for p in cfg.children)), "storage": search.redacted(
                storage_url(cfg)), "tune_key": cfg.key()}


def create_runs(cfg: TuneConfig, token: str) -> RunIds:
    """The parent run and one child per (optimizer, workload), left RUNNING for the workers; each tagged with
    `token` (tag `tune_attempt`), so that a command that dies while creating them leaves none nobody can find."""
    tags = {"task": "tune", "tune_task": cfg.kind, "tune_key": cfg.key(), ATTEMPT_TAG: token}  # `sweeps`: below
    optimizers = len({plan.optimizer for plan in cfg.children})
    name = parent_name("tune", cfg.kind, optimizers, time.time(), f"-{cfg.trials}x{cfg.seeds}")
    with tracking.open_run(cfg.experiment, name, tags, keep_running=True) as parent:
        parent.log_params(_parent_params(cfg))
        parent.set_tags({tracking.SWEEPS_TAG: parent.run_id})
        children = {}
        for plan in cfg.children:
            child_tags = {"role": "optimizer", "optimizer": plan.optimizer, "workload": plan.workload,
                          "study": cfg.study_name(plan), tracking.SWEEPS_TAG: parent.run_id, ATTEMPT_TAG: token}
            with tracking.open_run(cfg.experiment, plan.label, child_tags, parent=parent, keep_running=True) as run:
                children[plan.label] = run.run_id
    return RunIds(parent.run_id, children)


def join(studies: Studies) -> RunIds:
    """The tune's runs: made by the first process (which records them in the storage), found by every other;
    made again, should the process making them die first."""
    cfg = studies.cfg
    study = optuna.create_study(storage=studies.storage, study_name=f"optlab-tune-{cfg.key()}:runs",
                                load_if_exists=True)
    runs = study.user_attrs.get("runs")
    if not runs:
        try:
            runs = claim.made_once(study, lambda token, dead: _make_runs(cfg, token, dead), _undo, cfg.heartbeat_s,
                                   JOIN_TIMEOUT_S)
        except TimeoutError as busy:
            raise UsageError(f"storage: {busy} has been creating this tune's runs for over {JOIN_TIMEOUT_S} s and "
                             "is still alive; run the command again once it is done, or stop it") from None
        enqueue_defaults(studies)
        study.set_user_attr("runs", runs)
    if not tracking.run_exists(runs["parent"]):
        raise UsageError(f"storage: this tune's study names run {runs['parent']}, which the tracking store "
                         f"{tracking.tracking_uri()} lacks; point at the same tracking store, or give a new storage "
                         "or experiment")
    tracking.note_handed_run(f"This command joined tune run {runs['parent']}: its trials are logged there.",
                             {"joined_tune_run": runs["parent"]})  # (a command that made the runs has no handed run)
    return RunIds(runs["parent"], runs["children"])


def _make_runs(cfg: TuneConfig, token: str, dead: list) -> dict:
    """The tune's runs, created here; first the runs of earlier tries whose command died end FAILED."""
    for attempt in dead:
        orphans = tracking.running_runs(cfg.experiment, ATTEMPT_TAG, attempt.user_attrs["token"])
        for run_id in orphans:
            tracking.fail_run(run_id, f"the tune command creating this run ({attempt.user_attrs.get('maker')}) "
                              "stopped before recording it; the next command created the tune's runs again")
        if orphans:
            print(f"tune: the command that began creating this tune's runs ({attempt.user_attrs.get('maker')}) "
                  f"stopped; its {len(orphans)} run(s) ended FAILED, and the runs are created again here", flush=True)
    ids = create_runs(cfg, token)
    return {"parent": ids.parent, "children": dict(ids.children)}


def enqueue_defaults(studies: Studies) -> None:
    """Every trials study starts with the optimizer's default setting, queued once (before any worker asks)."""
    for plan in studies.cfg.children:
        enqueue_default(studies.study(plan, "trials"), plan)


def _undo(runs: dict) -> None:
    """Runs this command made while another took over (this one fell silent): they end FAILED."""
    for run_id in [runs["parent"], *runs["children"].values()]:
        tracking.fail_run(run_id, "this tune command fell silent while creating the tune's runs and another "
                          "created them again")


def _worker_process(cfg: TuneConfig, ids: RunIds, url: str, index: int, sigint: bool, ready: Any, shared: Any) -> None:
    """A local worker process: the same loop as the main one, counting its trials into `shared`, once it has
    said it is `ready`; SIGTERM (and SIGINT, unless the command ignores it: a background job) end its trial's
    run KILLED. Done, it leaves once multiprocessing has run its finalizers (`_leave`)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    numbers = (signal.SIGINT, signal.SIGTERM) if sigint else (signal.SIGTERM,)
    try:
        with stopped_by_signals(numbers, restore=False):  # a second signal, while the run ends, is ignored
            storage = search.open_storage(url, cfg.heartbeat_s, on_stale)
            worker = Worker(ids, Studies(cfg, storage), progress=Counter(shared), index=index)
            ready.set()
            worker.work()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    atexit.register(_leave)  # the last registered: the first to run


def _leave() -> None:
    """A done worker's exit, after multiprocessing's finalizers (tqdm's lock) and before the rest of the teardown
    (MLflow's exit handlers, unloading torch: 1-2 s the command waited for; its runs ended, its writes committed)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_OK)


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
    gpus = _visible_gpus() if cfg.kind != "toy" else []
    return len(gpus) if len(gpus) > 1 else 1


def run_workers(ids: RunIds, url: str, studies: Studies, cifar: tuple | None = None,
                progress: Counter | None = None) -> None:
    """Take trials here and in workers-1 more processes until every study is done, all counting into
    `progress`. With several GPUs every worker is a process of its own, each seeing one GPU
    (CUDA_VISIBLE_DEVICES), and this one only waits. Otherwise this one works too: at once where workers take
    whole studies (batch.whole_studies), else once the others are ready (they import torch first: seconds), so
    that workers started together split each study's trials."""
    cfg, progress = studies.cfg, progress or Counter()
    devices = gpu_plan(cfg.workers, _visible_gpus() if cfg.workers > 1 and cfg.kind != "toy" else [])
    here = devices[0] is None  # no GPU split: this process is worker 0
    extra = _start_workers(cfg, ids, url, list(enumerate(devices[1:] if here else devices, start=1 if here else 0)),
                           progress.shared)
    try:
        if here:
            worker = Worker(ids, studies, cifar, progress)
            if not batch.whole_studies(cfg.workers, len(cfg.children)):
                _wait_ready(extra)
            worker.work()
        for process in extra:  # they finish their last trials (with a GPU each, they do all the work)
            process.join()
    except BaseException:  # Ctrl-C, SIGTERM (or a crash) here: the workers stop too (their runs end KILLED)
        for process in extra:
            if process.is_alive():
                process.terminate()
        raise
    finally:
        for process in extra:
            _end(process)
    failed = [p.name for p in extra if p.exitcode not in (0, None)]
    if failed:
        print(f"warning: worker processes {', '.join(failed)} ended with errors", file=sys.stderr)
    if not here:  # whatever the workers left (one died): done here, on the default GPU
        Worker(ids, studies, cifar, progress).work()


def _wait_ready(processes: list) -> None:
    """Wait until every worker process is ready to take trials (it imports torch first: seconds), has died, or
    READY_TIMEOUT_S have passed."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for process in processes:
        while not process.ready.wait(0.1) and process.is_alive() and time.monotonic() < deadline:
            pass


def _start_workers(cfg: TuneConfig, ids: RunIds, url: str, devices: list[tuple[int, str | None]],
                   shared: Any) -> list:
    """A spawned worker process per (index, device), each with an event `ready` it sets once it can take trials
    and counting them into `shared`. They start with SIGINT ignored (an ignored signal stays so through spawn's
    exec): a Ctrl-C to the terminal's process group while one still imports torch would print a traceback. At
    work they take SIGTERM (and SIGINT, unless this command ignores it) as Ctrl-C; this command stops them with
    SIGTERM."""
    context, started = multiprocessing.get_context("spawn"), []
    main = threading.current_thread() is threading.main_thread()
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else signal.SIG_IGN
    try:
        for index, device in devices:
            with environment({} if device is None else {"CUDA_VISIBLE_DEVICES": device}):
                ready = context.Event()
                started.append(context.Process(target=_worker_process, name=f"optlab-worker-{index}",
                                               args=(cfg, ids, url, index, saved != signal.SIG_IGN, ready, shared)))
                started[-1].ready = ready
                started[-1].start()
    finally:
        if main:
            signal.signal(signal.SIGINT, saved)
    return started


def _end(process: multiprocessing.process.BaseProcess) -> None:
    """Wait a while for a stopped worker process to end (its run ends KILLED); one that does not is stopped
    again, and at last killed, so that none outlives the command."""
    for stop in (None, process.terminate, process.kill):
        if stop is not None and process.is_alive():
            stop()
        process.join(timeout=STOP_TIMEOUT_S)
        if not process.is_alive():
            return


def main(cfg: TuneConfig) -> int:
    """The `tune` entry point: print the tuned table and which optimizer wins before and after tuning."""
    with stopped_by_signals():
        run_id, markdown, lines = tune(cfg)
    print(markdown)
    print("\n".join(lines))
    print(f"tune run {run_id}")
    local = "" if tracking.tracking_uri().startswith("http") else " (after `make ui`)"
    print(f"this tune in the MLflow UI (one row per optimizer and workload: seed mean, CI, profile_score): "
          f"{tracking.sweep_link(run_id)}{local}")
    print(f"its trials (lr against score, per optimizer): {tracking.sweep_link(run_id, f'{run_id}-trials')}")
    return EXIT_OK


def tune(cfg: TuneConfig) -> tuple[str, str, list[str]]:
    """Join (or start) the study, work until every study is done, report; returns (parent run id, the tuned
    table in Markdown, one line per workload saying who wins at default settings and who wins tuned)."""
    from pipeline.sweeps.tune.report import collect, report  # noqa: PLC0415 - here: spawned workers never import it
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = dataclasses.replace(cfg, workers=worker_count(cfg))
    for workload, optimizer, why in cfg.skipped:
        print(f"note: {optimizer} is left out on {workload}: {why}")
    # no data, no device: one line before any run
    cifar = trained.cifar_inputs(cfg.children[0].base) if cfg.kind == "cifar" else \
        trained.workload_inputs(cfg) if cfg.kind == "train" else None
    url = storage_url(cfg)
    studies = Studies(cfg, search.open_storage(url, cfg.heartbeat_s, on_stale))  # loaded once, read by all below
    ids = join(studies)
    print(f"tune {cfg.kind}: {len(cfg.children)} studies (optimizer x workload), {cfg.trials} trials and "
          f"{cfg.seeds} seeds each, {cfg.workers} worker(s) here; storage {search.redacted(url)}; tune run "
          f"{ids.parent}", flush=True)
    total = len(cfg.children) * (cfg.trials + cfg.seeds)  # the default setting is trial 0 of the K
    counter = Counter(multiprocessing.get_context("spawn").Value("i", 0))
    with tracking.open_run(cfg.experiment, f"tune-{cfg.kind}", run_id=ids.parent) as parent:
        try:
            with progress.bar(f"tune {cfg.kind}", total, counter, "trial", initial=studies.counted()):
                run_workers(ids, url, studies, cifar, counter)
        except KeyboardInterrupt:  # the parent ends KILLED with its block; the per-optimizer runs too
            for run_id in ids.children.values():
                tracking.end_run(run_id, "KILLED")
            raise
        results = collect(studies)
        markdown, lines = report(cfg, parent, ids, results)
        tracking.share_sweep_view(parent.experiment_id, parent.run_id, ("tag", "study"), role="optimizer")
        scored = dict.fromkeys(cfg.score_of(plan)[0] for plan in cfg.children)
        tracking.share_sweep_view(parent.experiment_id, parent.run_id, ("tag", "optimizer"), role="trial",
                                  key=f"{parent.run_id}-trials", scatter=[("lr", metric) for metric in scored])
    return parent.run_id, markdown, lines

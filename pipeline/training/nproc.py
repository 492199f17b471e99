"""`nproc=N`: the same `cifar` command again in N processes on this machine, started by torch.distributed.run
(what `torchrun` runs) in this process. A process that dies takes the job down: torchrun stops the others, and
this process says which one died in one line, ends the run FAILED saying so, and exits 5."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from pipeline.core.env import environment
from pipeline.core.errors import (EXIT_ARTIFACTS, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE,
                                  EXIT_WORKER_DIED)
from pipeline.core.provenance import PROJECT_ROOT

RUN_FILE = "OPTLAB_RUN_FILE"  # where rank 0 writes its run id, for the launcher to report a dead process on it
# rank 0's own outcomes (bad input, diverged, artifacts refused, Ctrl-C, SIGTERM): it said why itself
PASSED_ON = {EXIT_USAGE, EXIT_DIVERGED, EXIT_ARTIFACTS, EXIT_INTERRUPTED, EXIT_TERMINATED}


def record_run(run_id: str) -> None:
    """Rank 0 of a job started here: tell the launcher which run it logs to."""
    if os.environ.get(RUN_FILE):
        Path(os.environ[RUN_FILE]).write_text(run_id, encoding="utf-8")


@contextlib.contextmanager
def _quiet_agent() -> Iterator[None]:
    """torchrun's agent logs every start and failure at length, and installs signal handlers: keep its lines
    off the terminal (this module reports in one line) and give the caller its handlers back. Its modules' loggers
    each set their own level (so a parent's does not reach them): every one is quietened."""
    names = [name for name in logging.root.manager.loggerDict if name.startswith("torch.distributed")]
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.distributed.run", *names)]
    levels = [logger.level for logger in loggers]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def relaunch(section: str, params: Mapping[str, str], nproc: int) -> int:
    """Run `python -m pipeline <section> --k v ...` in `nproc` processes (one machine, torchrun's standalone
    rendezvous on a free port); returns the job's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: PLC0415
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415
    from torch.distributed.run import get_args_parser, run  # noqa: PLC0415

    argv = [f"--{key}={value}" for key, value in params.items() if key != "nproc"]  # they see WORLD_SIZE
    threads = str(max(1, (os.cpu_count() or 1) // nproc))  # torchrun would set 1, with a warning
    with tempfile.TemporaryDirectory(prefix="optlab-launch-") as scratch:
        run_file = Path(scratch) / "run_id"
        env = {RUN_FILE: str(run_file), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        parser = get_args_parser()
        parser.allow_abbrev = False  # our --k=v after the module are the workers', never torchrun's own options
        args = parser.parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                                             "--monitor-interval=0.5", "--module", "pipeline", section, *argv])
        try:
            with environment(env), _quiet_agent():
                run(args)
        except ChildFailedError as error:
            return _report(error, run_file, nproc)
        except (SignalException, KeyboardInterrupt):  # Ctrl-C, or SIGTERM: the agent stopped every process
            print("interrupted: open runs are marked KILLED", file=sys.stderr)
            _end_run(run_file, None)
            return EXIT_INTERRUPTED
    return 0


def _end_run(run_file: Path, message: str | None) -> None:
    """The job's run (rank 0's, else the one `mlflow run` made), if there is one: FAILED saying `message`, or
    KILLED (None) after an interrupt, whatever rank 0 said when the agent stopped it."""
    run_id = run_file.read_text(encoding="utf-8").strip() if run_file.is_file() else \
        os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from pipeline import tracking  # noqa: PLC0415

    if message is None:
        tracking.kill_run(run_id)
    else:
        tracking.fail_run(run_id, message)


def _report(error: object, run_file: Path, nproc: int) -> int:
    """The job failed: rank 0's own outcome passes on; a process that died or crashed is one line, and the
    run (if rank 0 had opened one) ends FAILED saying so."""
    failures = error.failures  # type: ignore[attr-defined]  # rank -> ProcessFailure
    first_rank, first = error.get_first_failure()  # type: ignore[attr-defined]
    if 0 in failures and failures[0].exitcode in PASSED_ON and first.exitcode >= 0:
        return failures[0].exitcode
    how = f"was killed ({first.signal_name()})" if first.exitcode < 0 else f"exited with code {first.exitcode}"
    message = (f"process {first_rank} of {nproc} (pid {first.pid}) {how}; torchrun stopped the others. "
               "resume=true continues the run from its last checkpoint")
    print(f"error: {message}", file=sys.stderr)
    _end_run(run_file, message)
    return EXIT_WORKER_DIED


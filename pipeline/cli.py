"""Command line: `python -m pipeline <entry> --key value ...`; parse, validate up front, dispatch, exit codes.

Exit codes: 0 success, 1 internal error, 2 bad input (one line on stderr), 3 training diverged; the rest in
core/errors.py.
"""
from __future__ import annotations

import importlib
import os
import sys
import textwrap
from typing import Sequence

from pipeline.config.compare import build_compare
from pipeline.config.tasks import PARAMS_FILE, build_config
from pipeline.core.errors import (EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, EXIT_WORKER_DIED, Terminated,
                                  UsageError, one_line)

# entry point -> module whose main(config) runs it; imported only after the params are validated
ENTRIES = {"toy": "pipeline.toy", "cifar": "pipeline.cifar", "compare": "pipeline.compare",
           "tune": "pipeline.tune", "train": "pipeline.train", "predict": "pipeline.predict"}
RUNNERS = {"demo": ("pipeline.demo", ("data_dir",))}  # commands without a params.yaml section
LISTINGS = ("optimizers", "functions", "workloads")

USAGE = ("usage: python -m pipeline {" + ",".join([*ENTRIES, *RUNNERS, *LISTINGS]) + "} [--param value ...]\n"
         "Defaults live in params.yaml; `python -m pipeline <entry> --help` and docs/entry-points.md describe "
         "every param.")


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """`--key value` and `--key=value` pairs into a dict; values are taken verbatim (even '-2,-2')."""
    overrides: dict[str, str] = {}
    position = 0
    while position < len(args):
        token = args[position]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"expected --param value, got {token!r}")
        key, equals, value = token[2:].partition("=")
        if not equals:
            if position + 1 >= len(args):
                raise UsageError(f"--{key} needs a value")
            position += 1
            value = args[position]
        overrides[key.replace("-", "_")] = value
        position += 1
    return overrides


def listing(name: str) -> str:
    """The registry `name` as aligned text, one entry a line."""
    if name == "workloads":
        from pipeline.workloads.registry import listing as workloads  # noqa: PLC0415

        return workloads()
    if name == "optimizers":
        from pipeline.optim.registry import OPTIMIZERS, SET_NAMES

        rows = [f"{spec.name:<10} lr {spec.default_lr:<7g} {spec.source:<46} {spec.summary} ({spec.paper})"
                + ("; cifar only" if spec.why_not_toy else "") for spec in OPTIMIZERS.values()]
        return "\n".join([*rows, f"sets (compare, tune: optimizers=...): {', '.join(SET_NAMES)}",
                          "any other by name: torch:<Class> (torch.optim), pytorch_optimizer:<name>, "
                          "schedulefree:<Class>"])
    from pipeline.workloads.toy.functions import FUNCTIONS
    return "\n".join(f"{fn.name:<11} minimum {fn.f_min:g} at {', '.join(map(str, fn.minima))}  {fn.title}"
                     for fn in FUNCTIONS.values())


def entry_help(section: str) -> str:
    """The entry point's params with their defaults and descriptions, from params.yaml's comments."""
    from pipeline.config.reference import read_params  # noqa: PLC0415 - only for --help

    lines = [f"usage: python -m pipeline {section} [--param value ...]   (or: mlflow run . -e {section} "
             "-P param=value)", f"params, with their defaults from {PARAMS_FILE.name} (docs/entry-points.md has "
             "every entry point's):"]
    for param in read_params(PARAMS_FILE.read_text(encoding="utf-8"))[section]:
        head = f"  --{param.key:<22} {param.default:<15} "
        lines.append(textwrap.fill(param.description, 118, initial_indent=head, subsequent_indent=" " * len(head),
                                   break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one entry point; bad input gives one line on stderr and exit code 2, Ctrl-C exit code 130."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return EXIT_OK if args else EXIT_USAGE
    try:
        return dispatch(args[0], args[1:])
    except UsageError as error:
        return refuse(str(error))
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"{'terminated' if terminated else 'interrupted'}: open runs are marked KILLED", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - a store that is down or unwritable is one line; a bug is not
        if worker_lost(error):
            return EXIT_WORKER_DIED
        message = store_problem(error)
        if message is None:
            raise
        return refuse(message)


def _rank() -> int:
    """This process's rank in a torchrun job (0 when there is none), read without importing torch."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def _speaks() -> bool:
    """Whether this process reports on stderr: any but the other ranks of a job `nproc` started here (their
    launcher says what happened, in one line)."""
    from pipeline.training.nproc import RUN_FILE  # noqa: PLC0415 - light

    return _rank() == 0 or not os.environ.get(RUN_FILE)


def refuse(message: str) -> int:
    """One line on stderr, written on the run `mlflow run` made for us too (if any); exit code 2."""
    if _speaks():
        print(f"error: {message}" if _rank() == 0 else f"error: process {_rank()}: {message}", file=sys.stderr)
    if _rank() == 0:
        from pipeline.core.handed import handed_run_id  # noqa: PLC0415 - light: no mlflow unless a run is told

        if handed_run_id():  # the run `mlflow run` made ends FAILED, saying why
            from pipeline.tracking import fail_handed_run  # noqa: PLC0415

            fail_handed_run(message)
    return EXIT_USAGE


def worker_lost(error: Exception) -> bool:
    """A process of a multi-process job whose peers are gone (or that torchrun stopped): one line, unless the
    launcher of `nproc` reports it; the run already ended FAILED with the error."""
    if "pipeline.training.distributed" not in sys.modules:
        return False
    from pipeline.training.distributed import Stopped, lost_contact, world_from_env  # noqa: PLC0415

    if not (isinstance(error, Stopped) or lost_contact(error, world_from_env())):
        return False
    from pipeline.training.nproc import RUN_FILE  # noqa: PLC0415

    if not os.environ.get(RUN_FILE):
        print(f"error: process {_rank()}: lost the other processes of the job ({one_line(error)}); "
              "resume=true continues the run from its last checkpoint", file=sys.stderr)
    return True


def store_problem(error: Exception) -> str | None:
    """One line for an error of the tracking or artifact store (unwritable folder, full disk, a server that
    refuses), None for anything else (a bug: its traceback is wanted)."""
    if "pipeline.tracking.server" not in sys.modules:  # nothing reached the store yet
        return None
    from pipeline.tracking.server import is_store_error, tracking_uri

    if not is_store_error(error):
        return None
    where = getattr(error, "filename", None)
    if where:
        return f"cannot write {where} ({one_line(error)}); the tracking and artifact stores must be writable"
    return f"the tracking store {tracking_uri()} failed ({one_line(error)}); check that it is reachable and writable"


def dispatch(command: str, rest: list[str]) -> int:
    """Run one command with its `--key value` params."""
    if command in RUNNERS:
        module, accepted = RUNNERS[command]
        if {"-h", "--help"} & set(rest):
            print(f"usage: python -m pipeline {command} " + " ".join(f"[--{name} value]" for name in accepted))
            return EXIT_OK
        options = parse_overrides(rest)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise UsageError(f"unknown param {unknown[0]!r} for {command}; valid: {', '.join(accepted)}")
        return start(module, **options)
    if command in LISTINGS:
        print(listing(command))
        return EXIT_OK
    if command not in ENTRIES:
        choices = ", ".join([*ENTRIES, *RUNNERS, *LISTINGS])
        raise UsageError(f"unknown entry point {command!r}; choose one of: {choices}")
    if {"-h", "--help"} & set(rest):
        print(entry_help(command))
        return EXIT_OK
    overrides = parse_overrides(rest)
    if command == "tune":
        from pipeline.config.tune import build_tune  # noqa: PLC0415

        config = build_tune(overrides)
    elif command == "train":
        from pipeline.config.train import TrainConfig  # noqa: PLC0415

        config = build_config(command, overrides, cls=TrainConfig)
    else:
        config = build_compare(overrides) if command == "compare" else build_config(command, overrides)
    return start(ENTRIES[command], config)


def start(module: str, *args: object, **options: str) -> int:
    """Import the entry module (only now: params were validated without torch), check the tracking server (the
    edge: the one check, so a server that is down or refuses our login is one line before any work), run main."""
    runner = importlib.import_module(module).main
    from pipeline.tracking.server import check_server

    if _rank() == 0:  # the other processes of a torchrun job never talk to MLflow
        check_server()
        if module in ENTRIES.values():
            from pipeline.tracking import check_handed_experiment  # noqa: PLC0415

            check_handed_experiment()
    return runner(*args, **options)

"""The two tiers of the suite. `make test-fast` runs the tests that start no process, server or browser
(`-m "not slow"`); `make test` runs everything. A test's tier follows from what it uses, read from the source at
collection: it is slow when its body, a helper or fixture it reaches (in its module, conftest.py or servers.py),
names something that starts a process (PROCESS_NAMES). `@pytest.mark.slow` by hand is left for in-process work
that trains for long. The guard keeps this honest: a fast-tier test that starts a process anyway fails, naming
what it started."""
from __future__ import annotations

import ast
import functools
import multiprocessing.process
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# What starts a process: conftest's helpers (run_cli, mlflow_run), servers.py's, the browser's, the libraries.
# torch.compile counts: it runs the C++ compiler and helper interpreters.
PROCESS_NAMES = frozenset({"run_cli", "mlflow_run", "start_server", "subprocess", "Popen", "multiprocessing",
                           "run_workers", "chromium", "postgres_or_skip", "render", "cifar_sweep", "compile",
                           "compiled"})
SHARED = ("conftest.py", "servers.py")
# Autouse fixtures that run git once per session or guard each test: not what a test itself uses.
HARNESS = frozenset({"project_files", "project_tree_unchanged", "fast_tier_starts_no_process"})


def _references(function: ast.AST) -> set[str]:
    """Every name, attribute, keyword and name-like string a function mentions, and its parameters (the fixtures
    it asks for)."""
    names = {node.id for node in ast.walk(function) if isinstance(node, ast.Name)}
    names |= {node.arg for node in ast.walk(function) if isinstance(node, ast.keyword) and node.arg}
    names |= {node.value for node in ast.walk(function)
              if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier()}
    names |= {node.attr for node in ast.walk(function) if isinstance(node, ast.Attribute)}
    return names | {arg.arg for arg in function.args.args + function.args.kwonlyargs}


@functools.lru_cache(maxsize=None)
def _functions(path: Path) -> dict[str, set[str]]:
    """Module-level function (and fixture) name -> the names it mentions, for one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {node.name: _references(node) for node in tree.body if isinstance(node, ast.FunctionDef)}
    for node in tree.body:  # methods of test classes count as the class's functions
        if isinstance(node, ast.ClassDef):
            for method in node.body:
                if isinstance(method, ast.FunctionDef):
                    found[f"{node.name}.{method.name}"] = _references(method)
    return found


@functools.lru_cache(maxsize=None)
def starters(path: Path) -> frozenset[str]:
    """The functions of a test module (with conftest's and servers.py's) that start a process, directly or
    through one another."""
    functions: dict[str, set[str]] = {}
    for shared in SHARED:
        functions.update(_functions(HERE / shared))
    functions.update(_functions(path))
    functions = {name: refs - HARNESS for name, refs in functions.items() if name not in HARNESS}
    slow = set(PROCESS_NAMES)
    while True:
        more = {name.rpartition(".")[2] for name, refs in functions.items() if refs & slow} - slow
        if not more:
            return frozenset(slow)
        slow |= more


def starts_processes(item: pytest.Item) -> bool:
    """Whether a collected test starts a process, by what its source uses."""
    function = getattr(item, "function", None)
    if function is None:
        return False
    name = function.__qualname__.rpartition("<locals>.")[2]  # hypothesis wraps tests in a closure
    refs = _functions(Path(item.fspath)).get(name, set()) | set(getattr(item, "fixturenames", ()))
    refs -= HARNESS
    return bool(refs & starters(Path(item.fspath)))


COLLECTED: dict[str, int] = {}  # what the last collection held, before any deselection: {"fast": n, "all": n}


def assign(items: list[pytest.Item]) -> None:
    """Mark every test that starts a process slow."""
    for item in items:
        if starts_processes(item):
            item.add_marker(pytest.mark.slow)
    COLLECTED.update(fast=sum(not item.get_closest_marker("slow") for item in items), all=len(items))


# MLflow asks git for the source version of a run, once per process (so in whichever test comes first).
TOOLS = ("git",)


def _ours(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name not in TOOLS


class Tripwire:
    """While on, records every process started (subprocess.Popen, multiprocessing) instead of letting it pass
    unnoticed; the processes still start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def __enter__(self) -> "Tripwire":
        self._popen, self._start = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start
        wire = self

        def popen(self, args, *rest, **options):
            argv = [str(arg) for arg in args] if isinstance(args, (list, tuple)) else str(args).split()
            if _ours(argv):
                wire.started.append(" ".join(argv))
            return wire._popen(self, args, *rest, **options)

        def start(self):
            wire.started.append(f"multiprocessing {self.name}")
            return wire._start(self)

        subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start = popen, start
        return self

    def __exit__(self, *exc) -> None:
        subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start = self._popen, self._start


def guard_message(item: pytest.Item, started: list[str]) -> str:
    return (f"{item.nodeid} is in the fast tier but started {len(started)} process(es), first: "
            f"{started[0][:120]!r}; call it through a helper that starts processes (tests/tiers.py PROCESS_NAMES) "
            "or mark it @pytest.mark.slow")

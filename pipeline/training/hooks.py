"""The small protocol that training-side logging talks to, and an in-memory implementation of it.

`tracking.Run` is the real one (an MLflow run); `MemoryLogger` keeps everything in dicts, so tests and
benchmarks can hand per-epoch logging a logger without a store (as torchtune hands its recipes a metric logger).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

Step = tuple[int, int, Mapping[str, float]]  # (step, time in ms, {key: value})


class RunLogger(Protocol):
    """What a run's logging needs: params, metrics by step, tags, artifacts, the data used and the model."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_steps(self, steps: Sequence[Step]) -> int: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None: ...
    def log_file(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, name: str, features: Any, targets: Any, source: str, digest: str,
                    context: str) -> None: ...
    def log_model(self, model: Any, input_example: Any, registered_name: str | None = None,
                  metadata: Mapping[str, Any] | None = None) -> str: ...
    def note_error(self, message: str, tags: Mapping[str, str] | None = None) -> None: ...


@dataclass(frozen=True)
class RunHooks:
    """What a caller that runs toy or cifar runs as parts of something bigger (tune's trials and seed runs) adds
    to each run: tags, a call once the run exists, and (cifar) a call after each logged epoch, which may raise
    train.StopTraining to end the run early (a pruned trial)."""

    tags: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None  # the run's name instead of <optimizer>-<function or model>
    on_open: Callable[[Any], None] | None = None  # gets the open run (a RunLogger)
    on_epoch: Callable[[int, dict], None] | None = None  # (epoch, that epoch's metrics)
    on_trainer: Callable[[Any], None] | None = None  # gets the cifar Trainer before it trains (a sweep's landscape)
    # (metric steps, params) a toy sweep run logs in its one batch with its own (a tune seed run's score curve)
    logged: tuple[Sequence[Step], Mapping[str, Any]] = ((), {})

    def opened(self, run: Any) -> None:
        if self.on_open is not None:
            self.on_open(run)

    def prepared(self, trainer: Any) -> None:
        if self.on_trainer is not None:
            self.on_trainer(trainer)


class MemoryLogger:
    """A RunLogger that keeps what it is given: metrics as {key: [(step, value)]}, artifacts by path."""

    def __init__(self, run_id: str = "memory") -> None:
        self.run_id = run_id
        self.params: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: dict[str, Any] = {}
        self.datasets: list[tuple[str, str]] = []  # (name, context)
        self.calls: list[str] = []  # one entry per call, as a store would count requests
        self._lock = threading.Lock()  # senders log from their own threads

    def _call(self, what: str) -> None:
        with self._lock:
            self.calls.append(what)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params")
        self.params.update({key: str(value) for key, value in params.items() if key not in self.params})

    def log_steps(self, steps: Sequence[Step]) -> int:
        self._call("log_steps")
        with self._lock:
            for step, _, values in steps:
                for key, value in values.items():
                    self.metrics.setdefault(key, []).append((int(step), float(value)))
        return 1

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call("set_tags")
        self.tags.update({key: str(value) for key, value in tags.items()})

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._call("log_figure")
        self.artifacts[artifact_file] = figure

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text")
        self.artifacts[artifact_file] = text

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._call("log_dict")
        self.artifacts[artifact_file] = dict(data)

    def log_file(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_file")
        name = Path(local_path).name
        self.artifacts[f"{artifact_path}/{name}" if artifact_path else name] = Path(local_path).read_bytes()

    def log_dataset(self, name: str, features: Any, targets: Any, source: str, digest: str, context: str) -> None:
        self._call("log_dataset")
        self.datasets.append((name, context))

    def log_model(self, model: Any, input_example: Any, registered_name: str | None = None,
                  metadata: Mapping[str, Any] | None = None) -> str:
        self._call("log_model")
        self.artifacts["model"] = model
        return f"memory:/{self.run_id}/model"

    def note_error(self, message: str, tags: Mapping[str, str] | None = None) -> None:
        self.set_tags({**(tags or {}), "error": message})

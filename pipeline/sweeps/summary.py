"""Runs of a sweep -> summary rows and overlay series. Pure: no MLflow, no plotting, no files."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

Series = tuple[list[float], list[float]]  # (x, y)


NO_RUN = "-"  # the run id of a child that never made a run, as the summary table shows it


@dataclass(frozen=True)
class RunRecord:
    """What the store holds of one child run."""

    run_id: str
    status: str  # FINISHED, FAILED, RUNNING, ...
    params: Mapping[str, str]
    tags: Mapping[str, str]
    metrics: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)  # key -> (step, value)
    reused: bool = False  # found finished in the store instead of trained by this sweep

    @classmethod
    def failed(cls, optimizer: str) -> "RunRecord":
        """A child that broke before it made a run: it is in the summary, with no run to link or draw."""
        return cls(NO_RUN, "FAILED", {"optimizer": optimizer}, {"diverged": "false"})

    @property
    def has_run(self) -> bool:
        """Whether a run in the store stands behind this record."""
        return self.run_id != NO_RUN

    @property
    def label(self) -> str:
        """The optimizer name: what the legends and the summary call this run."""
        return self.params.get("optimizer", self.run_id[:8])

    @property
    def diverged(self) -> bool:
        """Whether the run was ended by a non-finite loss."""
        return self.tags.get("diverged") == "true"

    def series(self, key: str) -> Series:
        """One metric's history as (steps, values), steps ascending, the last value kept per step."""
        by_step = dict(sorted(self.metrics.get(key, ())))
        return list(map(float, by_step)), list(by_step.values())

    def last(self, key: str) -> float:
        """The metric's value at its last step, NaN when never logged."""
        _, values = self.series(key)
        return values[-1] if values else math.nan


def overlay(records: Sequence[RunRecord], key: str, x_key: str | None = None) -> dict[str, Series]:
    """One line per run: `key` against its step, or against the running sum of `x_key` (e.g. epoch_time)."""
    lines = {}
    for record in records:
        steps, values = record.series(key)
        if not values:
            continue
        if x_key is not None:
            _, widths = record.series(x_key)
            steps = [sum(widths[: index + 1]) for index in range(len(values))]
        lines[record.label] = (steps, values)
    return lines


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def cifar_row(record: RunRecord) -> dict[str, Any]:
    """The summary line of one cifar child."""
    return {"optimizer": record.label, "best_val_acc": record.last("best_val_acc"),
            "final_val_acc": record.last("val_acc"), "final_train_loss": record.last("train_loss"),
            "final_val_loss": record.last("val_loss"), "mean_epoch_time": _mean(record.series("epoch_time")[1]),
            "time_to_target": record.last("time_to_target"), "diverged": "yes" if record.diverged else "no",
            "status": record.status, "reused": "yes" if record.reused else "no", "run_id": record.run_id}


def toy_row(record: RunRecord) -> dict[str, Any]:
    """The summary line of one toy child."""
    converged = record.tags.get("converged_step", "")
    return {"optimizer": record.label, "final_loss": record.last("loss"),
            "distance_to_min": record.last("distance_to_min"), "steps_to_converge": converged or "-",
            "diverged": "yes" if record.diverged else "no", "status": record.status,
            "reused": "yes" if record.reused else "no", "run_id": record.run_id}


def rows(task: str, records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Summary rows, best first: highest best_val_acc (cifar) or lowest final loss (toy); diverged last."""
    if task == "cifar":
        rows = [cifar_row(r) for r in records]
        return sorted(rows, key=lambda r: (r["diverged"] == "yes", -_finite_or(r["best_val_acc"], -1.0)))
    rows = [toy_row(r) for r in records]
    return sorted(rows, key=lambda r: (r["diverged"] == "yes", _finite_or(r["final_loss"], math.inf)))


def _finite_or(value: float, fallback: float) -> float:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else fallback


def champion(records: Sequence[RunRecord]) -> RunRecord | None:
    """The finished, non-diverged cifar run with the highest best_val_acc, if any."""
    eligible = [r for r in records if r.status == "FINISHED" and not r.diverged
                and math.isfinite(r.last("best_val_acc"))]
    return max(eligible, key=lambda r: r.last("best_val_acc"), default=None)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def as_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV (NaN written as empty)."""
    if not rows:
        return ""
    header = list(rows[0])
    lines = [",".join(header)]
    for row in rows:
        lines.append(",".join("" if _cell(row[k]) == "-" else _cell(row[k]) for k in header))
    return "\n".join(lines) + "\n"


def as_markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """The rows as a Markdown table under a heading."""
    if not rows:
        return f"# {title}\n\nNo runs.\n"
    header = list(rows[0])
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


MAX_NOTE = 8000  # characters of a run description (MLflow's tag value limit)


def parent_name(kind: str, task: str, optimizers: int, when: float, extra: str = "") -> str:
    """A sweep parent's name that says what it is and when: compare-cifar-8opt-1125-1712-05."""
    stamp = time.strftime("%m%d-%H%M-%S", time.localtime(when))
    return f"{kind}-{task}-{optimizers}opt{extra}-{stamp}"


def headline(task: str, records: Sequence[RunRecord]) -> dict[str, float]:
    """What a compare parent's row shows in the runs table: the best child's figure and the count."""
    rows_ = rows(task, records)
    best = rows_[0] if rows_ else {}
    key, value = ("best_val_acc", best.get("best_val_acc")) if task == "cifar" else \
        ("best_final_loss", best.get("final_loss"))
    found = {"optimizers": float(len(records))}
    if isinstance(value, (int, float)) and math.isfinite(value):
        found[key] = float(value)
    return found


def note(markdown: str, lines: Sequence[str] = ()) -> str:
    """A parent's description: its summary table (and any verdict lines), cut to MLflow's limit."""
    text = "\n".join([*lines, "", markdown]) if lines else markdown
    return text if len(text) <= MAX_NOTE else text[: MAX_NOTE - 40] + "\n\n(cut: see the artifact)"


SEED_SCORES = {"cifar": ("val_acc", "max"), "toy": ("loss", "min")}  # a compare child's final score, per task


def seed_verdict(task: str, per_seed: Sequence[Sequence[RunRecord]]) -> Any:
    """What a compare over several seeds decides (the tune's statistics: Welch's t-test of every optimizer
    against the best, Holm-corrected): over each optimizer's runs, its final val_acc (cifar) or final loss
    (toy); a run that failed or diverged gives no score."""
    from pipeline.sweeps.tune import verdict  # noqa: PLC0415 - scipy loads only where seeds are compared

    metric, direction = SEED_SCORES[task]
    rows = []
    for index, record in enumerate(per_seed[0]):
        runs = [seed[index] for seed in per_seed]
        scores = [r.last(metric) if r.has_run and r.status == "FINISHED" and not r.diverged else None for r in runs]
        rows.append(verdict.seed_row(record.label, scores, [r.run_id for r in runs]))
    return verdict.judge(rows, f"final {metric}", direction)

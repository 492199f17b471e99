"""Runs of a sweep -> summary rows, champion and overlay series (pure functions)."""
import csv
import io
import math

from pipeline.sweeps import summary
from pipeline.sweeps.summary import RunRecord


def _record(name, best, diverged=False, status="FINISHED", epoch_times=(2.0, 3.0)):
    metrics = {"best_val_acc": [(1, best / 2), (2, best)], "val_acc": [(1, best / 2), (2, best)],
               "epoch_time": list(enumerate(epoch_times, 1))}
    return RunRecord(f"id-{name}", status, {"optimizer": name}, {"diverged": str(diverged).lower()}, metrics)


def test_summary_puts_the_best_first_and_diverged_last():
    records = [_record("adam", 0.5), _record("sgd", 0.9, diverged=True), _record("asgd", 0.7)]
    rows = summary.rows("cifar", records)
    assert [r["optimizer"] for r in rows] == ["asgd", "adam", "sgd"]
    assert rows[0]["mean_epoch_time"] == 2.5 and rows[2]["diverged"] == "yes"
    assert math.isnan(rows[0]["time_to_target"])
    table = list(csv.DictReader(io.StringIO(summary.as_csv(rows))))
    assert table[0]["optimizer"] == "asgd" and table[0]["time_to_target"] == ""
    assert "| asgd | 0.7 |" in summary.as_markdown(rows, "t")


def test_champion_skips_diverged_and_unfinished_runs():
    records = [_record("sgd", 0.9, diverged=True), _record("adam", 0.95, status="FAILED"), _record("asgd", 0.4)]
    assert summary.champion(records).label == "asgd"
    assert summary.champion(records[:2]) is None


def test_overlay_against_time_uses_cumulative_training_seconds():
    lines = summary.overlay([_record("adam", 0.5)], "val_acc", x_key="epoch_time")
    assert lines == {"adam": ([2.0, 5.0], [0.25, 0.5])}
    assert summary.overlay([_record("adam", 0.5)], "val_acc") == {"adam": ([1.0, 2.0], [0.25, 0.5])}

"""`python -m bench` smoke test: the table prints with measured ratios that add up, and the baseline and ours
computed the same descent; speed itself is never asserted (machines differ)."""
import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # each test trains whole sweeps or bench rows in this process

SAME_PATHS = re.compile(r"^- (toy \d+ starts): same paths: final positions of (\d+) shared starts differ by at most "
                        r"(\S+)$", re.MULTILINE)
GAP_TOLERANCE = 1e-8  # both run float64; the compiled and the numpy loops differ by ~1e-11 after 100 steps


def _number(cell: str) -> float:
    """'12,700,000 point-steps/s' -> 12700000.0; '270.3x' -> 270.3."""
    match = re.match(r"[\d,]+(\.\d+)?", cell.strip())
    assert match, cell
    return float(match.group(0).replace(",", ""))


def test_quick_bench_prints_a_table_with_ratios():
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--rows", "toy"], cwd=REPO, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "command: python -m bench --quick --rows toy" in done.stdout
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("row "))
    assert [cell.strip() for cell in header.split("|")] == ["row", "ours", "baseline", "ratio", "target", "met?"]
    rows = [[cell.strip() for cell in line.split("|")] for line in lines if line.startswith("toy ") and "|" in line]
    assert [row[0] for row in rows] == ["toy 4096 starts"], done.stdout  # --quick: one toy row
    for name, ours, baseline, ratio, target, met in rows:
        assert ours.endswith("point-steps/s") and baseline.endswith("point-steps/s"), (ours, baseline)
        assert ratio.endswith("x") and _number(ours) > 0 and _number(baseline) > 0 and _number(ratio) > 0
        # the ratio is ours / baseline (the printed rates are rounded to 3 significant figures)
        assert abs(_number(ratio) / (_number(ours) / _number(baseline)) - 1) < 0.01, (ours, baseline, ratio)
        assert met == ("yes" if _number(ratio) >= _number(target.lstrip(">= ")) else "NO"), (ratio, target, met)
    gaps = {name: (int(checked), float(gap)) for name, checked, gap in SAME_PATHS.findall(done.stdout)}
    assert set(gaps) == {row[0] for row in rows}, done.stdout
    for name, (checked, gap) in gaps.items():
        assert checked >= 1 and 0 <= gap <= GAP_TOLERANCE, (name, checked, gap)  # the same descent, not a note


def test_the_pruning_row_trains_fewer_epochs_with_hyperband_on_the_same_points():
    import dataclasses

    import torch

    from bench.data import load_arrays
    from bench.pruning import _study
    from pipeline.config.tasks import build_config

    arrays = load_arrays()
    arrays = dataclasses.replace(arrays, train_x=arrays.train_x[:128], train_y=arrays.train_y[:128],
                                 test_x=arrays.test_x[:64], test_y=arrays.test_y[:64])
    cfg = build_config("cifar", {"model": "tiny_cnn", "optimizer": "momentum", "epochs": "3", "batch_size": "64",
                                 "device": "cpu"})
    plain = _study("none", cfg, arrays, torch.device("cpu"), 4)
    pruned = _study("hyperband", cfg, arrays, torch.device("cpu"), 4)
    assert plain[2] == 4 * 3 and pruned[2] <= plain[2]  # every unpruned trial trains all its epochs
    assert 0.0 <= pruned[1] <= 1.0 and 1e-4 <= pruned[0] <= 1.0


def test_the_landscape_row_times_the_drawing_against_the_sweeps_training():
    import torch

    from bench.landscape import landscape_rows

    (row,) = landscape_rows(torch.device("cpu"), quick=True)
    drawn, trained = (float(cell.split()[0]) for cell in (row.ours, row.baseline))
    assert row.name == "landscape 8 opt tiny_cnn" and drawn > 0 and trained > 0
    assert float(row.ratio.rstrip("x")) == pytest.approx(drawn / trained, rel=0.1, abs=0.06)  # cells are rounded
    assert "49 grid points and 40 path points" in row.notes[0]


def test_the_tracking_rows_time_a_tracked_tune_a_run_s_fixed_cost_and_the_demo_s_tune():
    import torch

    from bench.tracking import tracking_rows

    rows = {row.name: row for row in tracking_rows(torch.device("cpu"), quick=True)}
    assert set(rows) == {"tracked toy trials/s", "fixed cost per tracked run", "demo toy tune wall"}
    trials = rows["tracked toy trials/s"]
    assert trials.ours.endswith("trials/s") and float(trials.ratio.rstrip("x")) > 1  # tracking costs something
    fixed = rows["fixed cost per tracked run"]
    assert fixed.ours.endswith(" ms") and float(fixed.ours.split()[0]) > 0 and fixed.met in ("yes", "NO")
    assert rows["demo toy tune wall"].ours.endswith(" s") and "--quick" in rows["demo toy tune wall"].notes[0]

"""scripts/gpu_check.py's dry run here (DEVICE=cpu QUICK=1): every step in the report with a status, the
CUDA-only ones skipped, the figures read back from the run's store. The real run needs a lent GPU machine."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_SUBSET

SCRIPT = REPO / "scripts" / "gpu_check.py"
STEPS = range(7)
CUDA_ONLY = (1, 6)


def step_rows(report: str) -> dict[int, tuple[str, str]]:
    """Step number -> (status, detail) from the report's table."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            rows[int(cells[0])] = (cells[2], cells[5])
    return rows


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")
def test_the_dry_run_reports_every_step_and_skips_the_cuda_only_ones(tmp_path):
    # No wheels folder: the dry run uses this environment's packages (the venv has them all).
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--wheels", str(tmp_path / "no-wheels")], cwd=REPO, text=True, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "gpu-check.md").read_text(encoding="utf-8")
    rows = step_rows(report)
    assert sorted(rows) == list(STEPS)
    assert all(status in ("passed", "skipped") for status, _ in rows.values()), rows
    for number in CUDA_ONLY:
        assert rows[number] == ("skipped", "needs CUDA (DEVICE=cpu)")
    assert rows[0][0] == "passed" and "no wheels in" in rows[0][1] and "this Python's own packages" in rows[0][1]
    assert rows[2][0] == rows[3][0] == rows[4][0] == "passed"
    assert rows[5][0] == "passed" or rows[5][1].startswith("no train entry point in this checkout")
    assert "- result: **passed, step 1, " in report and "torch " in report and "CUDA " in report
    cifar = report.split("## 3.")[1].split("## 4.")[0]
    assert re.search(r"- epoch time: [\d.]+ s", cifar) and re.search(r"- images/s: [\d,]+", cifar)
    assert re.search(r"- landscape: 25 grid points .* [\d.]+ s", cifar)
    compare = report.split("## 4.")[1].split("## 5.")[0]
    assert compare.count(": FINISHED, val_acc") == 8  # the notebook's seven and nesterov
    assert "| toy 4096 starts |" in report  # bench's table
    assert (tmp_path / "gpu-check.log").stat().st_size > 0


def test_a_step_list_with_an_unknown_step_is_refused_before_anything_runs(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "2,9", "--out", str(tmp_path)], cwd=REPO,
                          text=True, capture_output=True, timeout=60)
    assert done.returncode == 2 and "'2,9': 'all' or a comma list from 0-6" in done.stderr
    assert not (tmp_path / "gpu-check.md").exists()


def test_the_train_step_takes_the_suite_from_the_workload_listing():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gpu_steps import suite
    finally:
        sys.path.remove(str(SCRIPT.parent))
    listing = ("quadratic_deep     100-d noisy quadratic [DeepOBS]\n"
               "                   score val_loss (min); quick steps 1000; full steps 10000\n"
               "cifar10_tiny_cnn   two conv layers [optlab's tests]\n"
               "shakespeare_gpt    character-level transformer [nanoGPT]\n"
               "sets (compare, tune: workloads=...): suite = quadratic_deep, shakespeare_gpt\n"
               "your own: workload=package.module:function (docs/workloads.md)\n")
    assert suite(listing) == ["quadratic_deep", "shakespeare_gpt"]
    assert suite(listing.replace("suite =", "all =")) == ["quadratic_deep", "cifar10_tiny_cnn", "shakespeare_gpt"]

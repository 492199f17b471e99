"""`python -m bench` smoke test: the table prints with measured ratios; speed itself is never asserted."""
import re
import subprocess
import sys

from conftest import REPO


def test_quick_bench_prints_a_table_with_ratios():
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--rows", "toy"], cwd=REPO, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("toy ")]
    assert rows and all(re.search(r"\d+(\.\d+)?x", row) for row in rows), done.stdout
    assert "command: python -m bench --quick --rows toy" in done.stdout
    assert "same paths: final positions" in done.stdout  # the baseline and ours computed the same descent

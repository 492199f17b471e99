"""A cifar run's logging when the store misbehaves: a checkpoint the artifact store refuses for good never holds
back the metrics, is retried a bounded number of times, reported once, tagged, and the exit code says so."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED_SUBSET, metric_history, new_experiment

pytestmark = pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")


def test_a_refused_checkpoint_never_holds_back_the_metrics(tracking, tmp_path):
    experiment = new_experiment()
    experiment_id = tracking.create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))
    run_id = tracking.create_run(experiment_id).info.run_id  # handed to the process as `mlflow run` hands one
    artifacts = tmp_path / "artifacts" / run_id / "artifacts"
    artifacts.mkdir(parents=True)
    (artifacts / "checkpoints").write_text("a file where the checkpoints folder should be")  # root ignores chmod
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "cifar", "--model", "tiny_cnn", "--data_dir", str(SHARED_SUBSET),
         "--epochs", "4", "--train_limit", "128", "--val_limit", "64", "--checkpoint_every_s", "0",
         "--system_metrics", "false", "--experiment", experiment],
        cwd=REPO, env={**os.environ, "MLFLOW_RUN_ID": run_id, "PYTHONUNBUFFERED": "1"}, text=True,
        capture_output=True, timeout=300)
    seconds = time.monotonic() - began
    assert done.returncode == 4, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    gave_up = [line for line in done.stderr.splitlines() if line.startswith("warning: gave up")]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(gave_up) == 1 and "checkpoint" in gave_up[0] and "NotADirectoryError" in gave_up[0]
    assert len(errors) == 1 and "refused its checkpoints" in errors[0]
    run = tracking.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["checkpoint_failed"] == "true" and "NotADirectoryError" in run.data.tags["checkpoint_error"]
    assert run.data.tags["error"] == errors[0][len("error: "):]
    assert run.data.tags["mlflow.note.content"].startswith("**Failed:**")
    for key in ("train_loss", "val_acc", "best_val_acc"):
        steps, values = metric_history(tracking, run_id, key)
        assert steps == [1, 2, 3, 4] and np.isfinite(values).all(), key
    assert (artifacts / "plots" / "curves.png").is_file() and "model_uri" in run.data.tags  # the rest was stored
    assert seconds < 120  # a bound on a hang (it was 10 minutes), not a speed test
    assert not any(Path(tmp).name.startswith("optlab-") for tmp in os.listdir(tmp_path))

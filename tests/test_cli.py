"""The real command line in fresh processes, fed hostile param values: whatever the value, the exit code is 0,
2 (bad input) or 3 (diverged), never 1 (a crash); a failure is one line on stderr, without a traceback; and no
value is ever run as code or as a shell command (nothing appears in the working folder)."""
import os
import subprocess
import sys

import mlflow
import pytest
from hypothesis import example, given, settings, strategies as st

from conftest import REPO, SHARED_SUBSET

# Code, shell and format injection, path tricks, odd unicode, and numbers at and past every limit.
PAYLOADS = ["__import__('os').system('touch PWNED')", "$(touch PWNED)", "`touch PWNED`", "; touch PWNED",
            "| touch PWNED", "{__import__('os').system('touch PWNED')}", "{0.__class__}", "%s%n", "' OR '1'='1",
            "../../PWNED", "\u202egnp.exe", "😀", "é", "", " ", "\n", "-1", "-1e308", "1e308", "1e309",
            "9" * 400, "-" + "9" * 400, "nan", "-inf", "0x10", "1_000", "²", "+-5", "--steps", "-2,-2",
            "1e308,1e308", "default", "true"]
VALUES = st.one_of(st.sampled_from(PAYLOADS),
                   st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
                   st.integers(-10**30, 10**30).map(str), st.floats().map(repr))
# Fixed params keep every run tiny (steps, epochs, images); the hostile ones are drawn from PARAMS.
FIXED = {"toy": ("--steps", "3"),
         "cifar": ("--model", "tiny_cnn", "--epochs", "1", "--train_limit", "64", "--val_limit", "32",
                   "--data_dir", str(SHARED_SUBSET), "--download", "false", "--log_model", "false",
                   "--system_metrics", "false"),
         "predict": ("--model_uri", "runs:/0123456789abcdef/model", "--input", str(REPO / "README.md"))}
PARAMS = {"toy": ("optimizer", "function", "lr", "momentum", "weight_decay", "start", "tolerance", "seed",
                  "experiment"),
          "cifar": ("optimizer", "lr", "momentum", "weight_decay", "scheduler", "batch_size", "seed",
                    "target_acc", "device", "resume", "register", "model_name", "experiment"),
          "predict": ("model_uri", "input", "batch_size", "experiment")}


@pytest.fixture(scope="module")
def store(store_uri) -> str:
    """The session's SQLite store with its tables made (MLflow logs two lines to stderr when it makes them)."""
    mlflow.MlflowClient(store_uri).search_experiments(max_results=1)
    return store_uri


@st.composite
def command_lines(draw) -> tuple[str, dict]:
    entry = draw(st.sampled_from(sorted(PARAMS)))
    return entry, draw(st.dictionaries(st.sampled_from(PARAMS[entry]), VALUES, min_size=1, max_size=3))


# Each @example crashed with a traceback (exit 1) before the fix that came with this test.
@example(case=("toy", {"seed": "9" * 400}))  # torch.manual_seed overflowed
@example(case=("toy", {"steps": "9" * 20}))  # torch.empty overflowed
@example(case=("toy", {"seed": "²"}))  # str.isdigit() passed it, int() did not
@example(case=("toy", {"optimizer": "sgd", "lr": "1e308"}))  # the plots' tick locator overflowed
@example(case=("cifar", {"optimizer": "sgd", "lr": "1e308"}))  # float32 weights: torch overflowed
@settings(max_examples=8, deadline=None)
@given(case=command_lines())
def test_hostile_params_never_crash_the_process_or_run_as_code(case, store, tmp_path_factory):
    entry, params = case
    folder = tmp_path_factory.mktemp("cwd")
    argv = [sys.executable, "-m", "pipeline", entry, *FIXED[entry]]
    for key, value in params.items():
        argv += [f"--{key}", value]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    done = subprocess.run(argv, cwd=folder, env=env, text=True, capture_output=True, timeout=180)
    assert done.returncode in (0, 2, 3), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert list(folder.iterdir()) == []  # no PWNED, nor anything else
    assert not any((place / "PWNED").exists() for place in (REPO, folder.parent, folder.parent.parent))

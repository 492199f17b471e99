"""The real command line in fresh processes, fed hostile param values: whatever the value, the exit code is 0,
2 (bad input) or 3 (diverged), never 1 (a crash); a failure is one line on stderr, without a traceback; and no
value is ever run as code or as a shell command (nothing appears in the working folder)."""
import os
import signal
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO, SHARED_SUBSET, cli, interruptible, new_experiment, runs_of
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import cli as pipeline_cli

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


# Each crashed with a traceback (exit 1) before the fix that came with it; run in-process (a process costs seconds).
REGRESSIONS = [("toy", {"seed": "9" * 400}),  # torch.manual_seed overflowed
               ("toy", {"steps": "9" * 20}),  # torch.empty overflowed
               ("toy", {"seed": "²"}),  # str.isdigit() passed it, int() did not
               ("toy", {"optimizer": "sgd", "lr": "1e308"}),  # the plots' tick locator overflowed
               ("cifar", {"optimizer": "sgd", "lr": "1e308"})]  # float32 weights: torch overflowed


def _argv(entry: str, params: dict) -> list[str]:
    return [entry, *FIXED[entry], *(item for key, value in params.items() for item in (f"--{key}", value))]


def _check_outcome(done: subprocess.CompletedProcess, folder) -> None:
    """Exit 0, 2 or 3; a failure is one line, no traceback; nothing written where the command ran."""
    assert done.returncode in (0, 2, 3), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert list(folder.iterdir()) == []  # no PWNED, nor anything else
    assert not any((place / "PWNED").exists() for place in (REPO, folder.parent, folder.parent.parent))


@pytest.mark.parametrize("entry,params", REGRESSIONS)
def test_values_that_once_crashed_are_handled(entry, params, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check_outcome(cli(*_argv(entry, params), env={"MLFLOW_TRACKING_URI": store}), tmp_path)


# Whole processes, as a user's shell starts them: 3 random cases per run (a process costs seconds); the hostile
# values of every entry point are also covered in-process by test_config.py's property tests, hundreds per run.
@settings(max_examples=3, deadline=None)
@given(case=command_lines())
def test_hostile_params_never_crash_the_process_or_run_as_code(case, store, tmp_path_factory):
    entry, params = case
    folder = tmp_path_factory.mktemp("cwd")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "pipeline", *_argv(entry, params)], cwd=folder, env=env, text=True,
                          capture_output=True, timeout=180)
    _check_outcome(done, folder)


def test_ctrl_c_is_one_line_exit_130_and_the_run_is_killed(tracking, tmp_path):
    experiment = new_experiment()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "cifar", *FIXED["cifar"][:-1], "false", "--epochs", "200",
         "--train_limit", "256", "--experiment", experiment],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=interruptible)
    for line in process.stdout:
        if "epoch 2/200:" in line:
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if " INFO " not in line]  # MLflow's own log lines
    assert lines == ["interrupted: open runs are marked KILLED"], err
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "KILLED"


def test_a_store_that_cannot_be_written_is_one_line_naming_the_path(tracking, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    experiment = new_experiment()
    tracking.create_experiment(experiment, artifact_location=str(blocker / "artifacts"))
    assert pipeline_cli.main(["toy", "--steps", "3", "--experiment", experiment]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write {blocker}"), err
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FAILED" and "NotADirectoryError" in run.data.tags["error"]


def test_a_tracking_database_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = subprocess.run([sys.executable, "-m", "pipeline", "toy", "--steps", "3"], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{blocker}/m.db"},
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(blocker) in errors[0], done.stderr


def test_a_reader_that_goes_away_is_no_traceback():
    """`python -m pipeline optimizers | head -1`: the pipe closes before we write; exit 141 as a shell says."""
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "optimizers"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # no reader left: every write gets EPIPE
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141 and err == ""

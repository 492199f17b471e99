"""`tune`: equal budgets on Optuna, seeds of the best setting, the MLflow layout and the report, checked in real
MLflow stores and the real Optuna storage; resuming; bad params."""
import contextlib
import csv
import io
import json
import re
import sqlite3
import tempfile
import urllib.parse
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from conftest import artifact_files, cli, metric_history, new_experiment, runs_of

OPTIMIZERS, FUNCTIONS, K, S = ("adam", "sgd"), ("rosenbrock", "ackley"), 3, 2
TOY = ("--optimizers", ",".join(OPTIMIZERS), "--functions", ",".join(FUNCTIONS), "--trials", str(K),
       "--seeds", str(S), "--steps", "250", "--starts", "16")


def _storage(store_uri: str) -> str:
    """The default Optuna storage: optuna.db beside the SQLite tracking store."""
    return f"sqlite:///{Path(store_uri[len('sqlite:///'):]).parent / 'optuna.db'}"


def _studies(store_uri: str, key: str, phase: str) -> dict[str, optuna.Study]:
    """study label (optimizer-function) -> its study, for one tune key and phase."""
    storage = optuna.storages.RDBStorage(_storage(store_uri))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)
             if s.study_name.startswith(f"optlab-tune-{key}:") and s.study_name.endswith(f":{phase}")]
    return {name.split(":")[1]: optuna.load_study(study_name=name, storage=storage) for name in names}


@pytest.fixture(scope="module")
def toy_tune(store_uri):
    """Two optimizers on two functions, tuned in this process: (experiment, output, client, runs)."""
    experiment = new_experiment()
    done = cli("tune", *TOY, "--experiment", experiment, env={"MLFLOW_TRACKING_URI": store_uri})
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(store_uri)
    return experiment, done, client, runs_of(client, experiment)


def _by_role(runs, role):
    return [r for r in runs if r.data.tags.get("role") == role]


def test_one_parent_a_child_per_optimizer_and_trials_defaults_seeds_under_each(toy_tune):
    _, _, _, runs = toy_tune
    (parent,) = [r for r in runs if r.data.tags.get("task") == "tune"]
    children = _by_role(runs, "optimizer")
    assert sorted(c.info.run_name for c in children) == sorted(f"{o}-{f}" for o in OPTIMIZERS for f in FUNCTIONS)
    assert all(r.info.status == "FINISHED" for r in runs)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        below = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == child.info.run_id]
        roles = sorted(r.data.tags["role"] for r in below)
        assert roles == sorted(["trial"] * K + ["seed"] * S), child.info.run_name  # no separate default run
        (first,) = [r for r in below if r.data.tags.get("default") == "true"]  # the default is trial 0, counted
        assert first.data.tags["trial"] == "0" and first.data.tags["role"] == "trial"
        assert {r.data.tags["study"] for r in below if r.data.tags["role"] == "trial"} == {child.data.tags["study"]}
        optimizer = child.data.tags["optimizer"]
        for run in below:  # readable names: adam-t03-lr2.1e-3, adam-t00-default-lr1.0e-3, adam-seed2
            role, name = run.data.tags["role"], run.info.run_name
            default = "default-" if run.data.tags.get("default") == "true" else ""
            expected = {"trial": rf"{optimizer}-t{int(run.data.tags['trial']):02d}-{default}lr\d\.\de-?\d+",
                        "seed": rf"{optimizer}-seed[12]"}[role]
            assert re.fullmatch(expected, name), name
    assert len(runs) == 1 + len(children) * (1 + K + S)


def test_a_toy_trial_logs_a_score_curve_and_a_seed_run_is_an_ordinary_toy_run(toy_tune):
    _, _, client, runs = toy_tune
    trial, seed = _by_role(runs, "trial")[0], _by_role(runs, "seed")[0]
    steps, values = metric_history(client, trial.info.run_id, "score")  # 250 steps: every 5th and the last
    assert steps == [*range(0, 250, 5), 250] and np.isfinite(values).all() and (values >= 0).all()
    assert values[-1] == pytest.approx(float(trial.data.metrics["score"]))
    assert artifact_files(client, trial.info.run_id) == set()  # no plot per start
    assert trial.data.params["starts"] == "16" and "lr" in trial.data.params
    assert artifact_files(client, seed.info.run_id) == {"config.json", "trajectory.csv", "plots/contour.png",
                                                         "plots/surface.png", "plots/loss.png"}  # one upload
    assert seed.data.params["start"] != "default" and "loss" in seed.data.metrics and "score" in seed.data.metrics
    assert seed.data.params["starts"] == "16" and seed.data.tags["converged"] in ("true", "false")
    with tempfile.TemporaryDirectory() as scratch:  # every step in the CSV; the loss history on the same grid
        table = np.loadtxt(client.download_artifacts(seed.info.run_id, "trajectory.csv", scratch), delimiter=",",
                           skiprows=1, ndmin=2)
        config = json.loads(Path(client.download_artifacts(seed.info.run_id, "config.json", scratch)).read_text())
    assert config["resolved"] == {k: v for k, v in seed.data.params.items() if k != "starts"}
    assert config["seed"] == int(seed.data.tags["seed"])
    steps, values = metric_history(client, seed.info.run_id, "loss")
    assert table[:, 0].tolist() == list(range(len(table))) and len(steps) <= 51
    assert steps[:-1] == list(range(0, len(table) - 1, 5)) and steps[-1] == len(table) - 1
    assert list(values) == table[steps, 3].tolist()


def test_every_optimizer_gets_exactly_k_trials_from_the_same_space(toy_tune, store_uri):
    _, _, _, runs = toy_tune
    key = _by_role(runs, "optimizer")[0].data.tags["study"].split(":")[0].removeprefix("optlab-tune-")
    studies = _studies(store_uri, key, "trials")
    assert sorted(studies) == sorted(f"{o}-{f}" for o in OPTIMIZERS for f in FUNCTIONS)
    points = set()
    for label, study in studies.items():
        counted = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                          optuna.trial.TrialState.PRUNED)]
        assert len(counted) == K, label
        assert {t.distributions["lr"] for t in counted} == {optuna.distributions.FloatDistribution(1e-5, 10.0,
                                                                                                   log=True)}
        points.add(tuple(sorted(round(t.params["lr"], 12) for t in counted)))
    assert len(points) == 1  # seeded alike: every optimizer was tried at the very same learning rates


def _table(client, run_id: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        text = Path(client.download_artifacts(run_id, "tuned.csv", folder)).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def test_the_reported_best_is_the_best_trial_and_seed_statistics_match_the_seed_runs(toy_tune):
    _, done, client, runs = toy_tune
    (parent,) = [r for r in runs if r.data.tags.get("task") == "tune"]
    table = {(row["optimizer"], row["workload"]): row for row in _table(client, parent.info.run_id)}
    assert len(table) == len(OPTIMIZERS) * len(FUNCTIONS)
    for child in _by_role(runs, "optimizer"):
        below = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == child.info.run_id]
        trials = _by_role(below, "trial")
        best = min(trials, key=lambda r: (r.data.metrics["score"], int(r.data.tags["trial"])))
        row = table[(child.data.tags["optimizer"], child.data.tags["workload"])]
        assert float(row["tuned_lr"]) == pytest.approx(float(best.data.params["lr"]), rel=1e-3)
        assert float(row["best_trial_score"]) == pytest.approx(best.data.metrics["score"], rel=1e-3)
        assert child.data.tags["best_run_id"] == best.info.run_id
        seeds = [r.data.metrics["score"] for r in _by_role(below, "seed")]
        assert sorted(int(r.data.params["seed"]) for r in _by_role(below, "seed")) == [1, 2]
        assert {r.data.params["lr"] for r in _by_role(below, "seed")} == {best.data.params["lr"]}
        assert child.data.metrics["score_mean"] == pytest.approx(np.mean(seeds), rel=1e-9)
        assert child.data.metrics["score_sd"] == pytest.approx(np.std(seeds, ddof=1), rel=1e-9)
        (default,) = [r for r in trials if r.data.tags.get("default") == "true"]
        assert float(default.data.params["lr"]) == pytest.approx(float(row["default_lr"]), rel=1e-9)
        assert best.data.metrics["score"] <= default.data.metrics["score"]  # tuning never picks worse than it
        assert child.data.metrics["default_score"] == pytest.approx(default.data.metrics["score"], rel=1e-9)
    assert "rosenbrock: at its default lr" in done.stdout and "with every optimizer tuned" in done.stdout
    parent = next(r for r in runs if r.data.tags.get("task") == "tune")
    tags = client.get_experiment(parent.info.experiment_id).tags
    for start, role, group in (("this tune in the MLflow UI", "optimizer", "study"), ("its trials", "trial",
                                                                                      "optimizer")):
        link = next(line for line in done.stdout.splitlines() if line.startswith(start))
        key = urllib.parse.parse_qs(link.split("?", 1)[1])["viewStateShareKey"][0]
        view = json.loads(tags[f"mlflow.sharedViewState.{key}"])
        shown = client.search_runs([parent.info.experiment_id], filter_string=view["searchFilter"])
        assert sorted(r.info.run_id for r in shown) == sorted(r.info.run_id for r in _by_role(runs, role))
        assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": group}]


def test_the_parent_logs_the_table_and_every_plot(toy_tune):
    _, _, client, runs = toy_tune
    (parent,) = [r for r in runs if r.data.tags.get("task") == "tune"]
    assert artifact_files(client, parent.info.run_id) == {
        "tuned.csv", "tuned.md", "plots/lr_sensitivity.png", "plots/seeds_score.png",
        "plots/performance_profile.png", "plots/basins.png", "verdict.md", "verdict.json",
        *(f"plots/budget_{f}.png" for f in FUNCTIONS)}
    assert parent.data.params["trials"] == str(K) and parent.data.params["sampler"] == "qmc"
    # What the UI shows: a name that says what and when, the table as description, figures in the row.
    assert re.fullmatch(rf"tune-toy-{len(OPTIMIZERS)}opt-{K}x{S}-\d{{4}}-\d{{4}}-\d{{2}}", parent.info.run_name)
    note = parent.data.tags["mlflow.note.content"]  # the verdict is the run's description
    assert note.startswith("# Verdict") and all(f"## {f}" in note for f in FUNCTIONS)
    table = _table(client, parent.info.run_id)
    best = min(float(row["score_mean"]) for row in table if row["workload"] == "ackley")
    assert parent.data.metrics["best_score_mean/ackley"] == pytest.approx(best, rel=1e-3)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"].startswith("Runs of optlab")


def test_the_same_command_again_continues_the_study_and_duplicates_no_run(toy_tune, store_uri):
    experiment, _, client, runs = toy_tune
    again = cli("tune", *TOY, "--experiment", experiment, env={"MLFLOW_TRACKING_URI": store_uri})
    assert again.returncode == 0, again.stderr[-3000:]
    after = runs_of(client, experiment)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in runs)
    assert " trial " not in again.stdout  # nothing ran again
    assert all(r.info.status == "FINISHED" for r in after)


@pytest.mark.parametrize("params,message", [
    (("--sampler", "bayes"), "sampler: expected one of qmc, grid, random, tpe, got 'bayes'"),
    (("--pruner", "hyperband"), "pruner: expected none for task=toy"),
    (("--lr", "0.1"), "lr: tune searches lr between lr_min and lr_max"),
    (("--lr_min", "1", "--lr_max", "0.1"), "lr_min, lr_max: expected 0 < lr_min < lr_max"),
    (("--functions", "rosenbrock,himmelblau2"), "unknown function 'himmelblau2'"),
    (("--search", "lr,beta"), "search: expected one of lr, lr,weight_decay"),
    (("--storage", "redis://x"), "storage: expected empty"),
    (("--trials", "0"), "trials: expected an integer in [1, 10000], got 0"),
    (("--optimizer", "adam"), "optimizer: tune takes optimizers=a,b,c"),
    (("--task", "cifar", "--functions", "ackley"), "functions: expected empty for task=cifar"),
    (("--search", "lr,weight_decay", "--weight_decay", "0.1"), "weight_decay: search=lr,weight_decay searches it"),
])
def test_bad_params_are_one_line_and_exit_2(tracking, params, message):
    done = cli("tune", *params, "--experiment", new_experiment())
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr


def test_a_storage_that_cannot_be_opened_is_one_line(tracking, tmp_path):
    done = cli("tune", "--optimizers", "adam", "--trials", "1", "--seeds", "1", "--steps", "5",
               "--storage", "postgresql+psycopg2://nobody:secret@127.0.0.1:1/optuna", "--experiment", new_experiment())
    assert done.returncode == 2 and done.stderr.startswith("error: storage: cannot open"), done.stderr
    assert "secret" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_cifar_tune_with_hyperband_counts_pruned_trials_and_logs_the_same_report(tracking, store_uri):
    """The issue 15 line too: Muon, Schedule-Free AdamW and AdamW tuned on cifar, every run FINISHED."""
    from conftest import SHARED_SUBSET

    experiment, k = new_experiment(), 3
    done = cli("tune", "--task", "cifar", "--optimizers", "muon,sfadamw,adamw", "--trials", str(k), "--seeds", "2",
               "--model", "tiny_cnn", "--data_dir", str(SHARED_SUBSET), "--train_limit", "256", "--val_limit", "128",
               "--epochs", "3", "--pruner", "hyperband", "--log_model", "false", "--system_metrics", "false",
               "--experiment", experiment)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_of(tracking, experiment)
    (parent,) = [r for r in runs if r.data.tags.get("task") == "tune"]
    assert {"tuned.csv", "tuned.md", "plots/lr_sensitivity.png", "plots/seeds_val_acc.png",
            "plots/seeds_train_loss.png", "verdict.md", "verdict.json", "plots/budget_tiny_cnn.png"} == \
        artifact_files(tracking, parent.info.run_id)
    key = parent.data.tags["tune_key"]
    for label, study in _studies(store_uri, key, "trials").items():
        states = [t.state for t in study.trials]
        assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == k
    for run in _by_role(runs, "trial") + _by_role(runs, "seed"):  # ordinary cifar runs
        assert run.data.tags["task"] == "cifar" and "val_acc" in run.data.metrics and run.info.status == "FINISHED"
        assert all(np.isfinite(value) for value in run.data.metrics.values())
    assert {r.data.params["optimizer"] for r in _by_role(runs, "seed")} == {"muon", "sfadamw", "adamw"}
    pruned = [r for r in _by_role(runs, "trial") if r.data.tags.get("stopped_early") == "true"]
    assert all(int(tracking.get_metric_history(r.info.run_id, "val_acc")[-1].step) < 3 for r in pruned)
    for child in _by_role(runs, "optimizer"):
        seeds = [r for r in _by_role(runs, "seed") if r.data.tags["mlflow.parentRunId"] == child.info.run_id]
        finals = [tracking.get_metric_history(r.info.run_id, "val_acc")[-1].value for r in seeds]
        assert child.data.metrics["score_mean"] == pytest.approx(np.mean(finals))
        assert child.data.metrics["score_sd"] == pytest.approx(np.std(finals, ddof=1))


def test_performance_profiles_winners_and_seed_statistics_by_hand():
    from pipeline.sweeps.tune import results as tune_results

    table = {"a": {"w1": 1.0, "w2": 4.0}, "b": {"w1": 2.0, "w2": 1.0}}
    curves = tune_results.profiles(table, np.array([1.0, 2.0, 4.0]))
    assert curves["a"].tolist() == [0.5, 0.5, 1.0] and curves["b"].tolist() == [0.5, 1.0, 1.0]
    assert tune_results.mean_sd([1.0, 2.0, 6.0]) == (3.0, pytest.approx(2.6457513, rel=1e-6))
    assert tune_results.mean_sd([5.0]) == (5.0, 0.0)

    def result(name, default, seeds):
        record = tune_results.TrialRecord(0, "complete", {"lr": 0.1}, default)
        return tune_results.StudyResult(name, "w", 0.1, [record], record,
                                      [tune_results.TrialRecord(i, "complete", {}, v) for i, v in enumerate(seeds)], False)
    results = [result("a", 1.0, [0.50, 0.52]), result("b", 3.0, [0.51, 0.53]), result("c", 2.0, [0.9, 1.0])]
    assert tune_results.winners(results) == {"w": ("a", "a", ["b"])}
    assert tune_results.costs(results, floor=0.6)["a"]["w"] == 0.6  # gaps below the floor count as equal


def test_mlflow_run_tune_makes_its_run_the_parent_and_a_second_one_joins(tracking, store_uri):
    from conftest import mlflow_run

    experiment = new_experiment()
    params = ("optimizers=adam", "functions=booth", "trials=2", "seeds=1", "steps=20", "starts=4")
    first = mlflow_run("tune", *params, experiment=experiment, env={"MLFLOW_TRACKING_URI": store_uri})
    assert first.returncode == 0, first.stderr[-3000:]
    (parent,) = [r for r in runs_of(tracking, experiment) if r.data.tags.get("task") == "tune"]
    assert parent.data.tags.get("mlflow.source.type") == "PROJECT" and parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("tune-toy-1opt-2x1-")  # not mlflow run's random name
    assert tracking.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"  # the experiment `mlflow run --experiment-name` made
    # A second `mlflow run` of the same command, in-process: the run it hands over, in the same experiment.
    handed = tracking.create_run(parent.info.experiment_id).info.run_id
    second = cli("tune", *[part for p in params for part in (f"--{p.split('=')[0]}", p.split("=", 1)[1])],
                 env={"MLFLOW_RUN_ID": handed, "MLFLOW_EXPERIMENT_ID": parent.info.experiment_id})
    assert second.returncode == 0, second.stderr[-3000:]
    assert tracking.get_run(handed).data.tags["joined_tune_run"] == parent.info.run_id
    assert [r.data.tags.get("task") for r in runs_of(tracking, experiment)].count("tune") == 1


from hypothesis import given, settings
from hypothesis import strategies as st  # noqa: E402

_VALUES = st.one_of(st.text(max_size=30), st.sampled_from(["qmc", "hyperband", "lr,weight_decay", "0", "-1", "1e309",
                                                           "nan", "9" * 400, "cifar", "toy", "adam,,adam", "😀",
                                                           "sqlite:///x.db", "postgresql://u:p@h/d", "rosenbrock"]))


@settings(max_examples=200, deadline=None)
@given(overrides=st.dictionaries(st.sampled_from(["task", "optimizers", "functions", "models", "trials", "seeds",
                                                  "sampler", "pruner", "search", "lr_min", "lr_max", "starts",
                                                  "workers", "storage", "heartbeat_s", "steps", "momentum", "lr",
                                                  "weight_decay", "bogus"]), _VALUES, max_size=5))
def test_any_tune_input_is_a_config_or_one_usage_error_line(overrides):
    from pipeline.config.tune import build_tune
    from pipeline.core.errors import UsageError

    try:
        config = build_tune(overrides)
    except UsageError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert config.children and all(plan.base.optimizer == plan.optimizer for plan in config.children)


def _holm(pvalues):
    """Holm's step-down adjustment, written out here independently of the code under test."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def test_the_verdict_equals_a_recomputation_from_the_stored_seed_runs(toy_tune, tmp_path):
    """verdict.json's means, 95% CIs and Holm-adjusted Welch p-values, recomputed with scipy from the final
    `score` of every seed run in the store (not from the report)."""
    from scipy import stats

    _, done, client, runs = toy_tune
    (parent,) = [r for r in runs if r.data.tags.get("task") == "tune"]
    stored = json.loads(Path(client.download_artifacts(parent.info.run_id, "verdict.json", str(tmp_path))).read_text())
    for function in FUNCTIONS:
        scores = {}
        for child in _by_role(runs, "optimizer"):
            if child.data.tags["workload"] != function:
                continue
            seeds = [r for r in _by_role(runs, "seed") if r.data.tags["mlflow.parentRunId"] == child.info.run_id]
            scores[child.data.tags["optimizer"]] = [client.get_metric_history(r.info.run_id, "score")[-1].value
                                                    for r in seeds]
        verdict = stored["workloads"][function]
        assert verdict["direction"] == "min" and verdict["score_metric"] == "score"
        rows = {row["optimizer"]: row for row in verdict["rows"]}
        best = min(scores, key=lambda name: np.mean(scores[name]))
        assert verdict["rows"][0]["optimizer"] == best
        others = [name for name in scores if name != best]
        pvalues = [stats.ttest_ind(scores[name], scores[best], equal_var=False).pvalue for name in others]
        for name, p in zip(others, _holm(pvalues)):
            assert rows[name]["p_adjusted"] == pytest.approx(p, rel=1e-6)
        for name, values in scores.items():
            low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
            assert rows[name]["mean"] == pytest.approx(np.mean(values), rel=1e-9)
            assert (rows[name]["ci_low"], rows[name]["ci_high"]) == (pytest.approx(low), pytest.approx(high))
            assert sorted(s["score"] for s in rows[name]["seeds"]) == pytest.approx(sorted(values))
        significant = all(p < 0.05 for p in _holm(pvalues))
        assert verdict["winner"] == (best if significant else None)
        assert f"{function}: {best} wins" in done.stdout if significant else "not told apart" in done.stdout


def test_every_study_starts_with_the_default_setting_and_holds_exactly_k_trials(toy_tune, store_uri):
    """In the Optuna storage: trial 0 of each study is the optimizer's own lr (queued, tagged default), counted in
    the K; no separate default study or run exists."""
    from pipeline.optim.registry import get_spec

    _, _, _, runs = toy_tune
    (parent,) = [r for r in runs if r.data.tags.get("task") == "tune"]
    key = parent.data.tags["tune_key"]
    studies = _studies(store_uri, key, "trials")
    assert sorted(studies) == sorted(f"{o}-{f}" for o in OPTIMIZERS for f in FUNCTIONS)
    for label, study in studies.items():
        first = study.trials[0]
        assert first.user_attrs.get("default") is True
        assert first.params["lr"] == pytest.approx(get_spec(label.split("-")[0]).default_lr)
        assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == K
        assert sum(bool(t.user_attrs.get("default")) for t in study.trials) == 1
    assert not _studies(store_uri, key, "default")


def test_the_basin_map_descended_with_the_seed_reruns_is_the_tuned_settings_own(toy_tune, store_uri):
    """A toy study's first seed trial carries its best setting's basin map (its grid descended in the seed batch);
    it equals scores.basin_map of that setting descended alone, the map the report draws in basins.png."""
    import dataclasses

    from pipeline.config.tune import build_tune
    from pipeline.workloads.toy import scores
    from pipeline.workloads.toy.functions import get_function

    _, _, _, runs = toy_tune
    (parent,) = [r for r in runs if r.data.tags.get("task") == "tune"]
    key = parent.data.tags["tune_key"]
    cfg = build_tune({"task": "toy", "optimizers": ",".join(OPTIMIZERS), "functions": ",".join(FUNCTIONS),
                      "trials": str(K), "seeds": str(S), "steps": "250", "starts": "16"})
    trials, seeds = _studies(store_uri, key, "trials"), _studies(store_uri, key, "seeds")
    for plan in cfg.children:
        carried = [t.user_attrs["basin"] for t in seeds[plan.label].trials if "basin" in t.user_attrs]
        assert len(carried) == 1, plan.label  # the first seed's trial only
        settings = dataclasses.replace(plan.base, **trials[plan.label].best_trial.params).optimizer_settings
        alone = scores.basin_map(get_function(plan.workload), settings, plan.base.steps, plan.base.tolerance)
        assert np.array_equal(scores.basin_from_text(carried[0]), alone), plan.label


def test_the_tracking_store_and_the_tunes_storage_are_left_in_wal_mode(toy_tune, store_uri):
    """Two workers' reads no longer wait for each other's writes (core/sqlite.py; docs/performance.md)."""
    for url in (store_uri, _storage(store_uri)):
        with contextlib.closing(sqlite3.connect(url[len("sqlite:///"):])) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal", url

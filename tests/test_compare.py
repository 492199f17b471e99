"""The `compare` sweep: parent and children in the store, overlays, summaries, reuse, redraw, champion."""
import csv
import io
import json
import urllib.parse

import mlflow
import pytest
from conftest import SHARED_SUBSET, artifact_files, cli, metric_history, new_experiment, runs_of

TOY_PLOTS = {"plots/contour.png", "plots/contour_panels.png", "plots/surface.png", "plots/loss.png",
             "plots/paths.gif"}
CIFAR_PLOTS = {"plots/train_accuracy.png", "plots/train_loss.png", "plots/test_accuracy.png",
               "plots/test_loss.png", "plots/test_accuracy_vs_time.png"}


def _children(client, parent_id: str, experiment: str) -> list:
    return [r for r in runs_of(client, experiment) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def _summary(parent_id: str) -> list[dict]:
    text = mlflow.artifacts.load_text(f"runs:/{parent_id}/summary.csv")
    return list(csv.DictReader(io.StringIO(text)))


# Three optimizers are enough to show a child per optimizer, the overlays and the reuse; that the default sweep
# names every registered optimizer is test_config's, and that each of them descends is test_descent's.
SWEPT = ("sgd", "adam", "rmsprop")


def test_toy_sweep_logs_a_child_per_optimizer_overlays_and_reuses_them(tracking):
    experiment = new_experiment()
    args = ("compare", "--task", "toy", "--optimizers", ",".join(SWEPT), "--function", "rosenbrock", "--lr",
            "0.01", "--steps", "60", "--experiment", experiment)
    done = cli(*args)  # in-process: the cifar sweep (conftest.cifar_sweep) runs compare in a real process
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,) = [r for r in runs_of(tracking, experiment) if r.data.tags.get("task") == "compare"]
    children = _children(tracking, parent.info.run_id, experiment)
    assert sorted(c.data.params["optimizer"] for c in children) == sorted(SWEPT)
    assert artifact_files(tracking, parent.info.run_id) == TOY_PLOTS | {"summary.csv", "summary.md"}
    rows = {row["optimizer"]: row for row in _summary(parent.info.run_id)}
    assert set(rows) == set(SWEPT)
    assert rows["sgd"]["diverged"] == "yes" and rows["adam"]["diverged"] == "no"  # lr 0.01 is too much for sgd
    adam = next(c for c in children if c.data.params["optimizer"] == "adam")
    assert float(rows["adam"]["final_loss"]) == pytest.approx(metric_history(tracking, adam.info.run_id,
                                                                             "loss")[1][-1], rel=1e-3)
    assert parent.data.params["function"] == "rosenbrock" and parent.data.params["task"] == "toy"

    again = cli(*args)
    assert again.returncode == 0 and again.stdout.count("reusing finished run") == len(SWEPT)
    runs = runs_of(tracking, experiment)
    assert len(runs) == 2 + len(SWEPT)  # a second parent, no new children
    newest_parent = runs[0]
    assert {row["reused"] for row in _summary(newest_parent.info.run_id)} == {"yes"}

    redraw = cli("compare", "--from_runs", parent.info.run_id, "--experiment", experiment)
    assert redraw.returncode == 0, redraw.stderr[-2000:]
    redrawn = runs_of(tracking, experiment)[0]
    assert redrawn.data.tags["redrawn_from"] == parent.info.run_id
    assert len(runs_of(tracking, experiment)) == 3 + len(SWEPT)
    assert artifact_files(tracking, redrawn.info.run_id) >= TOY_PLOTS


def test_sweep_params_are_validated_before_any_run(tracking):
    experiment = new_experiment()
    for args, message in ((["--optimizers", "adam,nope"], "unknown optimizer 'nope'"),
                          (["--task", "toy", "--epochs", "2"], "unknown param 'epochs' for toy"),
                          (["--task", "cifar", "--data_dir", "/nonexistent", "--download", "false"],
                           "no CIFAR-10 in /nonexistent"),
                          (["--task", "cifar", "--lockstep", "true", "--data_dir", "/nonexistent", "--download",
                            "false"], "no CIFAR-10 in /nonexistent"),
                          (["--from_runs", "no-such-thing"], "from_runs: no toy runs found")):
        done = cli("compare", *args, "--experiment", experiment)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert tracking.get_experiment_by_name(experiment) is None or not runs_of(tracking, experiment)


def test_from_runs_an_experiment_name_redraws_its_newest_run_per_optimizer(tracking):
    source, target = new_experiment(), new_experiment()
    base = ("compare", "--task", "toy", "--optimizers", "sgd,adam", "--function", "booth",
            "--steps", "40", "--experiment", source)
    for lr in ("0.01", "0.05"):  # two sweeps with different settings: the second's runs are the newest
        done = cli(*base, "--lr", lr)
        assert done.returncode == 0, done.stderr[-3000:]
    newest_parent = next(r for r in runs_of(tracking, source) if r.data.tags.get("task") == "compare")
    assert newest_parent.data.params["lr"] == "0.05"
    newest = {row["optimizer"]: row for row in _summary(newest_parent.info.run_id)}
    assert {row["reused"] for row in newest.values()} == {"no"}  # the second sweep trained its own children
    source_runs = {r.info.run_id for r in runs_of(tracking, source)}
    assert len(source_runs) == 2 * (1 + 2)

    redraw = cli("compare", "--from_runs", source, "--experiment", target)
    assert redraw.returncode == 0, redraw.stderr[-3000:]
    assert {r.info.run_id for r in runs_of(tracking, source)} == source_runs  # nothing trained or added
    (parent,) = runs_of(tracking, target)  # the new parent only: no child runs in either experiment
    assert parent.data.tags["task"] == "compare" and parent.data.tags["redrawn_from"] == source
    assert artifact_files(tracking, parent.info.run_id) == TOY_PLOTS | {"summary.csv", "summary.md"}
    rows = _summary(parent.info.run_id)
    assert [row["optimizer"] for row in rows] == list(newest)  # same order: best first
    for row in rows:
        original = newest[row["optimizer"]]
        assert row["run_id"] == original["run_id"]
        for column in ("final_loss", "distance_to_min"):
            assert float(row[column]) == pytest.approx(float(original[column]), rel=1e-12), column
        for column in ("steps_to_converge", "diverged", "status"):
            assert row[column] == original[column], column
        assert row["reused"] == "yes"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason="needs the real CIFAR-10 subset")
def test_cifar_sweep_as_in_the_issue(tracking, cifar_sweep):
    experiment, model_name, first, second = cifar_sweep
    assert first.returncode == 0, first.stderr[-3000:]
    parents = [r for r in runs_of(tracking, experiment) if r.data.tags.get("task") == "compare"]
    assert len(parents) == 2
    parent = parents[-1]  # the first sweep
    children = _children(tracking, parent.info.run_id, experiment)
    assert sorted(c.data.params["optimizer"] for c in children) == ["adadelta", "adam", "momentum"]
    for child in children:
        assert metric_history(tracking, child.info.run_id, "val_acc")[0] == [1, 2]
    assert artifact_files(tracking, parent.info.run_id) >= CIFAR_PLOTS | {"summary.csv", "summary.md"}
    assert second.returncode == 0 and second.stdout.count("reusing finished run") == 3
    assert "epoch 1/2" not in second.stdout  # trained nothing new
    assert len(runs_of(tracking, experiment)) == 5
    best = max(children, key=lambda c: c.data.metrics["best_val_acc"])
    assert parents[0].data.tags["champion_run_id"] == best.info.run_id
    version = mlflow.MlflowClient().get_model_version_by_alias(model_name, "champion")
    assert version.run_id == best.info.run_id


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason="needs the real CIFAR-10 subset")
def test_the_modern_set_compares_on_cifar_every_child_finished_with_finite_metrics(tracking):
    """Issue 15: optimizers=modern (Muon, Lion, Schedule-Free AdamW, SOAP, Shampoo, NAdamW, Adafactor, with AdamW
    and Nesterov as references) on a small limit of the real subset, on CPU."""
    import numpy as np

    experiment = new_experiment()
    done = cli("compare", "--task", "cifar", "--optimizers", "modern", "--model", "tiny_cnn", "--data_dir",
               str(SHARED_SUBSET), "--train_limit", "256", "--val_limit", "128", "--epochs", "2", "--log_model",
               "false", "--system_metrics", "false", "--experiment", experiment)
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,) = [r for r in runs_of(tracking, experiment) if r.data.tags.get("task") == "compare"]
    children = {c.data.params["optimizer"]: c for c in _children(tracking, parent.info.run_id, experiment)}
    assert list(children) == ["nesterov", "adamw", "shampoo", "soap", "sfadamw", "lion", "muon", "adafactor",
                              "nadamw"]  # newest first
    for name, child in children.items():
        assert child.info.status == "FINISHED", name
        assert metric_history(tracking, child.info.run_id, "val_acc")[0] == [1, 2], name
        assert all(np.isfinite(value) for value in child.data.metrics.values()), name
    muon = children["muon"].data.params
    assert (muon["muon_tensors"], muon["muon_numel"], muon["adamw_tensors"]) == ("1", "4608", "7")
    assert children["sfadamw"].data.params["scheduler"] == "none"
    assert {row["optimizer"] for row in _summary(parent.info.run_id)} == set(children)


def test_the_parent_records_which_children_got_a_setting_only_some_take():
    from pipeline.compare import shared_params
    from pipeline.config.compare import build_compare

    params = shared_params(build_compare({"optimizers": "sgd,adam,nesterov", "momentum": "0.5"}))
    assert params["momentum_applies_to"] == "sgd,nesterov" and "momentum" not in params
    assert "lr_applies_to" not in shared_params(build_compare({"optimizers": "sgd,adam", "lr": "0.1"}))


def test_seeds_run_each_optimizer_on_every_seed_and_band_them(tracking):
    experiment = new_experiment()
    done = cli("compare", "--optimizers", "adam,sgd", "--function", "ackley", "--start", "random", "--seeds", "3",
               "--steps", "30", "--experiment", experiment)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = runs_of(tracking, experiment)
    (parent,) = [r for r in runs if r.data.tags.get("task") == "compare"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((c.data.params["optimizer"], c.data.params["seed"]) for c in children) == \
        sorted((o, str(s)) for o in ("adam", "sgd") for s in range(3))
    assert len({c.data.params["start"] for c in children}) == 3  # the seed picks the start, the same for both
    assert "plots/seeds_loss.png" in artifact_files(tracking, parent.info.run_id)
    assert parent.data.params["seeds"] == "3"
    assert parent.info.run_name.startswith("compare-toy-2opt-")  # what, how many, when
    assert "| optimizer | final_loss |" in parent.data.tags["mlflow.note.content"]
    assert parent.data.metrics["optimizers"] == 2 and "best_final_loss" in parent.data.metrics
    link = next(line for line in done.stdout.splitlines() if line.startswith("this sweep in the MLflow UI: "))
    key = urllib.parse.parse_qs(link.split("?", 1)[1])["viewStateShareKey"][0]
    view = json.loads(tracking.get_experiment(parent.info.experiment_id).tags[f"mlflow.sharedViewState.{key}"])
    found = tracking.search_runs([parent.info.experiment_id], filter_string=view["searchFilter"])
    assert {r.info.run_id for r in found} == {parent.info.run_id} | {c.info.run_id for c in children}
    assert "workflowType=machine_learning" in link and "UI: http://127.0.0.1:5000/#/experiments/" in link
    refused = cli("compare", "--optimizers", "adam", "--seeds", "2", "--experiment", experiment)
    assert refused.returncode == 2 and "seeds: toy runs differ by seed only with start=random" in refused.stderr


def test_a_compare_over_seeds_says_who_wins_with_welch_and_holm_as_a_recomputation_from_the_store(tracking, tmp_path):
    """compare seeds=S: per optimizer its S runs' final loss; verdict.json's means and Holm-adjusted Welch
    p-values equal scipy's from the stored runs, and the printed line says whether anyone wins."""
    import statistics

    from scipy import stats

    experiment = new_experiment()
    done = cli("compare", "--optimizers", "adam,sgd,momentum", "--function", "booth", "--start", "random",
               "--seeds", "4", "--steps", "40", "--lr", "0.01", "--experiment", experiment)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = runs_of(tracking, experiment)
    (parent,) = [r for r in runs if r.data.tags.get("task") == "compare"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    finals = {}
    for child in children:
        finals.setdefault(child.data.params["optimizer"], []).append(
            metric_history(tracking, child.info.run_id, "loss")[1][-1])
    stored = tracking.download_artifacts(parent.info.run_id, "verdict.json", str(tmp_path))
    found = json.loads(open(stored, encoding="utf-8").read())
    (verdict,) = found["workloads"].values()
    rows = {row["optimizer"]: row for row in verdict["rows"]}
    best = min(finals, key=lambda o: statistics.fmean(finals[o]))
    assert verdict["rows"][0]["optimizer"] == best and verdict["direction"] == "min"
    raw = {o: stats.ttest_ind(finals[best], finals[o], equal_var=False).pvalue for o in finals if o != best}
    ordered = sorted(raw, key=raw.get)
    holm, running = {}, 0.0
    for rank, name in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * raw[name]))
        holm[name] = running
    for name, values in finals.items():
        assert rows[name]["mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
        if name != best:
            assert rows[name]["p_adjusted"] == pytest.approx(holm[name], rel=1e-9)
    line = next(line for line in done.stdout.splitlines() if line.startswith("Over 4 seeds (final loss): "))
    assert line.endswith(parent.data.tags["verdict"])
    assert (verdict["winner"] == best) == ("wins" in line)

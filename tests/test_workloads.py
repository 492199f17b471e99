"""The workload axis (issue 24): every workload builds and lowers its loss in a few steps, resumes bit-exactly
from a checkpoint, trains in lockstep exactly as alone; the transformer is causal, the quadratic has DeepOBS's
spectrum, Muon splits the transformer as its authors do; `train` runs the step workloads, a user's own workload
and refuses a bad name in one line; `predict` continues a prompt with a logged language model."""
import copy
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_SUBSET, cli, metric_history, new_experiment, runs_of

from pipeline.optim.muon import split_params
from pipeline.optim.registry import OptimizerSettings, build_optimizer
from pipeline.training.loop import FitState, Member, Precision, fit
from pipeline.workloads import quadratic
from pipeline.workloads.cifar.models import build_model
from pipeline.workloads.registry import SUITE, WORKLOADS, get_workload
from pipeline.workloads.text.gpt import GPT, GPTConfig

SHAKESPEARE = SHARED_SUBSET.parent / "tinyshakespeare"
CPU = Precision(torch.device("cpu"))
TINY = {"steps": 6, "batch_size": 8, "eval_every": 3, "eval_batches": 1, "scheduler": "none",
        "size": {"context": 16, "layers": 2, "heads": 2, "width": 32, "dropout": 0.0}}
STEP_WORKLOADS = [name for name, spec in WORKLOADS.items() if not spec.cifar_model] + ["examples.spirals:workload"]


def _step_setup(name: str, seed: int = 0):
    spec = get_workload(name)
    budget = {**TINY, "size": {**TINY["size"], **({"width": 16} if "spirals" in name else {})}}
    data = spec.data(str(SHAKESPEARE), False, seed, budget)
    model = spec.build(seed, data, budget)
    optimizer = build_optimizer(OptimizerSettings("adam", lr=1e-2), model.parameters())
    return spec, data, model, optimizer


@pytest.mark.parametrize("name", STEP_WORKLOADS)
def test_a_step_workload_builds_and_lowers_its_loss_in_a_few_steps(name):
    spec, data, model, optimizer = _step_setup(name)
    first = fit([Member(model, optimizer)], data.train, data.val, 1, CPU, spec.target, [lambda *_: None],
                show_progress=False, objective=spec.objective)[0].history[0]["val_loss"]
    last = fit([Member(model, optimizer)], data.train, data.val, 4, CPU, spec.target, [lambda *_: None],
               [FitState(epoch=1)], show_progress=False, objective=spec.objective)[0].history[-1]["val_loss"]
    assert last < first


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason="needs the real CIFAR-10 subset")
@pytest.mark.parametrize("model_name", ["logreg", "3c3d"])
def test_the_new_cifar_models_learn_on_real_images(model_name):
    from pipeline.workloads.cifar.data import CifarLoader, load_cifar10

    arrays = load_cifar10(SHARED_SUBSET, download=False, train_limit=64, val_limit=2)
    images, labels = next(iter(CifarLoader(arrays.train_x, arrays.train_y, 64, train=False)))
    torch.manual_seed(0)
    model = build_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert f"cifar10_{model_name}" in WORKLOADS


@pytest.mark.parametrize("name", STEP_WORKLOADS)
def test_a_step_workload_resumes_bit_exactly_from_a_checkpoint(name):
    """2 + 2 evaluations with a save and load of weights, optimizer, progress and the batch stream between
    them equal 4 straight (what a resumed run replays)."""
    spec, data, model, optimizer = _step_setup(name)
    straight = fit([Member(model, optimizer)], data.train, data.val, 4, CPU, spec.target, [lambda *_: None],
                   show_progress=False, objective=spec.objective)[0]
    spec, data, model, optimizer = _step_setup(name)
    half = fit([Member(model, optimizer)], data.train, data.val, 2, CPU, spec.target, [lambda *_: None],
               show_progress=False, objective=spec.objective)[0]
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "stream": data.train.generator.get_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    spec, data, model, optimizer = _step_setup(name)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    data.train.generator.set_state(saved["stream"])
    resumed = fit([Member(model, optimizer)], data.train, data.val, 4, CPU, spec.target, [lambda *_: None],
                  [copy.deepcopy(half)], show_progress=False, objective=spec.objective)[0]
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]


@pytest.mark.parametrize("name", STEP_WORKLOADS)
def test_a_step_workload_in_lockstep_equals_each_optimizer_alone(name):
    spec, data, model, _ = _step_setup(name)
    twin = copy.deepcopy(model)
    members = [Member(model, build_optimizer(OptimizerSettings("adam", lr=1e-2), model.parameters())),
               Member(twin, build_optimizer(OptimizerSettings("sgd", lr=1e-2), twin.parameters()))]
    together = fit(members, data.train, data.val, 2, CPU, spec.target, [lambda *_: None] * 2,
                   show_progress=False, objective=spec.objective)
    for index, optimizer in enumerate(("adam", "sgd")):
        spec, data, alone_model, _ = _step_setup(name)
        alone = fit([Member(alone_model, build_optimizer(OptimizerSettings(optimizer, lr=1e-2),
                                                         alone_model.parameters()))],
                    data.train, data.val, 2, CPU, spec.target, [lambda *_: None], show_progress=False,
                    objective=spec.objective)[0]
        assert [h["val_loss"] for h in alone.history] == [h["val_loss"] for h in together[index].history]


def test_no_position_of_the_transformer_sees_a_later_one():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocabulary=20, context=12, layers=2, heads=2, width=16)).eval()
    ids = torch.randint(20, (1, 12))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 20
    before, after = model(ids), model(changed)
    assert torch.equal(before[0, :7], after[0, :7])  # positions before 7 never see it
    assert not torch.allclose(before[0, 7:], after[0, 7:])  # from 7 on, they do


def test_the_quadratic_has_deepobs_spectrum_and_floor():
    eigenvalues = torch.linalg.eigvalsh(quadratic.hessian(seed=3))
    assert ((eigenvalues > 0) & (eigenvalues < 1)).sum() == 90
    assert ((eigenvalues > 30) & (eigenvalues < 60)).sum() == 10
    model = quadratic.NoisyQuadratic(seed=3)
    with torch.no_grad():
        model.theta.zero_()
        noise, _ = quadratic.noise_batch(torch.Generator().manual_seed(0), 20000)
        assert model(noise).mean().item() == pytest.approx(model.floor, rel=0.02)


def test_muon_gives_the_transformers_embeddings_and_head_to_adamw():
    model = GPT(GPTConfig(vocabulary=65))
    hidden, rest = split_params(model.parameters())
    outside = {id(model.tokens.weight), id(model.positions.weight), id(model.head.weight)}
    assert outside <= {id(p) for p in rest} and not outside & {id(p) for p in hidden}
    block_matrices = [p for block in model.blocks for p in block.parameters() if p.ndim == 2]
    assert {id(p) for p in hidden} == {id(p) for p in block_matrices} and len(hidden) == 4 * 4
    assert all(p.ndim == 1 for p in rest if id(p) not in outside)  # norms and biases


def test_the_listing_names_the_suite_and_the_cifar_models_with_sources_and_budgets():
    done = cli("workloads")
    assert done.returncode == 0
    for name in [*SUITE, "cifar10_resnet18_imagenet", "cifar10_tiny_cnn"]:
        line = next(line for line in done.stdout.splitlines() if line.startswith(name + " "))
        assert "[" in line  # its source
    assert done.stdout.count("quick ") >= len(WORKLOADS) and "suite = " in done.stdout


@pytest.mark.parametrize("workload,message", [
    ("nope", "unknown 'nope'"), ("no_such_module:workload", "cannot import 'no_such_module'"),
    ("examples.spirals:nothing", "has no function 'nothing'"), ("os:getcwd", "returned str, not a Workload"),
    ("a b:c", "neither a registered name"),
])
def test_a_bad_workload_is_one_line_and_exit_2(workload, message, tracking):
    done = cli("train", "--workload", workload)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_train_runs_a_step_workload_to_a_finished_run_with_its_target(tracking):
    experiment = new_experiment()
    done = cli("train", "--workload", "quadratic_deep", "--optimizer", "sgd", "--steps", "300", "--eval_every", "100",
               "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED" and run.data.tags["workload"] == "quadratic_deep"
    steps, values = metric_history(tracking, run.info.run_id, "val_loss")
    assert steps == [100, 200, 300] and values[-1] < values[0]
    assert "nothing to serve" in done.stdout and not tracking.list_artifacts(run.info.run_id)


def test_the_example_workload_runs_through_train(tracking, monkeypatch):
    monkeypatch.chdir(REPO)  # `examples` is found from the project folder, as `python -m` finds it
    experiment = new_experiment()
    done = cli("train", "--workload", "examples.spirals:workload", "--optimizer", "adam", "--lr", "0.01",
               "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED" and run.data.metrics["best_val_acc"] > 0.6


@pytest.mark.skipif(not SHAKESPEARE.is_dir(), reason="needs Tiny Shakespeare in ../shared/data")
def test_a_logged_language_model_continues_a_prompt(tracking):
    experiment = new_experiment()
    done = cli("train", "--workload", "shakespeare_gpt", "--steps", "4", "--eval_every", "2", "--batch_size", "4",
               "--data_dir", str(SHAKESPEARE), "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    (run,) = runs_of(tracking, experiment)
    assert {a.path for a in tracking.list_artifacts(run.info.run_id, "model")} == {"model/model.json",
                                                                                 "model/weights.pt"}
    uri = f"runs:/{run.info.run_id}/model"
    first = cli("predict", "--model_uri", uri, "--prompt", "ROMEO:", "--length", "40", "--experiment", experiment)
    again = cli("predict", "--model_uri", uri, "--prompt", "ROMEO:", "--length", "40", "--experiment", experiment)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ROMEO:") and len(first.stdout.strip()) >= 46 and first.stdout == again.stdout
    bad = cli("predict", "--model_uri", uri, "--prompt", "ROMEO: \u00e9", "--experiment", experiment)
    assert bad.returncode == 2 and "not in the model's vocabulary" in bad.stderr


def test_compare_runs_every_optimizer_on_every_workload_under_one_parent(tracking, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    experiment = new_experiment()
    done = cli("compare", "--workloads", "quadratic_deep,examples.spirals:workload", "--optimizers", "sgd,muon",
               "--steps", "20", "--eval_every", "10", "--lr", "0.01", "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    assert "muon is left out on quadratic_deep" in done.stdout
    runs = runs_of(tracking, experiment)
    parent = next(run for run in runs if run.info.run_name == "compare-workloads")
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((run.data.tags["workload"], run.data.tags["optimizer"]) for run in children) == \
        [("quadratic_deep", "sgd"), ("spirals", "muon"), ("spirals", "sgd")]
    assert all(run.info.status == "FINISHED" for run in children)
    summary = Path(tracking.download_artifacts(parent.info.run_id, "summary.md", str(tmp_path))).read_text()
    for run in children:
        assert run.data.metrics["steps"] == 20
        score = run.data.metrics["best_val_loss" if run.data.tags["workload"] == "quadratic_deep" else "best_val_acc"]
        assert f"{score:.4f}" in done.stdout and f"{score:.4f}" in summary


def test_tune_studies_every_optimizer_on_every_workload_each_by_its_own_target(tracking, monkeypatch, tmp_path):
    """tune workloads=...: one study per optimizer and workload, each ranked in its workload's direction (the
    quadratic's val_loss down, the spirals' val_acc up), trial 0 the default, every run FINISHED or, diverged,
    FAILED; Muon is left out where there is no hidden matrix, with a note."""
    monkeypatch.chdir(REPO)
    experiment = new_experiment()
    done = cli("tune", "--workloads", "quadratic_deep,examples.spirals:workload", "--optimizers", "sgd,muon",
               "--trials", "3", "--seeds", "2", "--steps", "20", "--eval_every", "10", "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    assert "muon is left out on quadratic_deep" in done.stdout
    runs = runs_of(tracking, experiment)
    trials = [run for run in runs if run.data.tags.get("role") == "trial"]
    seeds = [run for run in runs if run.data.tags.get("role") == "seed"]
    pairs = [("quadratic_deep", "sgd"), ("spirals", "muon"), ("spirals", "sgd")]
    for role, runs_in, count in (("trial", trials, 3), ("seed", seeds, 2)):
        found = sorted((r.data.tags["workload"], r.data.tags["optimizer"]) for r in runs_in)
        assert found == sorted(pairs * count), (role, found)
    assert all(r.info.status == "FINISHED" or r.data.tags.get("diverged") == "true" for r in trials)
    assert all(r.info.status == "FINISHED" and r.data.metrics["steps"] == 20 for r in seeds)
    parent = next(run for run in runs if run.data.tags.get("task") == "tune")
    children = {r.data.tags["optimizer"] + "-" + r.data.tags["workload"]: r.data.metrics for r in runs
                if r.data.tags.get("role") == "optimizer"}
    assert set(children) == {f"{o}-{w}" for w, o in pairs}
    assert children["sgd-quadratic_deep"]["best_trial_score"] <= children["sgd-quadratic_deep"]["default_score"]
    assert children["sgd-spirals"]["best_trial_score"] >= children["sgd-spirals"]["default_score"]
    verdict = json.loads(Path(tracking.download_artifacts(parent.info.run_id, "verdict.json", str(tmp_path)))
                         .read_text())
    assert {w: (v["score_metric"], v["direction"]) for w, v in verdict["workloads"].items()} == \
        {"quadratic_deep": ("val_loss", "min"), "spirals": ("val_acc", "max")}
    for seed in seeds:  # a seed run's score is its last val metric, as the study was told
        metric = "val_loss" if seed.data.tags["workload"] == "quadratic_deep" else "val_acc"
        assert metric_history(tracking, seed.info.run_id, metric)[0] == [10, 20]


@pytest.mark.parametrize("params,message", [
    (("--workloads", "nope"), "unknown 'nope'"),
    (("--workloads", "suite", "--models", "tiny_cnn"), "models: expected empty with workloads="),
    (("--workloads", "quadratic_deep", "--pruner", "hyperband"), "with workloads= (hyperband"),
    (("--workloads", "quadratic_deep", "--epochs", "x"), "epochs"),
])
def test_a_bad_tune_of_workloads_is_one_line_and_exit_2(params, message, tracking):
    experiment = new_experiment()
    done = cli("tune", *params, "--experiment", experiment)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert tracking.get_experiment_by_name(experiment) is None or not runs_of(tracking, experiment)


@pytest.mark.slow  # 12 training runs: about 8 s
def test_a_tune_over_workloads_logs_profile_score_as_recomputed_from_the_stored_times_to_target(tracking, monkeypatch):
    """AlgoPerf's score: per optimizer and workload the median time_to_target of its seed runs (a miss is
    infinite), ratios to the best, the area under rho on [1, 4]; recomputed here from the store alone."""
    import math
    import statistics

    monkeypatch.chdir(REPO)
    experiment = new_experiment()
    done = cli("tune", "--workloads", "easy_workloads:narrow,easy_workloads:wide", "--optimizers", "adam,sgd",
               "--trials", "1", "--seeds", "2", "--steps", "80", "--eval_every", "20", "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    runs = runs_of(tracking, experiment)
    seeds = [r for r in runs if r.data.tags.get("role") == "seed"]
    medians: dict[str, dict[str, float]] = {}
    for optimizer in ("adam", "sgd"):
        for workload in ("spirals_narrow", "spirals_wide"):
            mine = [r for r in seeds if r.data.tags["optimizer"] == optimizer and r.data.tags["workload"] == workload]
            assert len(mine) == 2
            medians.setdefault(optimizer, {})[workload] = statistics.median(
                r.data.metrics.get("time_to_target", math.inf) for r in mine)
    assert any(math.isfinite(t) for row in medians.values() for t in row.values())  # something to score
    best = {w: min(medians[o][w] for o in medians) for w in ("spirals_narrow", "spirals_wide")}
    expected = {o: sum(4.0 - max(medians[o][w] / best[w], 1.0) for w in best
                       if math.isfinite(best[w]) and medians[o][w] / best[w] <= 4.0) / (len(best) * 3.0)
                for o in medians}
    children = [r for r in runs if r.data.tags.get("role") == "optimizer"]
    assert len(children) == 4
    for child in children:
        assert child.data.metrics["profile_score"] == pytest.approx(expected[child.data.tags["optimizer"]], abs=1e-12)
    parent = next(r for r in runs if r.data.tags.get("task") == "tune")
    assert {"plots/profile_time.png", "plots/budget_spirals_narrow.png", "plots/budget_spirals_wide.png"} <= \
        {a.path for a in tracking.list_artifacts(parent.info.run_id, "plots")}


@pytest.mark.slow  # three cifar runs of 2,048 real images
@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")
def test_a_tune_of_a_cifar_workload_scores_each_trial_by_its_runs_final_val_acc(tracking, tmp_path):
    experiment = new_experiment()
    done = cli("tune", "--workloads", "cifar10_tiny_cnn", "--optimizers", "sgd", "--trials", "2", "--seeds", "1",
               "--data_dir", str(SHARED_SUBSET), "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    runs = runs_of(tracking, experiment)
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" and r.data.params["model"] == "tiny_cnn"
                                    and r.data.params["train_limit"] == "2048" for r in trials)
    finals = [metric_history(tracking, r.info.run_id, "val_acc")[1][-1] for r in trials]
    (child,) = [r for r in runs if r.data.tags.get("role") == "optimizer"]
    assert child.data.metrics["best_trial_score"] == pytest.approx(max(finals), abs=1e-12)

"""`make demo` (`python -m pipeline demo`): its code path on tiny settings against the test store. The sweeps'
module constants are shrunk; everything else (sweeps, summaries, champion, the skip without data) is real."""
import pytest
from conftest import SHARED_SUBSET, new_experiment, runs_of

from pipeline import demo

pytestmark = pytest.mark.slow  # each test trains whole sweeps or bench rows in this process

TOY_OPTIMIZERS = ["adam", "rmsprop"]
CIFAR_OPTIMIZERS = ["momentum", "adam"]


def _tiny(monkeypatch, data_params: dict) -> tuple[str, str, str]:
    """Shrink demo's sweeps to seconds, each in its own fresh experiment; returns (toy experiment, cifar
    experiment, registered model name)."""
    toy, cifar, model_name = new_experiment(), new_experiment(), f"m-{new_experiment()}"
    monkeypatch.setattr(demo, "TOY", {**demo.TOY, "steps": "20", "optimizers": ",".join(TOY_OPTIMIZERS),
                                      "experiment": toy})
    tiny_cifar = {"task": "cifar", "epochs": "1", "train_limit": "64", "val_limit": "32", "model": "tiny_cnn",
                  "optimizers": ",".join(CIFAR_OPTIMIZERS), "system_metrics": "false", "model_name": model_name,
                  "experiment": cifar, **data_params}
    for name in ("CIFAR_CPU", "CIFAR_GPU"):  # whichever this machine picks
        monkeypatch.setattr(demo, name, tiny_cifar)
    monkeypatch.setattr(demo, "TUNE", {**demo.TUNE, "optimizers": ",".join(TOY_OPTIMIZERS), "trials": "2",
                                       "seeds": "1", "steps": "20", "starts": "4", "experiment": new_experiment()})
    return toy, cifar, model_name


def _sweep(client, experiment: str, optimizers: list[str]) -> tuple:
    """The experiment's one parent and its children, all FINISHED, one child per optimizer."""
    runs = runs_of(client, experiment)
    (parent,) = [r for r in runs if r.data.tags.get("task") == "compare"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 1 + len(optimizers)
    assert sorted(c.data.params["optimizer"] for c in children) == sorted(optimizers)
    assert [r.info.status for r in runs] == ["FINISHED"] * len(runs)
    assert set(parent.data.tags["children"].split(",")) == {c.info.run_id for c in children}
    return parent, children


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason="needs the real CIFAR-10 subset")
def test_demo_runs_both_sweeps_crowns_a_champion_and_says_where_to_look(tracking, monkeypatch, capsys,
                                                                         store_uri):
    toy, cifar, model_name = _tiny(monkeypatch, {"download": "false"})
    assert demo.main(data_dir=str(SHARED_SUBSET)) == 0
    out = capsys.readouterr().out

    toy_parent, toy_children = _sweep(tracking, toy, TOY_OPTIMIZERS)
    assert (toy_parent.data.params["task"], toy_parent.data.params["function"]) == ("toy", "rosenbrock")
    assert all(c.data.params["steps"] == "20" for c in toy_children)
    cifar_parent, cifar_children = _sweep(tracking, cifar, CIFAR_OPTIMIZERS)
    assert all((c.data.params["model"], c.data.params["epochs"]) == ("tiny_cnn", "1") for c in cifar_children)
    assert all(0 <= c.data.metrics["val_acc"] <= 1 for c in cifar_children)

    champion_id = tracking.get_model_version_by_alias(model_name, "champion").run_id
    assert champion_id == cifar_parent.data.tags["champion_run_id"]
    best = {c.info.run_id: c.data.metrics["best_val_acc"] for c in cifar_children}
    assert best[champion_id] == max(best.values())  # the best child (any of them, on a tie)

    assert f"# compare toy: {len(TOY_OPTIMIZERS)} optimizers" in out
    assert f"# compare cifar: {len(CIFAR_OPTIMIZERS)} optimizers" in out
    assert "| optimizer | final_loss |" in out and "| optimizer | best_val_acc |" in out
    for child in toy_children + cifar_children:  # a table row per child run
        assert any(line.startswith(f"| {child.data.params['optimizer']} |") and child.info.run_id in line
                   for line in out.splitlines()), child.info.run_id
    assert f"Best model: models:/{model_name}@champion" in out
    assert f"Runs are in {store_uri}. Open the UI: make ui, then http://127.0.0.1:5000 (experiment {toy})" in out
    assert "skipped" not in out
    tune = runs_of(tracking, demo.TUNE["experiment"])
    assert [r.data.tags.get("task") for r in tune].count("tune") == 1 and len(tune) == 1 + 2 * 2 * (1 + 2 + 1)  # parent; per study: child, K trials (the first the default), S seeds
    assert "What the tune shows" in out and "rosenbrock: at its default lr" in out and "ackley: " in out
    for what in ("toy comparison", "CIFAR-10 comparison", "tune"):  # a link to each sweep's own view
        assert f"  the {what}" in out and "viewStateShareKey=" in out, what
    assert [line for line in out.splitlines() if line.startswith(("1/3 ", "2/3 ", "3/3 "))] and \
        out.count("  done in ") == 3  # each part announced, with how long it took
    assert "trial " not in out and "epoch 1/1" not in out  # the sweeps' own per-run lines are kept back
    assert len(out.splitlines()) <= 60


def test_demo_without_data_skips_cifar_in_one_line_and_still_runs_the_toy_sweep(tracking, monkeypatch, capsys,
                                                                                 tmp_path, store_uri):
    empty = tmp_path / "no-cifar-here"
    empty.mkdir()
    toy, cifar, _ = _tiny(monkeypatch, {"download": "false"})  # no download: offline or not, nothing to fetch
    assert demo.main(data_dir=str(empty)) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.out.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and skipped[0].startswith("CIFAR-10 comparison skipped: ")
    assert f"no CIFAR-10 in {empty}" in skipped[0] and "make demo DATA=" in skipped[0]
    assert "Traceback" not in captured.err
    found = tracking.get_experiment_by_name(cifar)
    assert found is None or tracking.search_runs([found.experiment_id]) == []  # data first: no run at all
    _sweep(tracking, toy, TOY_OPTIMIZERS)
    assert f"# compare toy: {len(TOY_OPTIMIZERS)} optimizers" in captured.out
    assert "# compare cifar" not in captured.out and "Best model" not in captured.out
    assert f"Runs are in {store_uri}." in captured.out
    assert list(empty.iterdir()) == []  # nothing was downloaded into it

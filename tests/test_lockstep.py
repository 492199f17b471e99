"""Lockstep sweeps: K optimizers on the very same batches in one process equal K solo runs."""
import numpy as np
import pytest
import torch
from conftest import SHARED_SUBSET, cli, metric_history, new_experiment, runs_of

from pipeline.optim.registry import OptimizerSettings, build_optimizer
from pipeline.training.loop import Member, Precision, fit
from pipeline.workloads.cifar.data import CifarLoader
from pipeline.workloads.cifar.models import build_model

CPU = Precision(torch.device("cpu"))
OPTIMIZERS = ("momentum", "adam", "adadelta")


def _data(count: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 80, (count, 32, 32, 3)) + (labels * 17)[:, None, None, None]
    return images.astype(np.uint8), labels


def _member(name: str) -> Member:
    torch.manual_seed(0)  # the same initial weights for every optimizer, as the cifar entry point does
    model = build_model("tiny_cnn")
    return Member(model, build_optimizer(OptimizerSettings(name), model.parameters()))


def _loaders():
    (tx, ty), (vx, vy) = _data(128, 0), _data(48, 1)
    return CifarLoader(tx, ty, 16, train=True, seed=3), CifarLoader(vx, vy, 16, train=False)


def test_lockstep_equals_solo_runs_exactly_on_cpu():
    histories = {}
    for name in OPTIMIZERS:
        member, (train, val) = _member(name), _loaders()
        (state,) = fit([member], train, val, 3, CPU, 0.5, [lambda *args: None])
        histories[name] = state.history
    members, (train, val) = [_member(name) for name in OPTIMIZERS], _loaders()
    states = fit(members, train, val, 3, CPU, 0.5, [lambda *args: None] * 3)
    for name, state in zip(OPTIMIZERS, states):
        for solo, joint in zip(histories[name], state.history):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                assert joint[key] == solo[key], (name, key)
    assert states[0].history[-1]["val_loss"] != states[1].history[-1]["val_loss"]  # they did differ


def test_a_diverging_member_stops_while_the_others_go_on():
    members, (train, val) = [_member("sgd"), _member("adam")], _loaders()
    members[0].optimizer.param_groups[0]["lr"] = 1e30
    epochs = []
    states = fit(members, train, val, 2, CPU, 0.5,
                 [lambda e, *r: epochs.append(("sgd", e)), lambda e, *r: epochs.append(("adam", e))])
    assert states[0].diverged.startswith("train_loss is nan in epoch 1") and states[0].epoch == 0
    assert states[1].epoch == 2 and not states[1].diverged
    assert epochs == [("adam", 1), ("adam", 2)]


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason="needs the real CIFAR-10 subset")
def test_lockstep_sweep_children_equal_solo_cifar_runs_in_the_store(tracking):
    common = ("--model", "tiny_cnn", "--epochs", "2", "--train_limit", "256", "--val_limit", "64",
              "--data_dir", str(SHARED_SUBSET), "--system_metrics", "false", "--log_model", "false")
    joint, solo = new_experiment(), new_experiment()
    done = cli("compare", "--task", "cifar", "--optimizers", "momentum,adam", "--lockstep", "true",
                   "--experiment", joint, *common)
    assert done.returncode == 0, done.stderr[-3000:]
    children = [r for r in runs_of(tracking, joint) if r.data.tags.get("lockstep") == "true"]
    assert sorted(c.data.params["optimizer"] for c in children) == ["adam", "momentum"]
    for child in children:
        name = child.data.params["optimizer"]
        assert cli("cifar", "--optimizer", name, "--experiment", solo, *common).returncode == 0
        (single,) = [r for r in runs_of(tracking, solo) if r.data.params["optimizer"] == name]
        for key in ("train_loss", "val_loss", "val_acc"):
            steps, values = metric_history(tracking, child.info.run_id, key)
            assert steps == [1, 2]
            np.testing.assert_array_equal(values, metric_history(tracking, single.info.run_id, key)[1], key)

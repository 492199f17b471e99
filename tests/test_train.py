"""Training loops: the notebook's bugs stay fixed, metrics are right and read back once per epoch."""
import ast
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.optim.registry import OptimizerSettings, build_optimizer, set_mode
from pipeline.optim.schedulers import SCHEDULERS, build_scheduler
from pipeline.training.loop import (FitState, Member, Precision, evaluate, fit, native_bf16, recompute_batchnorm,
                                    train_epoch)
from pipeline.workloads.cifar.data import CifarLoader
from pipeline.workloads.cifar.models import build_model

CPU = Precision(torch.device("cpu"))


def _images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    # Class-dependent brightness so a small model can learn something quickly.
    images = rng.integers(0, 60, (count, 32, 32, 3)) + (labels * 19)[:, None, None, None]
    return images.astype(np.uint8), labels


def _loaders(train_n=96, val_n=64, batch=16):
    (tx, ty), (vx, vy) = _images(train_n, 0), _images(val_n, 1)
    return (CifarLoader(tx, ty, batch, train=True, seed=0), CifarLoader(vx, vy, batch, train=False))


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("tiny_cnn")


def _opt(name, model, **settings):
    return build_optimizer(OptimizerSettings(name, **settings), model.parameters())


def _fit(model, opt, train, val, epochs, target_acc, on_epoch, state=None):
    """fit() for one member, as a solo cifar run calls it."""
    return fit([Member(model, opt)], train, val, epochs, CPU, target_acc, [on_epoch], [state] if state else None)[0]


def test_every_training_forward_runs_in_train_mode_even_after_evaluation():
    model, (train, val) = _model(), _loaders()
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    opt = _opt("adam", model)
    for _ in range(2):
        modes.clear()
        train_epoch([Member(model, opt)], train, CPU)
        assert modes and all(modes), "a training batch ran in eval mode"
        modes.clear()
        evaluate(model, val, CPU)
        assert modes and not any(modes), "evaluation ran in train mode"


def test_val_accuracy_is_measured_on_the_val_set_not_the_train_set():
    model, (train, val) = _model(), _loaders()
    opt = _opt("adam", model, lr=0.01)
    (train_metrics,) = train_epoch([Member(model, opt)], train, CPU)
    val_metrics, confusion = evaluate(model, val, CPU)
    model.eval()
    with torch.no_grad():
        images, labels = zip(*val)
        logits = model(torch.cat(images))
    expected = (logits.argmax(1) == torch.cat(labels)).float().mean().item()
    assert val_metrics["val_acc"] == pytest.approx(expected)
    assert int(confusion.sum()) == 64 and confusion.trace().item() / 64 == pytest.approx(expected)
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.cat(labels)).item()
    assert val_metrics["val_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert set(train_metrics) == {"train_loss", "train_acc", "epoch_time", "throughput", "lr", "log10_lr"}
    assert train_metrics["log10_lr"] == pytest.approx(math.log10(train_metrics["lr"]))


def test_evaluation_is_deterministic_so_the_test_set_is_not_augmented():
    model, (_, val) = _model(), _loaders()
    first, _ = evaluate(model, val, CPU)
    second, _ = evaluate(model, val, CPU)
    assert first == {**second, "eval_time": first["eval_time"]}


def test_metrics_are_read_from_the_device_once_per_epoch_not_per_step(monkeypatch):
    model, (train, _) = _model(), _loaders(train_n=160)
    opt = _opt("sgd", model, lr=0.01)
    reads = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or original(self))
    train_epoch([Member(model, opt)], train, CPU)
    assert len(train) == 10 and len(reads) <= 2  # loss and accuracy sums, once each


def test_fit_reports_every_epoch_and_learns():
    model, (train, val) = _model(), _loaders()
    opt = _opt("adam", model, lr=0.01)
    seen = []
    state = _fit(model, opt, train, val, 3, 0.01,
                 lambda epoch, metrics, confusion, st: seen.append((epoch, dict(metrics))))
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert state.epoch == 3 and len(state.history) == 3
    assert state.best_val_acc == max(m["val_acc"] for _, m in seen)
    assert state.time_to_target == pytest.approx(seen[0][1]["epoch_time"])  # 1% is reached in epoch 1
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]


def test_fit_continues_from_a_saved_state():
    model, (train, val) = _model(), _loaders()
    opt = _opt("sgd", model, lr=0.01)
    epochs = []
    _fit(model, opt, train, val, 4, 0.99, lambda e, *rest: epochs.append(e), FitState(epoch=2, train_seconds=5.0))
    assert epochs == [3, 4]


def test_a_huge_learning_rate_ends_training_as_diverged():
    model, (train, val) = _model(), _loaders()
    opt, epochs = _opt("sgd", model, lr=1e12), []
    state = _fit(model, opt, train, val, 2, 0.5, lambda epoch, *rest: epochs.append(epoch))
    assert re.fullmatch(r"train_loss is (nan|inf) in epoch 1", state.diverged) and epochs == [] and state.epoch == 0


def test_the_scheduler_registry_holds_the_documented_schedules():
    assert list(SCHEDULERS) == ["none", "cosine", "onecycle"]
    assert build_scheduler("none", _opt("adam", _model()), total_steps=10) is None


@pytest.mark.parametrize("name,final", [("cosine", 0.0), ("onecycle", None)])
def test_schedulers_step_every_batch_over_the_whole_run(name, final):
    model = _model()
    for optimizer in ("momentum", "adam", "adadelta", "asgd"):
        opt = _opt(optimizer, model, lr=0.1)
        schedule = build_scheduler(name, opt, total_steps=20)
        lrs = []
        for _ in range(20):
            opt.step()
            schedule.step()
            lrs.append(opt.param_groups[0]["lr"])
        assert max(lrs) <= 0.1 + 1e-9 and lrs[-1] < 0.01, optimizer
        if final is not None:
            assert lrs[-1] == pytest.approx(final, abs=1e-9)


def test_no_eval_calls_anywhere_in_the_package():
    package = Path(__file__).resolve().parents[1] / "pipeline"
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), f"{source.name}:{node.lineno} calls {node.func.id}"


def test_bf16_autocasts_training_where_native_and_evaluation_stays_fp32():
    bf16 = Precision(torch.device("cpu"), bf16=True)
    assert bf16.autocast_bf16 == native_bf16(torch.device("cpu")) and not CPU.autocast_bf16
    layer = torch.nn.Linear(4, 4)
    with bf16.autocast():
        out = layer(torch.ones(2, 4))
    assert out.dtype == (torch.bfloat16 if bf16.autocast_bf16 else torch.float32)
    # Validation metrics describe the fp32 model that is logged and that predict runs: the same either way.
    model, (train, val) = _model(), _loaders()
    train_epoch([Member(model, _opt("adam", model))], train, bf16)
    (plain, plain_confusion), (mixed, mixed_confusion) = evaluate(model, val, CPU), evaluate(model, val, bf16)
    assert plain["val_loss"] == mixed["val_loss"] and torch.equal(plain_confusion, mixed_confusion)


def test_batchnorm_statistics_are_measured_afresh_at_the_current_weights():
    model = _model()
    norm = model[0][1]
    norm.running_mean.fill_(5.0)  # stale: gathered at other weights
    sample = _loaders()[0].sample(48)
    weights = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        features = [model[0][0](images) for images, _ in sample]
    recompute_batchnorm(model, sample, CPU)
    assert len(features) == 3  # 48 images in batches of 16, never augmented
    torch.testing.assert_close(norm.running_mean, torch.cat(features).mean((0, 2, 3)))
    torch.testing.assert_close(norm.running_var, torch.stack([f.var((0, 2, 3)) for f in features]).mean(0))
    assert norm.momentum == 0.1 and all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_a_schedule_free_member_is_evaluated_at_its_averaged_weights_with_fresh_batchnorm_statistics():
    model = _model()
    train, val = _loaders()
    opt = _opt("sfadamw", model, lr=0.01)
    logged = []
    fit([Member(model, opt)], train, val, 2, CPU, 1.0, [lambda epoch, metrics, *_: logged.append(metrics)],
        bn_batches=train.sample(48))
    assert not opt.param_groups[0]["train_mode"]  # ended in eval mode: the averaged weights x are in the model
    again, _ = evaluate(model, val, CPU)
    assert again["val_loss"] == logged[-1]["val_loss"]  # what was evaluated (and logged, and checkpointed)
    norm = model[0][1]
    measured = norm.running_mean.clone()
    recompute_batchnorm(model, train.sample(48), CPU)
    torch.testing.assert_close(norm.running_mean, measured, rtol=0, atol=0)  # measured at x, not y
    x = [p.detach().clone() for p in model.parameters()]
    set_mode(opt, training=True)
    assert any(not torch.equal(a, b) for a, b in zip(x, model.parameters()))  # y differs from x

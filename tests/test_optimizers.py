"""The optimizer registry: every name builds, learns, keeps its defining settings; bad names fail clearly."""
import dataclasses
import io

import pytest
import torch

from pipeline.errors import UsageError
from pipeline.optimizers import OPTIMIZERS, OptimizerSettings, build_optimizer, fast_kwargs, get_spec, optimizer_names


def build(name, params, fast=False, **settings):
    return build_optimizer(OptimizerSettings(name, **settings), params, fast=fast)

ISSUE_NAMES = ["sgd", "momentum", "nesterov", "adam", "adamw", "adamax", "adagrad", "adadelta", "asgd",
               "rmsprop", "nadam", "radam"]


def test_registry_holds_exactly_the_promised_names():
    assert optimizer_names() == ISSUE_NAMES


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_every_optimizer_reduces_a_least_squares_loss(name):
    gen = torch.Generator().manual_seed(0)
    inputs, target_w = torch.randn(64, 5, generator=gen), torch.randn(5, 1, generator=gen)
    targets = inputs @ target_w
    weight = torch.nn.Parameter(torch.zeros(5, 1))
    opt = build(name, [weight])
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = ((inputs @ weight - targets) ** 2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert ((inputs @ weight - targets) ** 2).mean().item() < 0.99 * first


# torch's own defaults, written out: an unset lr must mean these, whatever the registry's code does.
DEFAULT_LR = {"sgd": 0.001, "momentum": 0.001, "nesterov": 0.001, "adam": 0.001, "adamw": 0.001, "adamax": 0.002,
              "adagrad": 0.01, "adadelta": 1.0, "asgd": 0.01, "rmsprop": 0.01, "nadam": 0.002, "radam": 0.001}


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_unset_lr_means_the_optimizers_own_default(name):
    opt = build(name, [torch.nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["lr"] == DEFAULT_LR[name] == get_spec(name).default_lr


def test_variants_keep_their_defining_settings():
    param = [torch.nn.Parameter(torch.zeros(1))]
    plain = build("sgd", param).param_groups[0]
    heavy = build("momentum", param).param_groups[0]
    nest = build("nesterov", param, lr=0.1, momentum=0.8).param_groups[0]
    assert (plain["momentum"], plain["nesterov"]) == (0, False)
    assert (heavy["momentum"], heavy["nesterov"]) == (0.9, False)
    assert (nest["momentum"], nest["nesterov"], nest["lr"]) == (0.8, True, 0.1)


def test_overrides_reach_the_torch_optimizer():
    group = build("adamw", [torch.nn.Parameter(torch.zeros(1))], lr=0.03, weight_decay=0.5).param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.03, 0.5)


def test_unknown_name_lists_every_valid_name():
    with pytest.raises(UsageError) as caught:
        get_spec("sgdd")
    assert str(caught.value) == f"unknown optimizer 'sgdd'; choose one of: {', '.join(ISSUE_NAMES)}"


def test_code_in_the_name_is_never_evaluated():
    with pytest.raises(UsageError, match="unknown optimizer"):
        OptimizerSettings("__import__('os').system('touch /tmp/pwned')")


def test_refuses_hyper_parameters_the_optimizer_does_not_take():
    with pytest.raises(UsageError, match="optimizer 'adam' does not take momentum; it takes: lr, weight_decay"):
        OptimizerSettings("adam", momentum=0.9)


@pytest.mark.parametrize("setting,message", [({"lr": 0.0}, "lr: expected a number > 0"),
                                             ({"momentum": 1.0}, "momentum: expected a number in [0, 1)"),
                                             ({"weight_decay": -1e-3}, "weight_decay: expected a number >= 0")])
def test_refuses_out_of_range_settings(setting, message):
    with pytest.raises(UsageError) as caught:
        OptimizerSettings("sgd", **setting)
    assert str(caught.value).startswith(message)


def test_settings_resolve_once_to_what_is_logged_and_built():
    settings = OptimizerSettings("nesterov", lr=0.05)
    assert settings.kwargs == {"lr": 0.05, "momentum": 0.9, "nesterov": True}
    group = build_optimizer(settings, [torch.nn.Parameter(torch.zeros(1))]).param_groups[0]
    assert {key: group[key] for key in settings.kwargs} == settings.kwargs


def test_specs_are_frozen():
    with pytest.raises(TypeError, match="does not support item assignment"):
        OPTIMIZERS["momentum"].fixed["momentum"] = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        OPTIMIZERS["adam"].cls = torch.optim.SGD


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_fast_kernels_compute_the_same_steps(name):
    """fused/foreach (used on CUDA) must be the same maths as the default loop; checked here on CPU."""
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(4, 3))
        opt = build(name, [weight], fast=fast, lr=0.01)
        for _ in range(5):
            opt.zero_grad()
            (weight ** 2).sum().backward()
            opt.step()
        results.append(weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert fast_kwargs(get_spec(name)) in ({"fused": True}, {"foreach": True})


def _steps(opt, weight, count):
    for _ in range(count):
        opt.zero_grad()
        ((weight - 1.0) ** 2).sum().backward()
        opt.step()


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_state_survives_a_save_and_load_bit_for_bit(name):
    """5 steps, save optimizer and weights, load them into fresh objects, 5 more: equal to 10 straight steps."""
    torch.manual_seed(0)
    start = torch.randn(4, 3)
    straight = torch.nn.Parameter(start.clone())
    _steps(build(name, [straight]), straight, 10)
    first = torch.nn.Parameter(start.clone())
    opt = build(name, [first])
    _steps(opt, first, 5)
    buffer = io.BytesIO()
    torch.save({"weight": first.detach(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = torch.nn.Parameter(saved["weight"].clone())
    again = build(name, [resumed])
    again.load_state_dict(saved["optimizer"])
    _steps(again, resumed, 5)
    torch.testing.assert_close(resumed.detach(), straight.detach(), rtol=0, atol=0)
    assert not torch.equal(resumed.detach(), start)

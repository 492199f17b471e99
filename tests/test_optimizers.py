"""The optimizer registry: every name builds, learns, keeps its defining settings; bad names fail clearly."""
import inspect

import pytest
import torch

from pipeline.errors import UsageError
from pipeline.optimizers import (OPTIMIZERS, build_optimizer, fast_kwargs, get_spec, optimizer_names,
                                 resolve_hparams)

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
    opt = build_optimizer(name, [weight])
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = ((inputs @ weight - targets) ** 2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert ((inputs @ weight - targets) ** 2).mean().item() < 0.99 * first


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_unset_lr_means_the_optimizers_own_default(name):
    spec = get_spec(name)
    opt = build_optimizer(name, [torch.nn.Parameter(torch.zeros(1))])
    torch_default = inspect.signature(spec.cls).parameters["lr"].default
    assert opt.param_groups[0]["lr"] == pytest.approx(torch_default)


def test_variants_keep_their_defining_settings():
    param = [torch.nn.Parameter(torch.zeros(1))]
    plain = build_optimizer("sgd", param).param_groups[0]
    heavy = build_optimizer("momentum", param).param_groups[0]
    nest = build_optimizer("nesterov", param, lr=0.1, momentum=0.8).param_groups[0]
    assert (plain["momentum"], plain["nesterov"]) == (0, False)
    assert (heavy["momentum"], heavy["nesterov"]) == (0.9, False)
    assert (nest["momentum"], nest["nesterov"], nest["lr"]) == (0.8, True, 0.1)


def test_overrides_reach_the_torch_optimizer():
    group = build_optimizer("adamw", [torch.nn.Parameter(torch.zeros(1))], lr=0.03, weight_decay=0.5).param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.03, 0.5)


def test_unknown_name_lists_every_valid_name():
    with pytest.raises(UsageError) as caught:
        get_spec("sgdd")
    assert str(caught.value) == f"unknown optimizer 'sgdd'; choose one of: {', '.join(ISSUE_NAMES)}"


def test_code_in_the_name_is_never_evaluated():
    with pytest.raises(UsageError, match="unknown optimizer"):
        build_optimizer("__import__('os').system('touch /tmp/pwned')", [torch.nn.Parameter(torch.zeros(1))])


def test_refuses_hyper_parameters_the_optimizer_does_not_take():
    with pytest.raises(UsageError, match="optimizer 'adam' does not take momentum; it takes: lr, weight_decay"):
        resolve_hparams("adam", momentum=0.9)


def test_refuses_non_positive_lr():
    with pytest.raises(UsageError, match="lr: expected a number > 0"):
        resolve_hparams("sgd", lr=0.0)


def test_specs_are_frozen():
    with pytest.raises(Exception):
        OPTIMIZERS["momentum"].fixed["momentum"] = 0.5
    with pytest.raises(Exception):
        OPTIMIZERS["adam"].cls = torch.optim.SGD


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_fast_kernels_compute_the_same_steps(name):
    """fused/foreach (used on CUDA) must be the same maths as the default loop; checked here on CPU."""
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(4, 3))
        opt = build_optimizer(name, [weight], fast=fast, lr=0.01)
        for _ in range(5):
            opt.zero_grad()
            (weight ** 2).sum().backward()
            opt.step()
        results.append(weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert fast_kwargs(name) in ({"fused": True}, {"foreach": True})

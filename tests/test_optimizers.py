"""The optimizer registry: every name builds, learns on real images, keeps its defining settings and its state
across a save and load; library classes by name; bad names fail clearly."""
import dataclasses
import io

import pytest
import torch
from conftest import SHARED_SUBSET

from pipeline.core.errors import UsageError
from pipeline.optim.registry import (MODERN_OPTIMIZERS, OPTIMIZERS, OptimizerSettings, build_optimizer, check_runs,
                                     fast_kwargs, get_spec, named_set, optimizer_names, set_mode)
from pipeline.workloads.cifar.models import build_model


def build(name, params, fast=False, **settings):
    return build_optimizer(OptimizerSettings(name, **settings), params, fast=fast)


ISSUE_NAMES = ["sgd", "momentum", "nesterov", "adam", "adamw", "adamax", "adagrad", "adadelta", "asgd",
               "rmsprop", "nadam", "radam"]
NEW_NAMES = ["nadamw", "adafactor", "muon", "lion", "sfadamw", "soap", "shampoo"]  # issue 15
ALL_NAMES = ISSUE_NAMES + NEW_NAMES


def test_registry_holds_exactly_the_promised_names():
    assert optimizer_names() == ALL_NAMES


# The libraries' own defaults, written out: an unset lr must mean these, whatever the registry's code does.
DEFAULT_LR = {"sgd": 0.001, "momentum": 0.001, "nesterov": 0.001, "adam": 0.001, "adamw": 0.001, "adamax": 0.002,
              "adagrad": 0.01, "adadelta": 1.0, "asgd": 0.01, "rmsprop": 0.01, "nadam": 0.002, "radam": 0.001,
              "nadamw": 0.002, "adafactor": 0.01, "muon": 0.001, "lion": 0.0001, "sfadamw": 0.0025, "soap": 0.003,
              "shampoo": 0.001}
SOURCES = {"nadamw": torch.optim.NAdam, "adafactor": torch.optim.Adafactor, "muon": torch.optim.Muon,
           "lion": "pytorch_optimizer.optimizer.lion.Lion", "sfadamw": "schedulefree.adamw_schedulefree."
           "AdamWScheduleFree", "soap": "pytorch_optimizer.optimizer.soap.SOAP",
           "shampoo": "pytorch_optimizer.optimizer.shampoo.Shampoo"}


def _tiny_cnn():
    torch.manual_seed(0)
    return build_model("tiny_cnn")


@pytest.fixture(scope="module")
def images():
    """128 real training images, normalised, and their labels."""
    from pipeline.workloads.cifar.data import CifarLoader, load_cifar10

    arrays = load_cifar10(SHARED_SUBSET, download=False, train_limit=128, val_limit=2)
    return next(iter(CifarLoader(arrays.train_x, arrays.train_y, 128, train=False)))


def _loss(model, images):
    inputs, labels = images
    return torch.nn.functional.cross_entropy(model(inputs), labels)


def _steps(model, opt, images, count):
    set_mode(opt, training=True)
    for _ in range(count):
        opt.zero_grad()
        _loss(model, images).backward()
        opt.step()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_unset_lr_means_the_optimizers_own_default(name):
    opt = build(name, _tiny_cnn().parameters())
    assert {group["lr"] for group in opt.param_groups} == {DEFAULT_LR[name]} == {get_spec(name).default_lr}


@pytest.mark.parametrize("name", NEW_NAMES)
def test_new_entries_come_from_the_promised_libraries_and_name_their_paper(name):
    spec, source = get_spec(name), SOURCES[name]
    built = build(name, _tiny_cnn().parameters())
    if isinstance(source, str):
        assert f"{type(built).__module__}.{type(built).__name__}" == source
    elif name == "muon":
        assert isinstance(built.parts["muon"], torch.optim.Muon) and isinstance(built.parts["adamw"], torch.optim.AdamW)
    else:
        assert type(built) is source
    assert spec.paper and spec.source


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")
@pytest.mark.parametrize("name", ALL_NAMES)
def test_a_few_steps_lower_the_loss_of_tiny_cnn_on_real_images(name, images):
    model = _tiny_cnn()
    lr = {"adadelta": 1.0, "adagrad": 0.05, "asgd": 0.05, "sgd": 0.05, "momentum": 0.05, "nesterov": 0.05,
          "lion": 0.001}.get(name, 0.01)
    opt = build(name, model.parameters(), lr=lr)
    before = _loss(model, images).item()
    _steps(model, opt, images, 8)
    set_mode(opt, training=False)  # schedule-free: the averaged weights are the ones to judge
    with torch.no_grad():
        model.train()  # batch statistics: the running ones would measure the averaging, not the optimizer
        assert _loss(model, images).item() < before


@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason=f"needs the real subset in {SHARED_SUBSET}")
@pytest.mark.parametrize("name", ALL_NAMES)
def test_state_survives_a_save_and_load_bit_for_bit(name, images):
    """3 steps, save weights and optimizer (as checkpoints do: weights_only load), load them into fresh objects,
    3 more: bit-equal to 6 straight steps (with the same switch to evaluation weights after 3, as every epoch's
    evaluation makes: a no-op but for schedule-free optimizers)."""
    straight = _tiny_cnn()
    opt = build(name, straight.parameters())
    _steps(straight, opt, images, 3)
    set_mode(opt, training=False)
    _steps(straight, opt, images, 3)
    first = _tiny_cnn()
    opt = build(name, first.parameters())
    _steps(first, opt, images, 3)
    set_mode(opt, training=False)  # schedule-free optimizers are saved in eval mode, as its authors say
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _tiny_cnn()
    resumed.load_state_dict(saved["model"])
    again = build(name, resumed.parameters())
    again.load_state_dict(saved["optimizer"])
    _steps(resumed, again, images, 3)
    for (key, want), got in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(got, want), key


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if fast_kwargs(get_spec(n))])
def test_fast_kernels_compute_the_same_steps(name):
    """fused/foreach (used on CUDA) must be the same maths as the default loop; checked here on CPU, on tiny_cnn's
    parameters under a smooth loss (a network's loss would amplify the kernels' last-bit differences through
    Adam-like updates of near-zero gradients, which is no difference in maths)."""
    results = []
    for fast in (False, True):
        model = _tiny_cnn()
        opt = build(name, model.parameters(), fast=fast, lr=0.01)
        set_mode(opt, training=True)
        for _ in range(5):
            opt.zero_grad()
            sum(((p - 1.0) ** 2).sum() for p in model.parameters()).backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_which_new_entries_offer_fast_kernels():
    offered = {name: fast_kwargs(get_spec(name)) for name in NEW_NAMES}
    assert offered == {"nadamw": {"foreach": True}, "adafactor": {"foreach": True}, "muon": {"fused": True},
                       "lion": {"foreach": True}, "sfadamw": {"foreach": True}, "soap": {}, "shampoo": {}}


def test_variants_keep_their_defining_settings():
    param = [torch.nn.Parameter(torch.zeros(1))]
    plain = build("sgd", param).param_groups[0]
    heavy = build("momentum", param).param_groups[0]
    nest = build("nesterov", param, lr=0.1, momentum=0.8).param_groups[0]
    nadamw = build("nadamw", param).param_groups[0]
    assert (plain["momentum"], plain["nesterov"]) == (0, False)
    assert (heavy["momentum"], heavy["nesterov"]) == (0.9, False)
    assert (nest["momentum"], nest["nesterov"], nest["lr"]) == (0.8, True, 0.1)
    assert (nadamw["decoupled_weight_decay"], nadamw["weight_decay"]) == (True, 0.01)


def test_overrides_reach_the_torch_optimizer():
    group = build("adamw", [torch.nn.Parameter(torch.zeros(1))], lr=0.03, weight_decay=0.5).param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.03, 0.5)


def test_unknown_name_lists_every_valid_name_and_the_library_forms():
    with pytest.raises(UsageError) as caught:
        get_spec("sgdd")
    assert str(caught.value) == (f"unknown optimizer 'sgdd'; choose one of: {', '.join(ALL_NAMES)} "
                                 "(or torch:<Class>, pytorch_optimizer:<name>, schedulefree:<Class>)")


def test_code_in_the_name_is_never_evaluated():
    with pytest.raises(UsageError, match="unknown optimizer"):
        OptimizerSettings("__import__('os').system('touch /tmp/pwned')")
    with pytest.raises(UsageError, match="unknown library"):
        OptimizerSettings("__import__('os'):system")


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
        OPTIMIZERS["adam"].path = "torch.optim.SGD"


def test_named_sets_and_what_toy_leaves_out():
    assert named_set("modern", "cifar") == list(MODERN_OPTIMIZERS)
    assert named_set("modern", "toy") == [n for n in MODERN_OPTIMIZERS if n != "muon"]
    assert named_set("default", "toy") == [n for n in ALL_NAMES if n != "muon"]
    assert named_set("default", "cifar") == named_set("notebook", "toy") == \
        ["momentum", "adam", "adadelta", "adagrad", "adamw", "adamax", "asgd", "nesterov"]
    assert named_set("adam", "toy") is None
    with pytest.raises(UsageError, match="optimizer 'muon' cannot run toy: it updates weight matrices"):
        check_runs(OptimizerSettings("muon"), "toy")


# ---- any other optimizer by name -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,cls_name,default_lr", [("torch:Rprop", "Rprop", 0.01), ("torch:rprop", "Rprop", 0.01),
                                                      ("pytorch_optimizer:lamb", "Lamb", 0.001),
                                                      ("pytorch-optimizer:Lamb", "Lamb", 0.001),
                                                      ("schedulefree:SGDScheduleFree", "SGDScheduleFree", 1.0)])
def test_a_library_class_by_name_builds_with_its_own_defaults(text, cls_name, default_lr, images):
    spec = get_spec(text)
    assert spec.name.endswith(f":{cls_name}") and spec.default_lr == default_lr
    model = _tiny_cnn()
    opt = build(text, model.parameters())
    assert type(opt).__name__ == cls_name and opt.param_groups[0]["lr"] == default_lr
    assert spec.schedule_free == (cls_name == "SGDScheduleFree")
    _steps(model, opt, images, 2)
    assert "lr" in spec.tunable and not spec.elementwise
    check_runs(OptimizerSettings(text), "toy")
    check_runs(OptimizerSettings(text), "cifar")


@pytest.mark.parametrize("text,message", [
    ("torch:Rpropp", "optimizer 'torch:Rpropp': torch has no optimizer 'Rpropp'; closest: torch:Rprop, torch:RMSprop"),
    ("pytorch_optimizer:lambb", "pytorch_optimizer has no optimizer 'lambb'; closest: pytorch_optimizer:Lamb"),
    ("keras:Adam", "optimizer 'keras:Adam': unknown library 'keras'; use one of torch, pytorch_optimizer, schedulefree"),
    ("torch:LBFGS", "cannot be used here: it needs a closure"),
    ("torch:Optimizer", "torch has no optimizer 'Optimizer'"),
    ("torch:Muon", "it takes 2-D parameters only; optimizer=muon gives it a network's hidden matrices"),
    ("schedulefree:AdamWScheduleFreeClosure", "schedulefree has no optimizer 'AdamWScheduleFreeClosure'"),
])
def test_a_bad_library_name_is_one_line_with_close_matches(text, message):
    with pytest.raises(UsageError) as caught:
        get_spec(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_library_class_that_cannot_step_here_is_refused_before_any_run():
    with pytest.raises(UsageError, match=r"optimizer 'pytorch_optimizer:adahessian' cannot run cifar here \("):
        check_runs(OptimizerSettings("pytorch_optimizer:adahessian"), "cifar")


# ---- through the command line (in-process) ------------------------------------------------------------------

def test_the_listing_names_each_entry_with_its_source_and_default_lr():
    from conftest import cli

    listed = cli("optimizers")
    assert listed.returncode == 0
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    for name in ALL_NAMES:
        spec = get_spec(name)
        assert f"lr {DEFAULT_LR[name]:<7g}" in lines[name] and spec.source in lines[name], name
        assert spec.paper in lines[name], name
    assert "torch.optim.Muon + torch.optim.AdamW" in lines["muon"] and lines["muon"].endswith("cifar only")
    assert "schedulefree.AdamWScheduleFree" in lines["sfadamw"] and "pytorch_optimizer.SOAP" in lines["soap"]
    assert "default, notebook, modern, all" in listed.stdout and "torch:<Class>" in listed.stdout


@pytest.mark.parametrize("argv,message", [
    (("toy", "--optimizer", "muon"), "error: optimizer 'muon' cannot run toy: it updates weight matrices"),
    (("compare", "--task", "toy", "--optimizers", "adam,muon"), "error: optimizer 'muon' cannot run toy"),
    (("cifar", "--optimizer", "sfadamw", "--scheduler", "cosine"), "error: scheduler: expected none for sfadamw"),
    (("toy", "--optimizer", "torch:Rpropp"), "error: optimizer 'torch:Rpropp': torch has no optimizer 'Rpropp'; "
                                             "closest: torch:Rprop"),
    (("compare", "--optimizers", "adam,modrn"), "error: optimizers: unknown optimizer 'modrn'; choose one of:"),
    (("toy", "--optimizer", "pytorch_optimizer:a2grad"), "error: optimizer 'pytorch_optimizer:a2grad' has no "
                                                         "default lr; set lr"),
    (("toy", "--optimizer", "pytorch_optimizer:alig"), "error: optimizer 'pytorch_optimizer:alig' takes no lr"),
])
def test_refusals_are_one_line_and_exit_2(tracking, argv, message):
    from conftest import cli

    done = cli(*argv)
    assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""

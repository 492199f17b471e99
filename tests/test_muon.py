"""Muon as its authors use it: hidden weight matrices (conv kernels flattened) to torch.optim.Muon, the first layer,
the classifier, norms and biases to AdamW; one optimizer object for the loop, schedules and checkpoints."""
import pytest
import torch

from pipeline.optim.muon import MuonAdamW, split_params
from pipeline.optim.registry import OptimizerSettings, build_optimizer
from pipeline.optim.schedulers import build_scheduler
from pipeline.workloads.cifar.models import build_model


def _model(name="tiny_cnn"):
    torch.manual_seed(0)
    return build_model(name)


def test_the_split_gives_muon_the_hidden_matrices_and_adamw_the_rest():
    model = _model("resnet18")
    hidden, rest = split_params(model.parameters())
    names = {id(p): name for name, p in model.named_parameters()}
    kernels = [name for name, p in model.named_parameters() if p.ndim == 4]
    assert [names[id(p)] for p in hidden] == [k for k in kernels if k != "stem.0.weight"]  # 16 block + 3 shortcut
    assert len(hidden) == 19
    assert {names[id(p)] for p in rest if p.ndim >= 2} == {"stem.0.weight", "fc.weight"}
    assert all(p.ndim == 1 for p in rest if names[id(p)] not in ("stem.0.weight", "fc.weight"))
    tiny_hidden, _ = split_params(_model().parameters())
    assert [p.shape for p in tiny_hidden] == [torch.Size([32, 16, 3, 3])]


def test_the_optimizer_counts_what_went_where():
    model = _model("resnet18")
    opt = build_optimizer(OptimizerSettings("muon"), model.parameters())
    counts = opt.counts()
    total = sum(p.numel() for p in model.parameters())
    assert counts["muon_tensors"] == 19 and counts["adamw_tensors"] == len(list(model.parameters())) - 19
    assert counts["muon_numel"] + counts["adamw_numel"] == total and counts["muon_numel"] > 0.99 * total


def _step_once(opt, model, grads):
    for param, grad in zip(model.parameters(), grads):
        param.grad = grad.clone()
    opt.step()


def test_a_conv_kernel_moves_as_torch_muon_moves_its_flattened_matrix():
    model = _model()
    grads = [torch.randn_like(p) for p in model.parameters()]
    opt = MuonAdamW(model.parameters(), lr=0.02, momentum=0.9, weight_decay=0.1)
    (kernel,), _ = split_params(model.parameters())
    reference = torch.nn.Parameter(kernel.detach().clone().view(32, -1))
    ref_opt = torch.optim.Muon([reference], lr=0.02, momentum=0.9, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    kernel_grad = grads[[p is kernel for p in model.parameters()].index(True)]
    for _ in range(3):
        _step_once(opt, model, grads)
        reference.grad = kernel_grad.view(32, -1).clone()
        ref_opt.step()
    assert torch.equal(kernel.detach().view(32, -1), reference.detach())
    assert not torch.equal(reference.detach(), _model().state_dict()["2.0.weight"].view(32, -1))


def test_a_channels_last_kernel_gets_the_same_update_without_a_copy():
    plain, channels_last = _model(), _model().to(memory_format=torch.channels_last)
    grads = [torch.randn_like(p) for p in plain.parameters()]
    opts = [MuonAdamW(m.parameters(), lr=0.02) for m in (plain, channels_last)]
    (kernel,), _ = split_params(channels_last.parameters())
    assert kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    assert opts[1].matrices[0].data_ptr() == kernel.data_ptr()  # a view: Muon's update lands in the kernel
    for opt, model in zip(opts, (plain, channels_last)):
        _step_once(opt, model, grads)
    for a, b in zip(plain.parameters(), channels_last.parameters()):
        torch.testing.assert_close(a.detach(), b.detach().contiguous(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_a_schedule_sets_the_lr_of_both_parts(schedule):
    model = _model()
    opt = build_optimizer(OptimizerSettings("muon", lr=0.01), model.parameters())
    scheduler = build_scheduler(schedule, opt, total_steps=10)
    for _ in range(5):
        _step_once(opt, model, [torch.randn_like(p) for p in model.parameters()])
        scheduler.step()
    lrs = {name: part.param_groups[0]["lr"] for name, part in opt.parts.items()}
    assert lrs["muon"] == lrs["adamw"] == scheduler.get_last_lr()[0] != 0.01


def test_zero_grad_clears_every_gradient_it_handed_on():
    model = _model()
    opt = MuonAdamW(model.parameters())
    _step_once(opt, model, [torch.randn_like(p) for p in model.parameters()])
    opt.zero_grad()
    assert all(p.grad is None for p in [*model.parameters(), *opt.matrices])


def test_a_network_without_hidden_matrices_is_refused():
    with pytest.raises(ValueError, match="Muon needs hidden weight matrices"):
        MuonAdamW(torch.nn.Linear(3, 2).parameters())

"""The model registry: every name builds and classifies 32x32 images; bad names and weights fail clearly."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights

from pipeline.config.tasks import build_config
from pipeline.core.errors import UsageError
from pipeline.workloads.cifar.models import MODELS, build_model


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_logits_and_gradients_for_cifar_images(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_initial_weights(name: str) -> None:
    # Every optimizer in a comparison must start from the same weights.
    torch.manual_seed(1)
    first = build_model(name).state_dict()
    torch.manual_seed(1)
    second = build_model(name).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_num_classes_sets_the_output_width() -> None:
    assert build_model("tiny_cnn", num_classes=3)(torch.randn(4, 3, 32, 32)).shape == (4, 3)
    assert build_model("resnet18", num_classes=7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_cifar_resnet18_has_its_size_and_cifar_stem() -> None:
    model = build_model("resnet18")
    assert abs(parameter_count(model) - 11_170_000) <= 10_000
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    # Three stride-2 stages take 32x32 down to 4x4 with 512 channels before pooling.
    assert model.stages(model.stem(torch.randn(1, 3, 32, 32))).shape == (1, 512, 4, 4)


def test_notebook_resnet18_is_torchvision_resnet_then_linear_1000_to_10() -> None:
    model = build_model("resnet18_imagenet")
    assert isinstance(model[0], ResNet) and model[0].fc.out_features == 1000
    assert isinstance(model[1], nn.Linear) and (model[1].in_features, model[1].out_features) == (1000, 10)
    assert parameter_count(model) == 11_689_512 + 1000 * 10 + 10


def test_tiny_cnn_is_tiny() -> None:
    assert 1_000 < parameter_count(build_model("tiny_cnn")) < 10_000


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(UsageError, match="model: expected one of resnet18, resnet18_imagenet, tiny_cnn, 3c3d, logreg, got 'vgg'"):
        build_config("cifar", {"model": "vgg"})


@pytest.mark.parametrize("name", ["resnet18", "tiny_cnn"])
def test_pretrained_without_weights_names_the_model_that_has_them(name: str) -> None:
    with pytest.raises(UsageError, match=f"model '{name}' has no pretrained weights; only resnet18_imagenet"):
        build_config("cifar", {"model": name, "pretrained": "true"})


def _weights_reachable() -> bool:
    """Whether the ImageNet weights are cached or downloadable, so the offline error cannot happen."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
        return True
    except OSError:
        return cached.exists()


@pytest.mark.skipif(_weights_reachable(), reason="ImageNet weights are cached or downloadable here")
def test_pretrained_offline_is_one_clean_usage_error() -> None:
    with pytest.raises(UsageError, match="pretrained=false") as err:
        build_model("resnet18_imagenet", pretrained=True)
    assert "\n" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__


def test_the_logged_classifier_normalises_as_training_does_and_answers_probabilities():
    from pipeline.workloads.cifar.data import CIFAR_MEAN, CIFAR_STD, normalize
    from pipeline.workloads.cifar.models import ImageClassifier

    torch.manual_seed(0)
    net = build_model("tiny_cnn", 10).eval()
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        want = torch.softmax(net(normalize(images.permute(0, 3, 1, 2))), dim=1)
        got = ImageClassifier(net, CIFAR_MEAN, CIFAR_STD)(images)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(1), torch.ones(4))

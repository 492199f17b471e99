"""Image classifiers by name: the CIFAR ResNet18, the notebook's torchvision ResNet18, DeepOBS's 3c3d network,
multinomial logistic regression on the pixels, and a tiny CNN for tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pipeline.core.errors import UsageError


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        # No conv bias: the BatchNorm that follows has its own shift.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet18 for 32x32 images: 3x3 stride-1 stem, no max-pool, stages of 2 blocks at widths 64/128/256/512."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        stages, in_channels = [], 64
        # The first stage keeps the 32x32 resolution; each later one halves it: 32 -> 16 -> 8 -> 4.
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(in_channels, width, stride), BasicBlock(width, width, 1)]
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (same size), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
    )


def _tiny_cnn(num_classes: int, pretrained: bool) -> nn.Module:
    """About 5k parameters, for tests and smoke runs only; BatchNorm kept so train/eval modes matter as in resnet18."""
    return nn.Sequential(
        _conv_bn_relu(3, 16), nn.MaxPool2d(2), _conv_bn_relu(16, 32), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def _logreg(num_classes: int, pretrained: bool) -> nn.Module:
    """Multinomial logistic regression on the 3,072 normalised pixels: the convex problem (30,730 parameters)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))


def _three_c_three_d(num_classes: int, pretrained: bool) -> nn.Module:
    """DeepOBS's 3c3d (Schneider et al. 2019): conv 64 5x5 valid, conv 96 3x3 valid, conv 128 3x3 same, each
    with ReLU and a 3x3 max-pool of stride 2, then dense 512, 256 and the classifier (about 895k parameters)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(64, 96, 3), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(), nn.Linear(128 * 3 * 3, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def _cifar_resnet18(num_classes: int, pretrained: bool) -> nn.Module:
    """The CIFAR ResNet18, trained from scratch (about 11.17M parameters)."""
    return CifarResNet18(num_classes)


def _imagenet_resnet18(num_classes: int, pretrained: bool) -> nn.Module:
    """The notebook's model: torchvision's ImageNet ResNet18 (1000 outputs) followed by Linear(1000, classes)."""
    from torchvision.models import ResNet18_Weights, resnet18  # imported here: torchvision costs a second to load

    weights = ResNet18_Weights.IMAGENET1K_V1 if pretrained else None
    try:
        backbone = resnet18(weights=weights)
    except (OSError, RuntimeError) as err:  # offline (URLError is an OSError) or a corrupt cached file
        raise UsageError(
            f"pretrained weights for resnet18_imagenet are unavailable ({err}); put {weights.url.rsplit('/', 1)[-1]} "
            f"in {torch.hub.get_dir()}/checkpoints or set pretrained=false"
        ) from None
    return nn.Sequential(backbone, nn.Linear(1000, num_classes))


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model: build(num_classes, pretrained) and whether pretrained weights exist (the config
    refuses pretrained=true for the others, so builders without weights ignore it)."""

    build: Callable[[int, bool], nn.Module]
    has_pretrained: bool
    summary: str


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(_cifar_resnet18, False, "CIFAR ResNet18 (3x3 stem, no max-pool), 11.17M parameters"),
    "resnet18_imagenet": ModelSpec(
        _imagenet_resnet18, True, "the notebook's torchvision ResNet18 + Linear(1000, classes), 11.69M parameters"
    ),
    "tiny_cnn": ModelSpec(_tiny_cnn, False, "two conv layers, about 5k parameters: tests and smoke runs only"),
    "3c3d": ModelSpec(_three_c_three_d, False, "DeepOBS's 3c3d: three conv and three dense layers, 895k parameters"),
    "logreg": ModelSpec(_logreg, False, "multinomial logistic regression on the pixels (convex), 30,730 parameters"),
}


def build_model(name: str, num_classes: int = 10, pretrained: bool = False) -> nn.Module:
    """Build the named model (validated by the config) with num_classes outputs."""
    return MODELS[name].build(num_classes, pretrained)


class ImageClassifier(nn.Module):
    """What gets logged: images as a user has them, uint8 (N, 32, 32, 3) RGB, in; class probabilities (N, classes)
    out. The normalisation of training lives inside, as buffers, so the model needs nothing from this repository."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return torch.softmax(self.net((x - self.mean) / self.std), dim=1)

"""The notebook's code, re-written as it ran there (its prints removed, its gradient bug fixed): the baselines.

Two loops are re-created: the hand-written gradient descent (one Python loop over points and steps, a central
difference per coordinate) and the CIFAR-10 training loop (PIL transforms in a DataLoader with 2 workers, fp32,
a `.item()` read of loss and accuracy after every step).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from pipeline.workloads.cifar.data import CIFAR_MEAN, CIFAR_STD, IMAGE_SIZE, PAD

Objective = Callable[[float, float], float]
STEP = 1e-6  # finite-difference step, as pipeline.workloads.toy.reference


def notebook_gradient(f: Objective, x: float, y: float, h: float = STEP) -> tuple[float, float]:
    """Central differences along x then y: four calls of f on plain floats, as the notebook did."""
    df_dx = (f(x + h, y) - f(x - h, y)) / (2 * h)  # the notebook wrote `/ 2 * h`; corrected as in workloads/toy/reference.py
    df_dy = (f(x, y + h) - f(x, y - h)) / (2 * h)
    return df_dx, df_dy


def notebook_descent(f: Objective, start: tuple[float, float], lr: float, steps: int) -> list[tuple[float, float]]:
    """Plain gradient descent from one start; returns the path, start included (the notebook printed each step)."""
    x, y = start
    path = [(x, y)]
    for _ in range(steps):
        df_dx, df_dy = notebook_gradient(f, x, y)
        x, y = x - lr * df_dx, y - lr * df_dy
        path.append((x, y))
    return path


def notebook_descent_many(f: Objective, starts: np.ndarray, lr: float, steps: int) -> np.ndarray:
    """The notebook's way to try several starts: one descent after another. Returns (points, steps + 1, 2)."""
    return np.array([notebook_descent(f, (float(x), float(y)), lr, steps) for x, y in starts])


class NotebookCifar(Dataset):
    """A torchvision-CIFAR10-style dataset over uint8 (N, 32, 32, 3) arrays: PIL image -> transform, per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # As torchvision.datasets.CIFAR10.__getitem__: a PIL image from the HWC array, then the transform.
        image = Image.fromarray(self.images[index])
        return self.transform(image), int(self.labels[index])


def notebook_loader(dataset: NotebookCifar, batch_size: int = 32) -> DataLoader:
    """The notebook's DataLoader: batch 32, shuffled, 2 worker processes."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2)


def notebook_train_seconds(model: nn.Module, loader: DataLoader, device: torch.device, warmup: int,
                           timed: int) -> tuple[float, int]:
    """The notebook's training loop: seconds and images for `timed` batches after `warmup` untimed ones.

    Workers start and fill their queues during the warm-up, so the figure is the loop's steady state.
    """
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)  # the notebook's "SGD"
    model.train()
    running_loss, correct, total, began = 0.0, 0, 0, 0.0
    batches = iter(loader)
    for step in range(warmup + timed):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began, total = time.perf_counter(), 0
        inputs, labels = next(batches)
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # a host read every step: the GPU waits for Python each time
        _, predicted = outputs.max(1)
        total += labels.size(0)
        correct += predicted.eq(labels).sum().item()
    seconds = time.perf_counter() - began  # .item() above already waited for the device
    del batches  # shuts the worker processes down
    return seconds, total


def torchvision_train_transform() -> transforms.Compose:
    """The notebook's training transform on PIL images: crop with zero padding 4, flip, to tensor, normalise."""
    return transforms.Compose([
        transforms.RandomCrop(IMAGE_SIZE, padding=PAD),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])


def torchvision_test_transform() -> transforms.Compose:
    """The notebook's test transform on PIL images: to tensor and normalise, no augmentation."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])

"""Images for the training rows: the real CIFAR-10 subset when it is there, else seeded random pixels."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pipeline.workloads.cifar.data import CifarArrays, UnofficialDataWarning, load_cifar10

# The real subset shipped beside the project (4,660 train + 932 test images), or in the checkout's own shared/
# (as it travels to a lent GPU machine). Speed hardly depends on pixel values; real images simply keep the
# measurement on the data our runs see.
_REPO = Path(__file__).resolve().parents[1]
_PLACES = (_REPO.parent / "shared" / "data" / "cifar10-subset", _REPO / "shared" / "data" / "cifar10-subset")
SUBSET = next((place for place in _PLACES if place.is_dir()), _PLACES[0])


def load_arrays() -> CifarArrays:
    """The subset via pipeline.workloads.cifar.data (no download), or CIFAR-shaped random uint8 arrays when it is absent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnofficialDataWarning)  # the subset is known not to be official
            return load_cifar10(SUBSET, download=False)
    except Exception:  # noqa: BLE001 - any problem with the optional folder: fall back to synthetic data
        gen = np.random.default_rng(0)
        train_x = gen.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8)
        test_x = gen.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
        return CifarArrays(train_x, gen.integers(0, 10, 5000), test_x, gen.integers(0, 10, 1000),
                           "synthetic", official=False)


def images(arrays: CifarArrays, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` training images and labels, repeating the set when it holds fewer."""
    reps = -(-count // len(arrays.train_y))  # ceiling division
    x = np.concatenate([arrays.train_x] * reps)[:count]
    y = np.concatenate([arrays.train_y] * reps)[:count]
    return x, y


def describe(arrays: CifarArrays) -> str:
    """Where the images came from, for the notes."""
    if arrays.source == "synthetic":
        return "synthetic random uint8 images (no CIFAR-10 subset found)"
    return f"real CIFAR-10 subset ({len(arrays.train_y)} train images) from {arrays.source}"

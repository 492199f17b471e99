"""Writing CIFAR-10 batch files in the official python layout, for tests that need data folders of their own."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10

from pipeline.workloads.cifar.data import BATCHES_DIR, CIFAR_CLASSES, IMAGE_SIZE, TEST_FILES, TRAIN_FILES


def write_cifar_batches(folder: str | Path, train_x: np.ndarray, train_y: np.ndarray,
                        test_x: np.ndarray, test_y: np.ndarray) -> Path:
    """Write uint8 (N, 32, 32, 3) images and labels in the official python layout; returns the batches folder."""
    out = Path(folder) / BATCHES_DIR
    out.mkdir(parents=True, exist_ok=True)
    # Training images are spread over the five data_batch files, as in the official release.
    train_parts = zip(np.array_split(train_x, len(TRAIN_FILES)), np.array_split(np.asarray(train_y), len(TRAIN_FILES)))
    for name, (x, y) in zip(TRAIN_FILES + TEST_FILES, [*train_parts, (test_x, test_y)]):
        x = np.asarray(x, dtype=np.uint8)
        batch = {
            "batch_label": name,
            "labels": [int(v) for v in y],
            "data": np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1),
            "filenames": [f"{name}_{i:05d}.png" for i in range(len(x))],
        }
        with (out / name).open("wb") as f:
            pickle.dump(batch, f)
    meta = {"num_cases_per_batch": 10000, "label_names": list(CIFAR_CLASSES), "num_vis": 3 * IMAGE_SIZE**2}
    with (out / CIFAR10.meta["filename"]).open("wb") as f:
        pickle.dump(meta, f)
    return out

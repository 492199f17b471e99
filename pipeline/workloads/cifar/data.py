"""CIFAR-10: find or download, load safely, normalise and augment (one batched path, CPU or on the device)."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import UsageError
from pipeline.workloads.cifar.safe_pickle import load_batch_pickle

CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# The notebook's per-channel figures (RGB, pixels scaled to [0, 1]). The std is the widely copied value
# (the true per-channel std of the training set is about 0.247, 0.243, 0.261); kept so results match the notebook.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# The official python layout (torchvision's CIFAR10 lists the same names with their MD5s; it is imported only to
# download or check them: importing torchvision costs every process about a second).
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{index}" for index in range(1, 6))
TEST_FILES = ("test_batch",)
OFFICIAL_TRAIN, OFFICIAL_TEST = 50_000, 10_000  # images in the release
IMAGE_SIZE = 32  # pixels per side
PAD = 4  # pixels of zero padding before the random 32x32 crop, as RandomCrop(32, padding=4)
DOWNLOAD_TIMEOUT_S = 60  # per connect or read; torchvision sets none, so a silent firewall would hang for minutes


class UnofficialDataWarning(UserWarning):
    """The CIFAR-10 files found are not torchvision's official release (MD5 mismatch)."""


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no single truth value
class CifarArrays:
    """CIFAR-10 in memory: uint8 images (N, 32, 32, 3) RGB and int64 labels (N,), and where they came from."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # the cifar-10-batches-py folder read
    official: bool  # True only when every batch file matches torchvision's official MD5

    @functools.cached_property
    def digest(self) -> str:
        """Short sha256 hex of shapes, labels and pixels: names this exact data for mlflow.log_input."""
        h = hashlib.sha256()
        for array in (self.train_x, self.train_y, self.test_x, self.test_y):
            h.update(str(array.shape).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]


def load_cifar10(data_dir: str | Path, download: bool, train_limit: int = 0, val_limit: int = 0) -> CifarArrays:
    """Load CIFAR-10 from data_dir (or download it there); limits keep the first N images (0 = all)."""
    data_dir = Path(data_dir).expanduser()
    folder = _find_batches(data_dir)
    if folder is None and download:
        _download(data_dir)
        folder = data_dir / BATCHES_DIR
    elif folder is None:
        raise UsageError(
            f"no CIFAR-10 in {data_dir} (looked for {data_dir / BATCHES_DIR}); "
            f"set download=true or point -P data_dir=<folder> at a copy"
        )
    train_x, train_y = _read_split(folder, TRAIN_FILES)
    test_x, test_y = _read_split(folder, TEST_FILES)
    # After reading, so a broken folder gets its error and no warning first. The MD5s are read (170 MB) only for
    # a folder that can be the release: 50,000 training and 10,000 test images.
    official = len(train_y) == OFFICIAL_TRAIN and len(test_y) == OFFICIAL_TEST and _is_official(folder)
    if not official:
        warnings.warn(f"CIFAR-10 in {folder} is not the official release (MD5 differs)", UnofficialDataWarning,
                      stacklevel=2)
    train_n = train_limit or len(train_y)
    test_n = val_limit or len(test_y)
    return CifarArrays(train_x[:train_n], train_y[:train_n], test_x[:test_n], test_y[:test_n], str(folder), official)


def _find_batches(data_dir: Path) -> Path | None:
    """The batches folder: data_dir/cifar-10-batches-py, or data_dir itself when it is one; None if neither."""
    if (data_dir / BATCHES_DIR).is_dir():
        return data_dir / BATCHES_DIR
    holds_batches = any((data_dir / name).exists() for name in TRAIN_FILES + TEST_FILES)
    if data_dir.is_dir() and (data_dir.name == BATCHES_DIR or holds_batches):
        return data_dir
    return None


def _download(data_dir: Path) -> None:
    """Fetch and unpack the official archive into data_dir; torchvision checks the archive's MD5."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            download_and_extract_archive(CIFAR10.url, str(data_dir), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except (OSError, RuntimeError) as err:  # URLError and timeouts are OSErrors; a bad archive raises RuntimeError
        raise UsageError(
            f"no CIFAR-10 at {data_dir / BATCHES_DIR} and the download failed ({err}); "
            f"point -P data_dir=<folder> at a folder holding cifar-10-batches-py"
        ) from None


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give sockets opened inside the block a timeout, unless the caller already set one."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(previous or seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _is_official(folder: Path) -> bool:
    """Whether every batch file matches the MD5 listed by torchvision's CIFAR10."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    return all(check_integrity(str(folder / name), md5) for name, md5 in CIFAR10.train_list + CIFAR10.test_list)


def _read_split(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the named batch files into images (N, 32, 32, 3) uint8 and labels (N,) int64."""
    parts = [read_batch(folder / name) for name in names]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch file as images (N, 32, 32, 3) uint8 and labels (N,) int64."""
    if not path.is_file():
        raise UsageError(f"{path} is missing; restore the full cifar-10-batches-py folder or point data_dir elsewhere")
    batch = load_batch_pickle(path)  # builds data only: a file asking to run code is refused
    data, labels = _field(batch, "data"), _labels(_field(batch, "labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * IMAGE_SIZE**2 and labels is not None and len(labels) == len(data)):
        raise UsageError(f"{path} is not a CIFAR-10 batch (need uint8 data (N, 3072) and N labels); replace the file")
    if labels.size and not (0 <= labels.min() and labels.max() < len(CIFAR_CLASSES)):
        raise UsageError(f"{path} has labels outside 0..9; replace the file")
    # Rows hold the red, green then blue 32x32 planes; turn them into height, width, channel.
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _field(batch: object, key: str) -> object:
    """batch[key], accepting str or bytes keys (files pickled by Python 3 or loaded as bytes); None if absent."""
    if not isinstance(batch, dict):
        return None
    return batch.get(key, batch.get(key.encode()))


def _labels(value: object) -> np.ndarray | None:
    """A batch's labels as int64 (N,); None unless they are a flat list or array of integers."""
    with contextlib.suppress(Exception):  # ragged lists and odd objects are simply not labels
        labels = np.asarray(value)
        if labels.ndim == 1 and (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
            return labels.astype(np.int64)
    return None


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW pixels -> float32 NCHW, scaled to [0, 1] then standardised, as ToTensor() + Normalize()."""
    mean = torch.tensor(CIFAR_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float().div(255) - mean) / std


def crop_and_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Per image: pad 4 zero pixels, take the 32x32 window at (top, left) in 0..8, then mirror where flip."""
    n = images.shape[0]
    padded = F.pad(images, (PAD, PAD, PAD, PAD))  # zero = black, since images are unnormalised pixels
    steps = torch.arange(IMAGE_SIZE, device=images.device)
    rows = top.to(images.device).view(n, 1) + steps  # (N, 32) padded-row index of each output row
    cols = left.to(images.device).view(n, 1) + steps
    # A horizontal flip of the window reads its columns right to left: fold it into the gather.
    cols = torch.where(flip.to(images.device).view(n, 1), cols.flip(1), cols)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    # Advanced indices split by the channel slice put their dims first: (N, 32, 32, C).
    window = padded[batch, :, rows.view(n, IMAGE_SIZE, 1), cols.view(n, 1, IMAGE_SIZE)]
    return window.permute(0, 3, 1, 2).contiguous()


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding 4) and horizontal flip (p=0.5) per image, as the notebook's transforms.

    Pass pixels (uint8, or float in [0, 1]), not normalised values: the zero padding must be black.
    Draws happen on the generator's device (CPU by default), so a seed gives the same crops on any device.
    """
    n = images.shape[0]
    where = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=where)
    left = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=where)
    flip = torch.rand(n, generator=generator, device=where) < 0.5
    return crop_and_flip(images, top, left, flip)


class CifarLoader:
    """Batches (normalised float32 NCHW images, int64 labels) from a dataset kept as uint8 on one device.

    Training batches are reshuffled every epoch and augmented; evaluation batches keep the order, are never
    augmented and include the last partial batch. The order depends only on the seed, so every optimizer
    compared with the same seed sees the same images in the same order.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, batch_size: int, *,
                 train: bool, seed: int = 0, device: str | torch.device = "cpu", drop_last: bool = False) -> None:
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise TypeError(f"images must be uint8 (N, 32, 32, 3), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise UsageError(f"{len(images)} images but {len(labels)} labels; give one label per image")
        if train and len(images) < 2:
            raise UsageError(f"{len(images)} training image(s): training needs at least 2 (BatchNorm cannot "
                             "normalise a batch of one); raise train_limit")
        # Whole dataset as uint8 NCHW on the device: a quarter of float32's memory, no DataLoader workers.
        self.images = images.to(device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.as_tensor(labels).to(device=device, dtype=torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.drop_last = drop_last and train  # evaluation always sees every image
        # Separate CPU streams: the image order does not depend on how many augmentation draws were made.
        self._order_rng = torch.Generator().manual_seed(seed)
        self._augment_rng = torch.Generator().manual_seed(seed + 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The random streams' positions, for a checkpoint: resuming replays the same orders and crops."""
        return {"order": self._order_rng.get_state(), "augment": self._augment_rng.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the random streams from a checkpoint's positions."""
        self._order_rng.set_state(state["order"])
        self._augment_rng.set_state(state["augment"])

    def sample(self, count: int) -> CifarLoader:
        """The first `count` images in stored order, never augmented, as an evaluation loader on the same device:
        a fixed sample of the training set (for BatchNorm statistics). `count` is cut to whole batches, so that
        no batch of one image reaches a model in training mode."""
        count = min(count, len(self.labels))
        count = max(count - count % self.batch_size, min(count, self.batch_size))
        return CifarLoader(self.images[:count].permute(0, 2, 3, 1), self.labels[:count], self.batch_size, train=False,
                           device=self.images.device)

    def __len__(self) -> int:
        """Batches per epoch. Training drops a last batch of a single image: BatchNorm cannot normalise one
        value per channel (resnet18_imagenet's last blocks are 1x1), and one image is no gradient estimate."""
        n = len(self.labels)
        if self.drop_last:
            return n // self.batch_size
        full, rest = divmod(n, self.batch_size)
        return full + (rest > 1 or (rest == 1 and not self.train))

    @property
    def images_per_epoch(self) -> int:
        """Images one pass yields: all of them, less a dropped last batch."""
        return min(len(self.labels), len(self) * self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self._order_rng) if self.train else torch.arange(n)
        order = order.to(self.labels.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index]
            if self.train:
                images = augment_batch(images, self._augment_rng)
            yield normalize(images), self.labels[index]

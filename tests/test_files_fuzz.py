"""Hostile and damaged files: each one, fed to the command line, gives exit code 2 and one `error:` line.

Every case runs `pipeline.cli.main` in-process (conftest.cli: fast) against a file built here: empty, truncated, of the
wrong type, the right type with the wrong contents, or random bytes. A case list per kind of file plus one
test per way of giving it (data_dir, predict input) keeps new kinds (checkpoints, params.yaml) easy to add:
write a CASES dict of name -> bytes builder and a test that places the file and calls assert_one_line_exit_2.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from cifar_files import write_cifar_batches
from conftest import cli, new_experiment
from PIL import Image

from pipeline.workloads.cifar.data import load_cifar10
from pipeline.workloads.cifar.images import read_images


def assert_one_line_exit_2(argv: list[str], *names: str) -> str:
    """Run `python -m pipeline ARGV` in-process: exit code 2, exactly one stderr line `error: ...` holding
    each of names, no traceback; returns that line."""
    done = cli(*argv)
    err = done.stderr
    assert done.returncode == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


class _Touch:
    """Unpickling this calls Path.touch(marker): stands in for any code a hostile file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.touch, (self.marker,)


def hostile_pickle(marker: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    """A pickle shaped like a CIFAR batch whose loading would create marker (protocol 2 reaches Path.touch via
    builtins.getattr, protocol 4 and up name pathlib.Path.touch directly)."""
    return pickle.dumps({"batch_label": "data batch 1 of 5", "labels": [0, 1], "data": _Touch(marker)},
                        protocol=protocol)


def cifar_argv(data_dir: Path, experiment: str) -> list[str]:
    """The cifar command line for a tiny run on data_dir (it never gets past loading in these tests)."""
    return ["cifar", "--data_dir", str(data_dir), "--model", "tiny_cnn", "--epochs", "1", "--download", "false",
            "--experiment", experiment]


def predict_argv(path: Path) -> list[str]:
    """The predict command line for path; the input is read before the model, so any model URI will do."""
    return ["predict", "--model_uri", "models:/none@champion", "--input", str(path)]


def official_layout(folder: Path) -> Path:
    """A tiny CIFAR-10 (10 train, 4 test random images) in the official layout; returns the batches folder."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (14, 32, 32, 3), dtype=np.uint8)
    return write_cifar_batches(folder, images[:10], np.arange(10) % 10, images[10:], np.arange(4))


def batch_bytes(data: object, labels: object, **extra: object) -> bytes:
    """A pickled batch dict holding data and labels as given (whatever their type)."""
    return pickle.dumps({"batch_label": "fuzz", "data": data, "labels": labels, **extra})


def png_bytes(size: tuple[int, int] = (32, 32)) -> bytes:
    """A real PNG of random pixels."""
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def random_bytes(n: int, seed: int) -> bytes:
    """n reproducible random bytes."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


GOOD_BATCH = batch_bytes(np.zeros((2, 3072), np.uint8), [3, 7])
ZEROS = np.zeros((2, 3072), np.uint8)

# name -> the bytes of a file that must never load as a CIFAR-10 batch.
BATCH_CASES: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "only-the-protocol-opcode": lambda: GOOD_BATCH[:2],
    "truncated-at-half": lambda: GOOD_BATCH[:len(GOOD_BATCH) // 2],
    "truncated-before-stop": lambda: GOOD_BATCH[:-1],
    "json": lambda: json.dumps({"data": [[0] * 3072] * 2, "labels": [0, 1]}).encode(),
    "text": lambda: b"airplane,automobile\n0,1\n",
    "png-renamed": png_bytes,
    "pickle-of-a-list": lambda: pickle.dumps([ZEROS, [0, 1]]),
    "pickle-of-none": lambda: pickle.dumps(None),
    "dict-without-data": lambda: pickle.dumps({"labels": [0, 1]}),
    "dict-without-labels": lambda: pickle.dumps({"data": ZEROS}),
    "data-wrong-width": lambda: batch_bytes(np.zeros((2, 100), np.uint8), [0, 1]),
    "data-three-dims": lambda: batch_bytes(np.zeros((2, 3, 1024), np.uint8), [0, 1]),
    "data-float": lambda: batch_bytes(np.zeros((2, 3072), np.float32), [0, 1]),
    "data-a-list": lambda: batch_bytes([[0] * 3072] * 2, [0, 1]),
    "data-a-string": lambda: batch_bytes("x" * 6144, [0, 1]),
    "labels-too-few": lambda: batch_bytes(ZEROS, [0]),
    "labels-out-of-range": lambda: batch_bytes(ZEROS, [0, 10]),
    "labels-negative": lambda: batch_bytes(ZEROS, [-1, 0]),
    "labels-strings": lambda: batch_bytes(ZEROS, ["cat", "dog"]),
    "labels-fractions": lambda: batch_bytes(ZEROS, [0.5, 1.0]),
    "labels-nested": lambda: batch_bytes(ZEROS, [[0], [1]]),
    "labels-ragged": lambda: batch_bytes(ZEROS, [[0], [1, 2]]),
    "labels-beyond-int64": lambda: batch_bytes(ZEROS, [2**70, 0]),
    "labels-none": lambda: batch_bytes(ZEROS, None),
    "labels-a-dict": lambda: batch_bytes(ZEROS, {0: 1, 1: 2}),
    "object-array": lambda: batch_bytes(np.array([None, 1], dtype=object), [0, 1]),
    "claims-a-huge-bytes-object": lambda: b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc",
    "protocol-header-then-random": lambda: b"\x80\x04" + random_bytes(4096, seed=7),
    **{f"random-bytes-{seed}": (lambda seed=seed: random_bytes(4096, seed)) for seed in range(4)},
}

# name -> (file name, bytes) of an image file predict must refuse.
IMAGE_CASES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "empty-png": ("empty.png", lambda: b""),
    "truncated-png": ("cut.png", lambda: png_bytes()[:len(png_bytes()) // 2]),
    "png-header-only": ("header.png", lambda: png_bytes()[:33]),
    "png-bad-checksum": ("crc.png", lambda: png_bytes()[:29] + b"\0\0\0\0" + png_bytes()[33:]),
    "json-as-png": ("data.png", lambda: json.dumps({"pixels": [0, 1]}).encode()),
    "pickle-as-png": ("batch.png", lambda: GOOD_BATCH),
    "png-signature-then-random": ("sig.png", lambda: b"\x89PNG\r\n\x1a\n" + random_bytes(2048, seed=8)),
    "truncated-jpeg": ("cut.jpg", lambda: _saved((64, 64), "JPEG")[:300]),
    "truncated-gif": ("cut.gif", lambda: _saved((64, 64), "GIF")[:40]),
    **{f"random-{suffix}": (f"noise.{suffix}", lambda seed=seed: random_bytes(2048, seed))
       for seed, suffix in enumerate(("png", "jpg", "jpeg", "gif", "bmp", "webp"))},
}


def _saved(size: tuple[int, int], kind: str) -> bytes:
    """A random-pixel image of size saved as kind (JPEG, GIF, ...)."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(size))).save(buffer, kind)
    return buffer.getvalue()


def test_the_undamaged_files_load(tmp_path: Path) -> None:
    """The cases below differ from files that work: the layout, GOOD_BATCH and a PNG all load."""
    batches = official_layout(tmp_path / "data")
    (batches / "data_batch_1").write_bytes(GOOD_BATCH)
    with pytest.warns(UserWarning, match="not the official"):
        assert load_cifar10(tmp_path / "data", download=False).train_y[:2].tolist() == [3, 7]
    (tmp_path / "ok.png").write_bytes(png_bytes())
    assert read_images(tmp_path / "ok.png").images.shape == (1, 32, 32, 3)
    (tmp_path / "jpeg.jpg").write_bytes(_saved((64, 64), "JPEG"))
    assert read_images(tmp_path / "jpeg.jpg").images.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("case", BATCH_CASES)
def test_bad_batch_file_in_data_dir(tracking, tmp_path: Path, case: str) -> None:
    batches = official_layout(tmp_path / "data")
    (batches / "data_batch_2").write_bytes(BATCH_CASES[case]())
    assert_one_line_exit_2(cifar_argv(tmp_path / "data", new_experiment()), str(batches / "data_batch_2"))


@pytest.mark.parametrize("case", BATCH_CASES)
def test_bad_batch_file_given_to_predict(tracking, tmp_path: Path, case: str) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(BATCH_CASES[case]())
    assert_one_line_exit_2(predict_argv(path), str(path))


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_given_to_predict(tracking, tmp_path: Path, case: str) -> None:
    name, build = IMAGE_CASES[case]
    path = tmp_path / name
    path.write_bytes(build())
    assert_one_line_exit_2(predict_argv(path), "cannot read image", str(path))


@pytest.mark.parametrize("case", ["truncated-png", "random-jpg"])
def test_bad_image_in_a_folder_given_to_predict(tracking, tmp_path: Path, case: str) -> None:
    name, build = IMAGE_CASES[case]
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "fine.png").write_bytes(png_bytes())
    (tmp_path / "images" / "cat" / name).write_bytes(build())
    assert_one_line_exit_2(predict_argv(tmp_path / "images"), str(tmp_path / "images" / "cat" / name))

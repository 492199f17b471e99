"""CIFAR-10 loading, normalisation, augmentation and batching: real subset, synthetic files, statistics."""
from __future__ import annotations

import dataclasses
import pickle
import pickletools
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import write_cifar_batches
from conftest import cli, new_experiment
from PIL import Image
from test_files_fuzz import assert_one_line_exit_2, cifar_argv, hostile_pickle
from torchvision.transforms import functional as TF

from bench.baselines import torchvision_test_transform, torchvision_train_transform
from bench.data import SUBSET
from pipeline.config.tasks import build_config
from pipeline.core.errors import UsageError
from pipeline.workloads.cifar.data import (CIFAR_MEAN, CIFAR_STD, CifarLoader, UnofficialDataWarning, augment_batch,
                                           crop_and_flip, load_cifar10, normalize)
from pipeline.workloads.cifar.safe_pickle import ALLOWED

needs_subset = pytest.mark.skipif(not SUBSET.is_dir(), reason=f"real CIFAR-10 subset not found at {SUBSET}")


def random_images(n: int, seed: int = 0, low: int = 0) -> np.ndarray:
    """Random uint8 images (n, 32, 32, 3) with values in low..255."""
    return np.random.default_rng(seed).integers(low, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def coordinate_images(n: int) -> np.ndarray:
    """Images whose pixels name their place: red = row + 1, green = column + 1, blue = image index % 200 + 50."""
    grid = np.indices((32, 32)) + 1
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    images[..., 0], images[..., 1] = grid[0], grid[1]
    images[..., 2] = (np.arange(n) % 200 + 50)[:, None, None]
    return images


def reference_crop(image: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    """Independent numpy version of RandomCrop(32, padding=4) + flip on one HWC image."""
    window = np.pad(image, ((4, 4), (4, 4), (0, 0)))[top:top + 32, left:left + 32]
    return window[:, ::-1] if flip else window


def recover_offsets(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, flip) of augmented coordinate images (N, 32, 32, 3), read off the centre pixels."""
    # The centre pixel always comes from the image, never the padding: row value = 13 + top; for columns
    # the value is 13 + left unflipped and 12 + left flipped (output column 16 reads window column 15).
    flip = out[:, 16, 17, 1] < out[:, 16, 16, 1]
    top = out[:, 16, 16, 0].astype(int) - 13
    left = out[:, 16, 16, 1].astype(int) - 13 + flip
    return top, left, flip


def assert_translations(out: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every output is the padded source shifted by offsets in 0..8 (mirrored or not); returns the offsets."""
    top, left, flip = recover_offsets(out)
    assert top.min() >= 0 and top.max() <= 8 and left.min() >= 0 and left.max() <= 8
    for i in range(len(out)):
        np.testing.assert_array_equal(out[i], reference_crop(source[i], top[i], left[i], flip[i]))
    return top, left, flip


def unnormalize(x: torch.Tensor) -> np.ndarray:
    """Normalised float NCHW back to uint8 NHWC pixels."""
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    pixels = ((x.cpu() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def online(host: str) -> bool:
    """Whether host resolves, i.e. a download test would really fetch data."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tiny CIFAR-10 written in the official layout: 23 train and 7 test random images."""
    train_x, test_x = random_images(23, seed=1), random_images(7, seed=2)
    train_y, test_y = np.arange(23) % 10, np.arange(7)[::-1] % 10
    write_cifar_batches(tmp_path, train_x, train_y, test_x, test_y)
    return tmp_path, train_x, train_y, test_x, test_y


# --- loading -------------------------------------------------------------------------------------------------


@needs_subset
def test_real_subset_loads_with_counts_dtypes_and_a_warning() -> None:
    with pytest.warns(UnofficialDataWarning, match="not the official"):
        data = load_cifar10(SUBSET, download=False)
    assert data.train_x.shape == (4660, 32, 32, 3) and data.test_x.shape == (932, 32, 32, 3)
    assert data.train_x.dtype == np.uint8 and data.train_y.dtype == np.int64 and data.train_y.shape == (4660,)
    assert data.test_y.dtype == np.int64 and data.test_y.shape == (932,)
    assert not data.official and data.source == str(SUBSET / "cifar-10-batches-py")
    assert set(np.unique(data.train_y)) == set(range(10)) == set(np.unique(data.test_y))
    # Real photos in RGB, height-width-channel order give the known channel means; a wrong reshape would not.
    np.testing.assert_allclose((data.train_x / 255).mean(axis=(0, 1, 2)), CIFAR_MEAN, atol=0.02)


@needs_subset
def test_real_subset_limits_take_the_first_images_and_folder_can_be_given_directly() -> None:
    with pytest.warns(UnofficialDataWarning):
        full = load_cifar10(SUBSET, download=False)
        part = load_cifar10(SUBSET / "cifar-10-batches-py", download=False, train_limit=100, val_limit=50)
    np.testing.assert_array_equal(part.train_x, full.train_x[:100])
    np.testing.assert_array_equal(part.test_y, full.test_y[:50])
    assert part.digest != full.digest


def test_synthetic_files_load_back_byte_identical(synthetic) -> None:
    folder, train_x, train_y, test_x, test_y = synthetic
    with pytest.warns(UnofficialDataWarning):
        data = load_cifar10(folder, download=False)
    for got, want in ((data.train_x, train_x), (data.train_y, train_y), (data.test_x, test_x), (data.test_y, test_y)):
        assert got.dtype == (np.uint8 if got.ndim == 4 else np.int64)
        np.testing.assert_array_equal(got, want)
    assert not data.official and sorted(p.name for p in Path(data.source).iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def test_bytes_keys_load_like_the_official_python2_pickles(synthetic) -> None:
    folder, _, _, test_x, test_y = synthetic
    batch = {b"data": test_x.transpose(0, 3, 1, 2).reshape(7, -1), b"labels": list(map(int, test_y))}
    (folder / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps(batch))
    with pytest.warns(UnofficialDataWarning):
        np.testing.assert_array_equal(load_cifar10(folder, download=False).test_x, test_x)


def test_digest_is_stable_and_changes_with_one_pixel(synthetic) -> None:
    with pytest.warns(UnofficialDataWarning):
        a, b = load_cifar10(synthetic[0], False), load_cifar10(synthetic[0], False)
    assert a.digest == b.digest and len(a.digest) == 16
    changed = b.train_x.copy()
    changed[3, 5, 7, 1] ^= 1
    assert dataclasses.replace(b, train_x=changed).digest != a.digest


def test_missing_folder_without_download_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="data_dir") as err:
        load_cifar10(tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["delete", "garble", "wrong_shape"])
def test_damaged_batch_file_is_a_usage_error_naming_it(synthetic, damage: str) -> None:
    path = synthetic[0] / "cifar-10-batches-py/data_batch_3"
    if damage == "delete":
        path.unlink()
    elif damage == "garble":
        path.write_bytes(b"\x80\x04this is not a pickle")
    else:
        path.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}))
    with pytest.raises(UsageError, match="data_batch_3"):
        load_cifar10(synthetic[0], download=False)


def test_negative_limit_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"train_limit: expected an integer >= 0 \(0 = all\), got -1"):
        build_config("cifar", {"train_limit": "-1"})


@pytest.mark.skipif(online("www.cs.toronto.edu"), reason="online: this would download 170 MB of CIFAR-10")
def test_download_offline_fails_fast_with_one_clean_line(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(UsageError, match="data_dir=") as err:
        load_cifar10(tmp_path, download=True)
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # raised `from None`: no chained traceback


# --- batch files cannot run code -----------------------------------------------------------------------------


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as Python 2 and numpy 1.x wrote the official files: protocol 2, GLOBAL opcodes naming
    numpy.core.multiarray, byte strings as Python 2 str (BINSTRING), which load as latin-1 text."""
    def text(raw: bytes) -> bytes:
        return b"T" + struct.pack("<i", len(raw)) + raw

    # dtype('u1', False, True), then BUILD with its state (3, '|', None, None, None, -1, -1, 0)
    dtype = (b"cnumpy\ndtype\n" + text(b"u1") + b"\x89\x88\x87R("
             + b"K\x03" + text(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    shape = b"J" + struct.pack("<i", len(data)) + b"M" + struct.pack("<H", data.shape[1]) + b"\x86"
    # _reconstruct(ndarray, (0,), 'b'), then BUILD with (1, shape, dtype, False, raw bytes)
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + text(b"b") + b"\x87R("
             + b"K\x01" + shape + dtype + b"\x89" + text(data.tobytes()) + b"tb")
    items = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (b"\x80\x02}(" + text(b"batch_label") + text(b"testing batch 1 of 1") + text(b"labels") + items
            + text(b"data") + array + b"u.")


def pickled_globals(raw: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle asks find_class for, read with pickletools (nothing is loaded)."""
    found, strings, memo = set(), [], {}
    for opcode, arg, _ in pickletools.genops(raw):
        if opcode.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
        elif opcode.name == "STACK_GLOBAL":  # its module and name are the last two strings pushed
            found.add((strings[-2], strings[-1]))
        elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):  # protocol 4 may fetch names from the memo
            memo[len(memo) if arg is None else arg] = strings[-1] if strings else None
        elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
            strings.append(memo[arg])
        elif isinstance(arg, str):
            strings.append(arg)
    return found


@needs_subset
def test_real_subset_files_ask_only_for_allowed_globals() -> None:
    for path in sorted((SUBSET / "cifar-10-batches-py").iterdir()):
        assert pickled_globals(path.read_bytes()) <= set(ALLOWED), path.name


def test_official_python2_layout_loads(synthetic) -> None:
    folder, _, _, test_x, test_y = synthetic
    raw = python2_batch(test_x.transpose(0, 3, 1, 2).reshape(7, -1), test_y.tolist())
    assert pickled_globals(raw) == {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                                    ("numpy", "dtype")}
    (folder / "cifar-10-batches-py/test_batch").write_bytes(raw)
    with pytest.warns(UnofficialDataWarning):
        data = load_cifar10(folder, download=False)
    np.testing.assert_array_equal(data.test_x, test_x)
    np.testing.assert_array_equal(data.test_y, test_y)


# numpy 2 names numpy._core; numpy 1.x wrote numpy.core, spelt out in GLOBAL lines by protocols 0-2 (later
# protocols prefix names with their length, so a byte replacement cannot rename them).
@pytest.mark.parametrize(("protocol", "numpy_name"), [*((p, "numpy._core") for p in range(pickle.HIGHEST_PROTOCOL + 1)),
                                                      *((p, "numpy.core") for p in range(3))])
def test_every_pickle_protocol_and_numpy_module_name_loads(synthetic, protocol: int, numpy_name: str) -> None:
    folder, _, _, test_x, test_y = synthetic
    batch = {"batch_label": b"test", "data": test_x.transpose(0, 3, 1, 2).reshape(7, -1), "filenames": [b"", b"a"],
             "labels": [np.int64(v) for v in test_y]}  # numpy scalars: the `scalar` global
    raw = pickle.dumps(batch, protocol=protocol)
    raw = raw.replace(b"numpy._core.", f"{numpy_name}.".encode())
    asked = pickled_globals(raw)
    assert asked <= set(ALLOWED) and {module for module, _ in asked if module.startswith("numpy.")} <= {
        f"{numpy_name}.multiarray", f"{numpy_name}.numeric"}
    (folder / "cifar-10-batches-py/test_batch").write_bytes(raw)
    with pytest.warns(UnofficialDataWarning):
        data = load_cifar10(folder, download=False)
    np.testing.assert_array_equal(data.test_x, test_x)
    np.testing.assert_array_equal(data.test_y, test_y)


def refused_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (a pickle that must be refused, the words its refusal names)."""
    runstring = (b"\x80\x02cnumpy.testing._private.utils\nrunstring\n"  # a numpy function that runs exec()
                 + pickle.dumps((f"open({str(marker)!r}, 'w')", {}), protocol=2)[2:-1] + b"R.")
    # _reconstruct(ndarray, (1_410_065_408,), b'b'): numpy's own pickles always ask for shape (0,)
    reconstruct = b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xe4\x0bT\x85C\x01b\x87R."
    return {
        "path-touch-protocol-4": (hostile_pickle(marker, 4), "pathlib.Path.touch"),
        "getattr-protocol-2": (hostile_pickle(marker, 2), "__builtin__.getattr"),
        "numpy-runstring": (runstring, "numpy.testing._private.utils.runstring"),
        "os-system": (b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.", "os.system"),
        "codec-other-than-latin1": (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.",
                                    "'zlib' codec"),
        "object-array": (pickle.dumps({"data": np.array([None], dtype=object)}), "Python objects"),
        "huge-reconstruct": (reconstruct, "array constructor"),
    }


@pytest.mark.parametrize("case", ["path-touch-protocol-4", "getattr-protocol-2", "numpy-runstring"])
def test_the_payloads_do_run_code_under_plain_pickle(tmp_path: Path, case: str) -> None:
    """The refusal tests' payloads are live: plain pickle.loads runs them and creates the marker."""
    marker = tmp_path / "ran"
    pickle.loads(refused_pickles(marker)[case][0])
    assert marker.exists()


@pytest.mark.parametrize("case", list(refused_pickles(Path("x"))))
def test_a_batch_asking_for_code_is_refused_without_running_it(synthetic, tmp_path: Path, case: str) -> None:
    marker = tmp_path / "ran"
    raw, named = refused_pickles(marker)[case]
    path = synthetic[0] / "cifar-10-batches-py/data_batch_1"
    path.write_bytes(raw)
    with pytest.raises(UsageError) as err:
        load_cifar10(synthetic[0], download=False)
    message = str(err.value)
    assert message.startswith(f"{path} is not a plain CIFAR-10 batch: ") and named in message, message
    assert message.endswith("refusing to load it") and "\n" not in message
    assert not marker.exists()


def assert_no_run_started(client, experiment: str, since_ms: int) -> None:
    """The store holds no run of experiment, and no run started since since_ms is still RUNNING."""
    found = client.get_experiment_by_name(experiment)
    assert found is None or client.search_runs([found.experiment_id]) == []
    every = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(every, f"attributes.status = 'RUNNING' and attributes.start_time >= {since_ms}")
    assert running == [], [run.info.run_id for run in running]


def test_cli_refuses_a_hostile_data_dir_before_any_run(tracking, tmp_path: Path) -> None:
    batches = write_cifar_batches(tmp_path / "data", random_images(10), np.arange(10), random_images(4), np.arange(4))
    marker, experiment, since_ms = tmp_path / "ran", new_experiment(), int(time.time() * 1000)
    (batches / "data_batch_1").write_bytes(hostile_pickle(marker))
    line = assert_one_line_exit_2(cifar_argv(tmp_path / "data", experiment), str(batches / "data_batch_1"))
    assert "asks to load pathlib.Path.touch" in line
    assert not marker.exists()
    assert_no_run_started(tracking, experiment, since_ms)


def test_cli_refuses_a_protocol_2_hostile_data_dir_with_one_line(tracking, tmp_path: Path) -> None:
    # In-process (conftest.cli): test_cifar.py holds cifar's test in a real process.
    batches = write_cifar_batches(tmp_path / "data", random_images(10), np.arange(10), random_images(4), np.arange(4))
    marker, experiment, since_ms = tmp_path / "ran", new_experiment(), int(time.time() * 1000)
    (batches / "data_batch_1").write_bytes(hostile_pickle(marker, protocol=2))
    done = cli(*cifar_argv(tmp_path / "data", experiment))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(f"error: {batches / 'data_batch_1'} is not")
    assert "asks to load __builtin__.getattr" in done.stderr
    assert not marker.exists()
    assert_no_run_started(tracking, experiment, since_ms)


# --- normalisation and augmentation --------------------------------------------------------------------------


def test_normalisation_matches_the_torchvision_test_transform_exactly() -> None:
    images = random_images(6)
    want = torch.stack([torchvision_test_transform()(Image.fromarray(image)) for image in images])
    got = normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert got.shape == (6, 3, 32, 32) and got.dtype == torch.float32
    assert torch.equal(got, want)


def every_crop(image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All 9 x 9 x 2 (top, left, flip) choices and the normalised crop_and_flip output of each for one HWC image."""
    tops, lefts, flips = (t.flatten() for t in torch.meshgrid(
        torch.arange(9), torch.arange(9), torch.arange(2), indexing="ij"))
    batch = torch.from_numpy(image).permute(2, 0, 1).expand(len(tops), 3, 32, 32)
    return tops, lefts, flips == 1, normalize(crop_and_flip(batch, tops, lefts, flips == 1))


def test_forced_offsets_match_torchvision_pad_crop_flip_for_every_offset() -> None:
    image = random_images(1, seed=3)[0]
    tops, lefts, flips, got = every_crop(image)
    finish = torchvision_test_transform()  # ToTensor + Normalize, applied after the geometric part as in training
    padded = TF.pad(Image.fromarray(image), 4, fill=0)
    for k, (top, left, flip) in enumerate(zip(tops.tolist(), lefts.tolist(), flips.tolist())):
        window = TF.crop(padded, top, left, 32, 32)
        want = finish(TF.hflip(window) if flip else window)
        assert torch.equal(got[k], want), (top, left, flip)


def test_torchvision_train_transform_only_produces_our_crops() -> None:
    image = random_images(1, seed=4)[0]
    candidates = every_crop(image)[3].flatten(1)  # all 162 possible outputs
    transform, torch_state = torchvision_train_transform(), torch.get_rng_state()
    torch.manual_seed(0)
    try:
        draws = torch.stack([transform(Image.fromarray(image)).flatten() for _ in range(200)])
    finally:
        torch.set_rng_state(torch_state)
    matches = (draws[:, None, :] == candidates[None]).all(dim=2)  # (200, 162)
    assert (matches.sum(dim=1) == 1).all()  # each torchvision output is exactly one of ours
    assert matches.any(dim=0).sum() > 50  # and it explores many of them, not a fixed crop


def test_padding_is_black_on_the_expected_border() -> None:
    images = torch.from_numpy(random_images(2, low=1)).permute(0, 3, 1, 2)  # no zero pixels of their own
    corner = crop_and_flip(images, torch.tensor([0, 8]), torch.tensor([0, 8]), torch.tensor([False, False]))
    assert (corner[0, :, :4] == 0).all() and (corner[0, :, :, :4] == 0).all()
    assert torch.equal(corner[0, :, 4:, 4:], images[0, :, :28, :28])
    assert (corner[1, :, 28:] == 0).all() and (corner[1, :, :, 28:] == 0).all()
    assert torch.equal(corner[1, :, :28, :28], images[1, :, 4:, 4:])
    assert (crop_and_flip(images, torch.tensor([4, 4]), torch.tensor([4, 4]), torch.tensor([False, False]))
            == images).all()  # offset 4 is the identity


def test_augment_is_the_same_for_uint8_and_unit_float_pixels() -> None:
    images = torch.from_numpy(random_images(16)).permute(0, 3, 1, 2)
    as_uint8 = augment_batch(images, torch.Generator().manual_seed(5))
    as_float = augment_batch(images.float() / 255, torch.Generator().manual_seed(5))
    assert as_uint8.dtype == torch.uint8 and as_float.dtype == torch.float32
    torch.testing.assert_close(as_float, as_uint8.float() / 255)


def test_augment_offsets_and_flips_are_uniform_and_independent() -> None:
    n = 4000
    source = coordinate_images(n)
    out = augment_batch(torch.from_numpy(source).permute(0, 3, 1, 2), torch.Generator().manual_seed(6))
    top, left, flip = assert_translations(out.permute(0, 2, 3, 1).numpy(), source)
    assert abs(flip.mean() - 0.5) < 0.04  # 5 standard deviations of a fair coin over 4000 draws
    # Chi-square against uniform; bounds are the 0.999 quantiles (df 8 and df 80), so a true sampler fails 1 in 1000.
    for offsets in (top, left):
        counts = np.bincount(offsets, minlength=9)
        assert ((counts - n / 9) ** 2 / (n / 9)).sum() < 26.1, counts
    joint = np.bincount(top * 9 + left, minlength=81)
    assert ((joint - n / 81) ** 2 / (n / 81)).sum() < 124.8  # catches top and left drawn together
    assert abs(np.corrcoef(top, flip)[0, 1]) < 0.08 and abs(np.corrcoef(left, flip)[0, 1]) < 0.08


# --- batching ------------------------------------------------------------------------------------------------


def labels_of_epoch(loader: CifarLoader) -> list[int]:
    """The labels of one pass, in order."""
    return torch.cat([y for _, y in loader]).tolist()


def test_eval_loader_keeps_order_never_augments_and_keeps_the_last_batch() -> None:
    images = random_images(10)
    loader = CifarLoader(images, np.arange(10), batch_size=4, train=False, seed=0, drop_last=True)
    assert len(loader) == 3
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [4, 4, 2]
        assert torch.equal(torch.cat([x for x, _ in batches]), normalize(torch.from_numpy(images).permute(0, 3, 1, 2)))
        assert torch.cat([y for _, y in batches]).tolist() == list(range(10))


def test_train_loader_order_is_set_by_the_seed_and_covers_every_image_once() -> None:
    images, labels = random_images(50), np.arange(50)

    def two_epochs(seed: int) -> list[list[int]]:
        loader = CifarLoader(images, labels, batch_size=8, train=True, seed=seed)
        return [labels_of_epoch(loader) for _ in range(2)]

    first, again, other = two_epochs(0), two_epochs(0), two_epochs(1)
    assert first == again and first != other
    assert first[0] != first[1]  # reshuffled every epoch
    for epoch in first + other:
        assert sorted(epoch) == list(range(50))


def test_train_loader_same_seed_same_augmented_pixels_and_drop_last() -> None:
    source = coordinate_images(30)

    def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(CifarLoader(source, np.arange(30), batch_size=8, train=True, seed=3, drop_last=True))

    first, again = batches(), batches()
    assert [len(y) for _, y in first] == [8, 8, 8]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    x, y = torch.cat([x for x, _ in first]), torch.cat([y for _, y in first])
    _, _, flip = assert_translations(unnormalize(x), source[y.numpy()])  # augmented, and only translated
    assert 0 < flip.sum() < len(flip)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_loader_gives_the_cpu_batches() -> None:
    images, labels = random_images(40), np.arange(40)
    cpu = list(CifarLoader(images, labels, batch_size=16, train=True, seed=2))
    gpu = list(CifarLoader(images, labels, batch_size=16, train=True, seed=2, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu())


def test_the_layout_names_are_torchvisions_official_ones() -> None:
    from torchvision.datasets import CIFAR10

    from pipeline.workloads.cifar.data import BATCHES_DIR, TEST_FILES, TRAIN_FILES

    assert BATCHES_DIR == CIFAR10.base_folder
    assert TRAIN_FILES == tuple(name for name, _ in CIFAR10.train_list)
    assert TEST_FILES == tuple(name for name, _ in CIFAR10.test_list)

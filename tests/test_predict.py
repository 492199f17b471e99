"""The `predict` entry point: images in, one line per image out, predictions logged; bad paths refused."""
import csv
import io
import struct
import time
import zlib

import mlflow
import numpy as np
import pytest
from cifar_files import write_cifar_batches
from conftest import SHARED_SUBSET, cli, metric_history, new_experiment, run_cli, runs_of
from PIL import Image, ImageFile
from test_files_fuzz import assert_one_line_exit_2, hostile_pickle, predict_argv

from pipeline.core.errors import UsageError
from pipeline.workloads.cifar.data import CIFAR_CLASSES, load_cifar10
from pipeline.workloads.cifar.images import MAX_IMAGE_SIDE, read_images


def _png_folder(folder, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
        target = folder / CIFAR_CLASSES[label]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{index:04d}.png")


def test_read_images_from_files_folders_and_batches(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), np.array([0, 1, 2, 3, 4, 5])
    _png_folder(tmp_path / "pngs", images, labels)
    folder = read_images(tmp_path / "pngs")
    order = [CIFAR_CLASSES.index(name.split("/")[0]) for name in folder.names]
    np.testing.assert_array_equal(folder.labels, order)
    np.testing.assert_array_equal(folder.images, images[[int(n.split("/")[1][:4]) for n in folder.names]])
    single = read_images(tmp_path / "pngs" / "cat" / "0003.png")
    assert single.names == ["0003.png"] and single.labels.tolist() == [3]  # its folder "cat" names the class
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(tmp_path / "big.jpg")
    assert read_images(tmp_path / "big.jpg").images.shape == (1, 32, 32, 3)
    batches = write_cifar_batches(tmp_path / "cifar", images, labels, images[:4], labels[:4])
    batch = read_images(batches / "test_batch")
    assert batch.names[0] == "test_batch[0]" and batch.labels.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(batch.images, images[:4])


def test_unreadable_inputs_are_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("hello")
    for path, message in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "no images"),
                          (tmp_path / "broken.png", "cannot read image"),
                          (tmp_path / "notes.txt", "not a readable CIFAR-10 batch")):
        with pytest.raises(UsageError, match=message):
            read_images(path)


def test_cli_refuses_bad_inputs_with_one_line(tracking, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    for args, message in ((["--input", str(tmp_path / "nope")], "does not exist"),
                          (["--input", str(tmp_path / "broken.png")], "cannot read image"),
                          (["--input", str(tmp_path)], "cannot read image"),
                          ([], "model_uri: expected a model URI")):
        done = cli("predict", "--model_uri", "models:/none@champion", *args) if args else \
            cli("predict", "--input", str(tmp_path))
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    images = np.zeros((1, 32, 32, 3), np.uint8)
    Image.fromarray(images[0]).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").unlink()
    done = cli("predict", "--model_uri", "models:/no-such-model@champion", "--input", str(tmp_path / "ok.png"))
    assert done.returncode == 2 and "model_uri: cannot load 'models:/no-such-model@champion'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_cli_refuses_a_batch_file_asking_for_code(tracking, tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "test_batch"
    path.write_bytes(hostile_pickle(marker))
    line = assert_one_line_exit_2(predict_argv(path), f"{path} is not a plain CIFAR-10 batch")
    assert "asks to load pathlib.Path.touch" in line and line.endswith("refusing to load it")
    assert not marker.exists()


def png_claiming(path, width, height):
    """A 1x1 PNG whose header claims width x height (checksum fixed up): tiny on disk, huge if decoded."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    raw = bytearray(buffer.getvalue())
    # 8-byte signature, then the IHDR chunk: length (4), b"IHDR", width and height (4 + 4), 5 more bytes, CRC
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(raw[12:29]))
    path.write_bytes(bytes(raw))


@pytest.fixture
def decodes(monkeypatch):
    """Images whose pixels PIL decodes during the test, by size: a refused bomb must never be decoded."""
    sizes, load = [], ImageFile.ImageFile.load

    def spy(image):
        sizes.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return sizes


# (width, height) claimed: past PIL's own error (2 x 89M pixels), past its warning (89M), just past our cap.
@pytest.mark.parametrize("size", [(100_000, 100_000), (10_000, 10_000), (MAX_IMAGE_SIDE + 1, MAX_IMAGE_SIDE)])
def test_oversized_image_headers_are_refused_before_decoding(tracking, tmp_path, decodes, size):
    path = tmp_path / "bomb.png"
    png_claiming(path, *size)
    start = time.perf_counter()
    assert_one_line_exit_2(predict_argv(path), str(path), f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixel cap")
    assert time.perf_counter() - start < 5 and decodes == []


def test_a_real_large_image_is_refused_and_one_at_the_cap_is_read(tracking, tmp_path, decodes):
    Image.new("L", (5000, 5000), 7).save(tmp_path / "big.png")  # one colour: 25M pixels in a few KB
    assert (tmp_path / "big.png").stat().st_size < 100_000
    assert_one_line_exit_2(predict_argv(tmp_path / "big.png"), str(tmp_path / "big.png"), "pixel cap")
    assert decodes == []
    Image.new("L", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), 7).save(tmp_path / "cap.png")
    read = read_images(tmp_path / "cap.png")
    assert read.images.shape == (1, 32, 32, 3) and (read.images == 7).all()
    assert decodes == [(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)]


def test_cli_process_refuses_a_decompression_bomb_with_one_line(tracking, tmp_path):
    # predict's one test in a real process: PIL's own warning would reach the process's stderr.
    png_claiming(tmp_path / "bomb.png", 10_000, 10_000)  # PIL itself warns (on stderr) about this one
    done = run_cli(*predict_argv(tmp_path / "bomb.png"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: input: image {tmp_path / 'bomb.png'} is over the "
                                        f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixel cap; predict needs only 32x32, "
                                        "so shrink it first"]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_SUBSET.is_dir(), reason="needs the real CIFAR-10 subset")
def test_champion_predictions_match_its_logged_val_acc(tracking, cifar_sweep, tmp_path):
    experiment, model_name, first, _ = cifar_sweep
    assert first.returncode == 0, first.stderr[-2000:]
    champion_id = mlflow.MlflowClient().get_model_version_by_alias(model_name, "champion").run_id
    data = load_cifar10(SHARED_SUBSET, download=False, val_limit=128)  # the sweep's val_limit
    _png_folder(tmp_path / "images", data.test_x, data.test_y)
    predict_experiment = new_experiment()
    done = cli("predict", "--model_uri", f"models:/{model_name}@champion", "--input",
               str(tmp_path / "images"), "--experiment", predict_experiment)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.count("\t") == 2]
    assert len(lines) == 128 and all(line.split("\t")[1] in CIFAR_CLASSES for line in lines)
    (run,) = runs_of(tracking, predict_experiment)
    rows = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/predictions.csv"))))
    accuracy = np.mean([row["predicted"] == row["true"] for row in rows])
    _, val_acc = metric_history(tracking, champion_id, "val_acc")
    assert accuracy == pytest.approx(val_acc[-1], abs=1e-9)
    assert run.data.metrics["accuracy"] == pytest.approx(val_acc[-1], abs=1e-9)

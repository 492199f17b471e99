"""Issue 22, round 3: a model folder never runs code (pickles, a loader of its own, pickled records inside the
pt2, YAML tags), a damaged model.pt2 is one line; predict's inputs: a FIFO, names that are not UTF-8, 16-bit and
other image modes; what `mlflow models serve` does with floats and with a tampered folder."""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import cli, new_experiment, run_cli, runs_of
from PIL import Image
from servers import free_port, stop_server, wait_healthy
from test_files_fuzz import assert_one_line_exit_2

from pipeline import tracking
from pipeline.tracking.modelfiles import PICKLE_SWITCH, pickle_off
from pipeline.training.runlog import MODEL_METADATA
from pipeline.workloads.cifar.data import CIFAR_MEAN, CIFAR_STD
from pipeline.workloads.cifar.images import read_images
from pipeline.workloads.cifar.models import ImageClassifier, build_model

_RUN_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


class _Touch:
    """Unpickling this creates `marker`: it stands in for any code a hostile model file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def log_tiny_model() -> str:
    """A model as `cifar` logs it (tiny_cnn inside ImageClassifier, through tracking.Run.log_model); its URI."""
    torch.manual_seed(0)
    model = ImageClassifier(build_model("tiny_cnn"), CIFAR_MEAN, CIFAR_STD).eval()
    with tracking.open_run(new_experiment(), "model") as run:
        return run.log_model(model, np.zeros((2, 32, 32, 3), np.uint8), None, MODEL_METADATA)


@pytest.fixture(scope="module")
def genuine(store_uri, tmp_path_factory):
    """One real logged model and a copy of its folder: (model URI, folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store_uri)
        for name in _RUN_ENV:
            patch.delenv(name, raising=False)
        uri = log_tiny_model()
        folder = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path_factory.mktemp("m")))
    return uri, Path(folder)


def plant(client, folder: Path) -> str:
    """A finished run holding `folder` as its `model` artifact, as anyone who can write to the store could leave
    one (its artifacts beside the folder, never in the project); returns runs:/<run_id>/model."""
    run = client.create_run(client.create_experiment(new_experiment(), artifact_location=str(folder) + "-store"))
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}/model"


def _edit_mlmodel(folder: Path, old: str, new: str) -> None:
    text = (folder / "MLmodel").read_text()
    assert old in text, old
    (folder / "MLmodel").write_text(text.replace(old, new))


def _pickled_model(folder: Path, marker: Path) -> None:
    """data/ as MLflow's pickle serialization writes it (model.pth and pickle_module_info.txt), the pickle asking
    for Path.touch; the MLmodel names plain pickle as its pickle module."""
    shutil.rmtree(folder / "data")
    (folder / "data").mkdir()
    torch.save(_Touch(marker), folder / "data" / "model.pth", pickle_module=pickle)
    (folder / "data" / "pickle_module_info.txt").write_text("pickle")
    _edit_mlmodel(folder, "pickle_module_name: mlflow.pytorch.pickle_module", "pickle_module_name: pickle")


def _rewrite_records(model: Path, change) -> None:
    """Rewrite the zip `model` with change(name, bytes) -> bytes applied to each record (checksums kept right)."""
    with zipfile.ZipFile(io.BytesIO(model.read_bytes())) as source, zipfile.ZipFile(model, "w") as target:
        for info in source.infolist():
            target.writestr(info, change(info.filename, source.read(info)))


def _pickled_record(folder: Path, marker: Path) -> None:
    """A well-formed pt2 whose sample-inputs record (torch.export.load unpickles it) asks for Path.touch."""
    hostile = io.BytesIO()
    torch.save(_Touch(marker), hostile)
    _rewrite_records(folder / "data" / "model.pt2",
                     lambda name, data: hostile.getvalue() if name.endswith("sample_inputs/model.pt") else data)


def _own_loader(folder: Path, marker: Path) -> None:
    """The MLmodel names a loader module shipped in the folder's code/, which pyfunc puts on sys.path."""
    (folder / "code").mkdir()
    (folder / "code" / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                             "def _load_pyfunc(path, config=None):\n    raise RuntimeError\n")
    _edit_mlmodel(folder, "loader_module: mlflow.pytorch", "loader_module: evil\n    code: code")


def _yaml_tag(folder: Path, marker: Path) -> None:
    (folder / "MLmodel").write_text(f"flavors: !!python/object/apply:os.system ['touch {marker}']\n")


def _damaged_record(folder: Path, marker: Path) -> None:
    """Bytes of a weight record overwritten in place: the zip still opens, the record's CRC no longer holds."""
    model = folder / "data" / "model.pt2"
    with zipfile.ZipFile(model) as archive:
        info = archive.getinfo("model/data/weights/weight_3")
    raw = bytearray(model.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + int.from_bytes(raw[info.header_offset + 28:][:2], "little")
    raw[start + 100:start + 164] = os.urandom(64)
    model.write_bytes(bytes(raw))


def _broken_graph(folder: Path, marker: Path) -> None:
    _rewrite_records(folder / "data" / "model.pt2", lambda name, data: b"{" if name.endswith("model.json") else data)


def _truncated(folder: Path, marker: Path) -> None:
    model = folder / "data" / "model.pt2"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


TAMPERS = {
    "pickled model": (_pickled_model, "data/ holds ['model.pth', 'pickle_module_info.txt'], expected model.pt2"),
    "pickled record in the pt2": (_pickled_record, "record model/data/sample_inputs/model.pt of data/model.pt2 is "
                                                   "neither plain tensors nor text"),
    "own loader and code": (_own_loader, "python_function loader_module 'evil', expected 'mlflow.pytorch'"),
    "python tag in MLmodel": (_yaml_tag, "MLmodel is not readable YAML (ConstructorError)"),
    "truncated pt2": (_truncated, "data/model.pt2 is not a zip archive as torch.export writes"),
    "random bytes as pt2": (lambda folder, marker: (folder / "data" / "model.pt2").write_bytes(os.urandom(4000)),
                            "data/model.pt2 is not a zip archive as torch.export writes"),
    "damaged weight record": (_damaged_record, "data/model.pt2 is damaged (record 'model/data/weights/weight_3' "
                                               "fails its checksum)"),
    "broken graph record": (_broken_graph, "record model/models/model.json of data/model.pt2 is neither"),
    "empty data folder": (lambda folder, marker: [p.unlink() for p in (folder / "data").iterdir()],
                          "data/ holds [], expected model.pt2 alone"),
    "float signature": (lambda folder, marker: _edit_mlmodel(folder, '"dtype": "uint8"', '"dtype": "float32"'),
                        "input signature"),
    "no MLmodel": (lambda folder, marker: (folder / "MLmodel").unlink(), "no MLmodel file"),
}


def tampered(genuine_folder: Path, tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A copy of the genuine folder with TAMPERS[kind] applied: (folder, the marker its payload would create)."""
    folder, marker = tmp_path / kind.replace(" ", "_"), tmp_path / f"{kind.replace(' ', '_')}.ran"
    shutil.copytree(genuine_folder, folder)
    TAMPERS[kind][0](folder, marker)
    return folder, marker


def _png(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "grey.png")
    return folder / "grey.png"


def assert_no_runs(client, experiment: str) -> None:
    found = client.get_experiment_by_name(experiment)
    assert found is None or client.search_runs([found.experiment_id]) == []


def test_the_genuine_model_predicts(tracking, genuine, tmp_path):
    uri, _ = genuine
    experiment = new_experiment()
    done = cli("predict", "--model_uri", uri, "--input", str(_png(tmp_path)), "--experiment", experiment)
    assert done.returncode == 0, done.stderr
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED" and done.stdout.startswith("grey.png\t")
    assert PICKLE_SWITCH not in os.environ  # held off only while the model loads


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_a_tampered_model_folder_is_one_line_and_runs_nothing(tracking, genuine, tmp_path, kind):
    folder, marker = tampered(genuine[1], tmp_path, kind)
    uri, experiment = plant(tracking, folder), new_experiment()
    line = assert_one_line_exit_2(["predict", "--model_uri", uri, "--input", str(_png(tmp_path / "in")),
                                   "--experiment", experiment], f"{uri!r}", TAMPERS[kind][1])
    assert len(line) < 600 and not marker.exists()
    assert_no_runs(tracking, experiment)


LOAD_EACH = """
import sys, mlflow.pyfunc
for folder in sys.argv[1:]:
    try:
        mlflow.pyfunc.load_model(folder)
    except BaseException:
        pass
"""


def test_the_payloads_are_live_without_the_checks(genuine, tmp_path):
    # What the tests above refuse runs its code when MLflow 3.17 loads it as it is by default (pickle allowed):
    # each marker appears. The pickled ones stay refused by MLflow itself once the switch is off (pickle_off).
    kinds = ("pickled model", "pickled record in the pt2", "own loader and code")
    made = [tampered(genuine[1], tmp_path, kind) for kind in kinds]
    env = {key: value for key, value in os.environ.items() if key != PICKLE_SWITCH}
    subprocess.run([sys.executable, "-c", LOAD_EACH, *(str(folder) for folder, _ in made)], env=env,
                   capture_output=True, timeout=300, check=True)
    assert [marker.exists() for _, marker in made] == [True, True, True]
    for folder, marker in made[:2]:
        marker.unlink()
        with pickle_off(), pytest.raises(mlflow.exceptions.MlflowException, match="pickle is disallowed"):
            mlflow.pyfunc.load_model(str(folder))
        assert not marker.exists()


def test_pickle_off_puts_the_variable_back(monkeypatch):
    monkeypatch.setenv(PICKLE_SWITCH, "true")
    with pickle_off():
        assert os.environ[PICKLE_SWITCH] == "false"
    assert os.environ[PICKLE_SWITCH] == "true"
    monkeypatch.delenv(PICKLE_SWITCH)
    with pytest.raises(KeyError), pickle_off():
        raise KeyError
    assert PICKLE_SWITCH not in os.environ


def test_a_logged_model_tampered_in_place_is_refused_in_a_fresh_process(tracking, tmp_path):
    # The store's own folder of a model optlab logged (a local store hands out its path) gets the pickle, and
    # the process is handed a run as `mlflow run` hands one: one line, no marker, that run FAILED.
    uri = log_tiny_model()
    _pickled_model(Path(mlflow.artifacts.download_artifacts(artifact_uri=uri)), tmp_path / "ran")
    experiment_id = tracking.create_experiment(new_experiment())
    handed = tracking.create_run(experiment_id).info.run_id
    done = run_cli("predict", "--model_uri", uri, "--input", str(_png(tmp_path)),
                   env={"MLFLOW_RUN_ID": handed, "MLFLOW_EXPERIMENT_ID": experiment_id})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: model_uri: {uri!r} is not a model optlab logged (data/ holds "
                                        "['model.pth', 'pickle_module_info.txt'], expected model.pt2 alone); optlab "
                                        "loads only torch.export programs (data/model.pt2) of MLflow's pytorch "
                                        "flavor, so it refuses it"]
    assert not (tmp_path / "ran").exists()
    (run,) = tracking.search_runs([experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("model_uri: ")


@contextmanager
def unblocked(fifo: Path):
    """While the block runs, open and close the FIFO's writing end every 5 s: code that blocks opening it for
    reading gets an empty read and the test fails instead of hanging."""
    done = threading.Event()

    def release() -> None:
        while not done.wait(5):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # nobody is reading: nothing to release
                pass

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("name", ["pipe.png", "pipe"])
def test_a_fifo_as_input_is_one_line_at_once(tracking, tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    start = time.monotonic()
    with unblocked(fifo):
        assert_one_line_exit_2(["predict", "--model_uri", "models:/none@champion", "--input", str(fifo)],
                               f"input: {fifo} is not a regular file or a folder")
    assert time.monotonic() - start < 4  # before: it waited for a writer forever
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "folder" / "pipe.png")  # in a folder, a FIFO is not an image: skipped
    _png(tmp_path / "folder")
    assert read_images(tmp_path / "folder").names == ["grey.png"]


def test_names_that_are_not_utf8_or_printable_are_printed_and_logged_escaped(tracking, genuine, tmp_path):
    folder = tmp_path / "in"
    (folder / "cat").mkdir(parents=True)
    pixels = np.full((32, 32, 3), 90, np.uint8)
    for raw in (b"\xff.png", b"cat/\xe9t\xe9.png", b"tab\there\nnewline.png", "été.png".encode()):
        Image.fromarray(pixels).save(os.path.join(os.fsencode(folder), raw), format="PNG")
    experiment = new_experiment()
    done = cli("predict", "--model_uri", genuine[0], "--input", str(folder), "--experiment", experiment)
    assert done.returncode == 0, done.stderr  # before: exit 1 writing predictions.csv, the run FAILED
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("accuracy ")  # 4 images (1 labelled), one line each
    names = sorted(line.split("\t")[0] for line in lines[:4])
    assert names == sorted(["cat/\\xe9t\\xe9.png", "tab\\there\\nnewline.png", "\\xff.png", "été.png"])
    done.stdout.encode("utf-8")  # what a UTF-8 terminal takes (surrogates would raise here)
    (run,) = runs_of(tracking, experiment)
    assert run.info.status == "FINISHED" and run.data.params["images"] == "4"
    rows = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/predictions.csv"))))
    assert sorted(row["file"] for row in rows) == names
    assert [row["true"] for row in rows if row["file"].startswith("cat/")] == ["cat"]


def _save(image: Image.Image, path: Path, **options) -> Path:
    """Save in the format PIL picks for options' `format` (default: from the suffix), e.g. a TIFF named .png:
    predict goes by the file's content, as PIL does."""
    image.save(path, **options)
    return path


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472, a smooth ramp
    expected = np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2)
    for name, image, options in (("i16.png", Image.fromarray(ramp), {}),  # PIL reads 16-bit PNGs as I;16
                                 ("i32.png", Image.fromarray(ramp.astype(np.int32)), {"format": "TIFF"}),  # mode I
                                 ("i16b.png", Image.fromarray(ramp.astype(">u2")), {"format": "TIFF"})):
        path = _save(image, tmp_path / name, **options)
        assert Image.open(path).mode == {"i16.png": "I;16", "i32.png": "I", "i16b.png": "I;16B"}[name]
        pixels = read_images(path).images[0]
        np.testing.assert_array_equal(pixels, expected)  # before: 99.6% white (clipped at 255)
        assert (pixels == 255).mean() < 0.01


def test_other_image_modes_give_sensible_pixels_or_one_line(tmp_path):
    white, red = [255, 255, 255], [255, 0, 0]
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0, 0, 0, 0])
    palette.paste(1, (0, 0, 16, 32))  # the left half is colour 1, transparent: shown on white
    cases = {
        "p.png": (palette, {"transparency": 1}, np.array([white] * 16 + [red] * 16)),
        "p.gif": (palette, {"transparency": 1}, np.array([white] * 16 + [red] * 16)),
        "la.png": (Image.new("LA", (32, 32), (0, 0)), {}, white),  # black, fully transparent
        "rgba.png": (Image.new("RGBA", (32, 32), (255, 0, 0, 128)), {}, [255, 127, 127]),  # half red on white
        "cmyk.png": (Image.new("CMYK", (32, 32), (0, 255, 255, 0)), {"format": "TIFF"}, red),
        "lab.png": (Image.new("LAB", (32, 32), (255, 128, 128)), {"format": "TIFF"}, [254, 255, 254]),
        "ycbcr.png": (Image.new("YCbCr", (32, 32), (76, 85, 255)), {"format": "TIFF"}, [254, 0, 0]),
        "one.png": (Image.new("1", (32, 32), 1), {}, white),
    }
    for name, (image, options, expected) in cases.items():
        pixels = read_images(_save(image, tmp_path / name, **options)).images[0]
        np.testing.assert_array_equal(pixels, np.broadcast_to(expected, pixels.shape), err_msg=name)
    photo = Image.new("RGB", (32, 16), (0, 0, 255))
    photo.paste((255, 0, 0), (0, 0, 16, 16))  # red on the left as stored; EXIF says turn it 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = read_images(_save(photo, tmp_path / "turned.jpg", exif=exif, quality=95)).images[0].astype(int)
    assert pixels[:12, :, 0].mean() > 200 and pixels[-12:, :, 2].mean() > 200  # red on top, as the camera saw it


@pytest.mark.parametrize("name,array,message", [
    ("float.png", np.linspace(0, 1, 1024, dtype=np.float32).reshape(32, 32), "floating-point pixels (mode F)"),
    ("wide.png", np.full((32, 32), 70000, np.int32), "32-bit pixels outside 0-65535 (mode I)"),
])
def test_pixels_of_no_known_range_are_one_line(tracking, tmp_path, name, array, message):
    path = _save(Image.fromarray(array), tmp_path / name, format="TIFF")
    assert_one_line_exit_2(["predict", "--model_uri", "models:/none@champion", "--input", str(path)], str(path),
                           message)


def _serve(folder: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """`mlflow models serve` of a model folder with MLflow's pickle deserialization off, as loading-models.md says
    to run it; (process, port)."""
    env = {**os.environ, PICKLE_SWITCH: "false",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}  # uvicorn on PATH
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(folder), "--env-manager",
                               "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return server, port


def _ask(port: int, inputs: np.ndarray) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"inputs": inputs.tolist()}).encode())
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_serving_with_pickle_off_answers_a_genuine_model_and_refuses_a_pickled_one(genuine, tmp_path):
    server, port = _serve(genuine[1], tmp_path)
    try:
        assert wait_healthy(server, port, seconds=120), "mlflow models serve did not start"
        rng = np.random.default_rng(0)
        status, zeros = _ask(port, np.zeros((2, 32, 32, 3), np.uint8))
        assert status == 200 and np.asarray(zeros["predictions"]).shape == (2, 10)
        # What loading-models.md warns of: the server casts JSON numbers to the signature's uint8 before the model
        # sees them, so floats in [0, 1) arrive as zeros and are answered; integers past 0-255 are refused.
        assert _ask(port, rng.random((2, 32, 32, 3))) == (200, zeros)
        status, refused = _ask(port, np.full((2, 32, 32, 3), 300))
        assert status == 400 and "out of bounds for uint8" in refused["message"]
    finally:
        stop_server(server)
    folder, marker = tampered(genuine[1], tmp_path, "pickled record in the pt2")  # our check lets it by: MLflow's
    server, port = _serve(folder, tmp_path)
    try:
        assert not wait_healthy(server, port, seconds=120) and server.wait(timeout=60) != 0
    finally:
        stop_server(server)
    assert not marker.exists()


def test_python_callers_get_a_refusal_for_float_images(genuine):
    model = mlflow.pyfunc.load_model(str(genuine[1]))
    with pytest.raises(mlflow.exceptions.MlflowException, match="dtype of input float64 does not match expected "
                                                                "dtype uint8"):
        model.predict(np.random.default_rng(0).random((2, 32, 32, 3)))
    assert np.asarray(model.predict(np.zeros((2, 32, 32, 3), np.uint8))).shape == (2, 10)


def test_a_torch_too_old_to_check_the_archive_is_one_line(tracking, genuine, tmp_path, monkeypatch):
    # MLflow refuses to vouch for a pt2 archive under torch < 2.10 (its weights-only unpickler had holes before):
    # with the switch off, predict says so instead of loading unchecked.
    monkeypatch.setattr(torch, "__version__", "2.9.1")
    assert_one_line_exit_2(["predict", "--model_uri", genuine[0], "--input", str(_png(tmp_path))],
                           "checks a model.pt2 for pickled records only with torch 2.10 or later, and this is "
                           "torch 2.9.1; upgrade torch")

"""A logged model's folder checked before MLflow loads it. optlab logs one kind of model: MLflow's pytorch flavor
holding a torch.export program (`data/model.pt2`) that takes uint8 images. Anything else a folder asks for (a
pickled `model.pth`, a pyfunc loader or code of its own, pickled records inside the pt2) could run code on
load, so it is refused before MLflow is called, and MLflow's own pickle switch is held off while it loads."""
from __future__ import annotations

import json
import os
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline.core.errors import UsageError, one_line

# MLflow 3.17 allows pickle deserialization unless this says false; with it false, its pytorch flavor refuses
# model.pth and checks the records of a pt2 archive with torch's weights-only unpickler before torch.export.load
# (which would otherwise unpickle them with weights_only=False).
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
MODEL_FILE = "model.pt2"
# A ResNet18's archive is 45 MB: the records' sizes are checked from the zip's directory before MLflow reads them.
MAX_ARCHIVE_BYTES = 2**30
INPUT_SPEC = [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, 32, 32, 3]}}]


@contextmanager
def pickle_off() -> Iterator[None]:
    """MLflow refuses pickles in the models it loads while this holds (the variable is put back after)."""
    saved = os.environ.get(PICKLE_SWITCH)
    os.environ[PICKLE_SWITCH] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PICKLE_SWITCH, None)
        else:
            os.environ[PICKLE_SWITCH] = saved


def check_model_folder(folder: Path, model_uri: str) -> None:
    """Refuse (UsageError, one line naming the URI and what is wrong) a downloaded model folder that is not an
    optlab model: data/ must hold model.pt2 alone, an intact zip archive as torch.export writes, and the MLmodel
    file must name only the pytorch flavor and its pyfunc loader, with no code, and the uint8 image signature."""
    problem = _data_problem(folder / "data") or _mlmodel_problem(folder / "MLmodel")
    if problem:
        raise UsageError(f"model_uri: {model_uri!r} is not a model optlab logged ({problem}); optlab loads only "
                         f"torch.export programs (data/{MODEL_FILE}) of MLflow's pytorch flavor, so it refuses it")


def _mlmodel_problem(path: Path) -> str:
    """What makes this MLmodel file something other than optlab's pt2 model ("" when nothing does)."""
    if not path.is_file():
        return "no MLmodel file"
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))  # safe_load builds plain data only
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        return f"MLmodel is not readable YAML ({type(error).__name__})"
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != {"python_function", "pytorch"}:
        have = sorted(map(str, flavors)) if isinstance(flavors, dict) else flavors
        return f"MLmodel flavors {_short(have)}, expected python_function and pytorch"
    pyfunc, torch_flavor = flavors["python_function"], flavors["pytorch"]
    if not isinstance(pyfunc, dict) or not isinstance(torch_flavor, dict):
        return "MLmodel flavors that are not mappings"
    required = {"loader_module": "mlflow.pytorch", "data": "data"}
    defaults = {"code": None, "predict_fn": "predict", "streamable": False,  # what MLflow takes when absent
                "pickle_module_name": "mlflow.pytorch.pickle_module"}
    for key, value in {**required, **defaults}.items():
        if pyfunc.get(key, defaults.get(key)) != value:
            return f"python_function {key} {_short(pyfunc.get(key))}, expected {value!r}"
    if torch_flavor.get("model_data") != "data" or torch_flavor.get("code") is not None:
        return (f"pytorch flavor model_data {_short(torch_flavor.get('model_data'))}, code "
                f"{_short(torch_flavor.get('code'))}, expected 'data' and none")
    return _signature_problem(spec.get("signature"))


def _signature_problem(signature: Any) -> str:
    """Whether the signature takes what predict sends: uint8 images (N, 32, 32, 3)."""
    try:
        inputs = json.loads(signature["inputs"])
    except (TypeError, KeyError, ValueError):
        return "no input signature"
    return "" if inputs == INPUT_SPEC else f"input signature {_short(inputs)}, expected {INPUT_SPEC}"


def _data_problem(data: Path) -> str:
    """What makes data/ something other than one torch.export archive ("" when nothing does)."""
    try:
        names = sorted(entry.name for entry in data.iterdir())
    except OSError:
        return "no data folder"
    if names != [MODEL_FILE]:
        return f"data/ holds {_short(names)}, expected {MODEL_FILE} alone"
    model = data / MODEL_FILE
    if model.is_symlink() or not model.is_file():
        return f"data/{MODEL_FILE} is not a regular file"
    try:
        with zipfile.ZipFile(model) as archive:
            size = sum(info.file_size for info in archive.infolist())
            if size > MAX_ARCHIVE_BYTES:
                return f"data/{MODEL_FILE} unpacks to {size} bytes, over the {MAX_ARCHIVE_BYTES}-byte cap"
            # torch reads the weights without checking their CRC: a damaged record would load as wrong weights
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):  # truncated, random bytes, another format
        return f"data/{MODEL_FILE} is not a zip archive as torch.export writes (damaged or replaced)"
    return f"data/{MODEL_FILE} is damaged (record {_short(damaged)} fails its checksum)" if damaged else ""


def _short(value: Any) -> str:
    """A value from the folder as one short line (repr escapes newlines; a hostile file can make it long)."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def load_refusal(error: BaseException) -> str:
    """A load error as one short reason: which record MLflow's pickle check refused, or the error's first line."""
    found = re.search(r"pickle is disallowed, but record '([^'\n]{1,200})'", str(error))
    if found:
        return (f"record {found.group(1)} of data/{MODEL_FILE} is neither plain tensors nor text: pickled data "
                "that could run code, or damaged")
    found = re.search(r"installed `torch` version \(([^)\n]{1,40})\) cannot safely verify", str(error))
    if found:
        return (f"MLflow checks a {MODEL_FILE} for pickled records only with torch 2.10 or later, and this is "
                f"torch {found.group(1)}; upgrade torch")
    return one_line(error)

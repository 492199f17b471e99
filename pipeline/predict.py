"""The `predict` entry point: classify images with a logged model, print and log the predictions; or continue a
prompt with a logged language model."""
from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline import tracking
from pipeline.config.tasks import PredictConfig, as_params
from pipeline.core.errors import EXIT_OK, UsageError
from pipeline.workloads.cifar.data import CIFAR_CLASSES
from pipeline.workloads.cifar.images import ImageSet, read_images
from pipeline.workloads.text.gpt import load_gpt

RUN_MODEL = re.compile(r"^runs:/([0-9a-f]{32})/model/?$")


def probabilities(predict, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (N, 10) for uint8 NHWC images: the logged model takes them as they are (it
    normalises inside), as any client of `mlflow models serve` would send them."""
    chunks = [np.asarray(predict(np.ascontiguousarray(images[start:start + batch_size], dtype=np.uint8)),
                         dtype=np.float32) for start in range(0, len(images), batch_size)]
    return np.concatenate(chunks)


def predictions_csv(items: ImageSet, probs: np.ndarray) -> str:
    """file, predicted class, probability (and the true class where known), one row per image."""
    buffer = io.StringIO()
    buffer.write("file,predicted,probability,true\n")
    for name, row, label in zip(items.names, probs, items.labels):
        true = CIFAR_CLASSES[label] if label >= 0 else ""
        quoted = '"' + name.replace('"', '""') + '"'
        buffer.write(f"{quoted},{CIFAR_CLASSES[int(row.argmax())]},{row.max():.6f},{true}\n")
    return buffer.getvalue()


def continue_prompt(cfg: PredictConfig) -> int:
    """A logged language model (train workload=shakespeare_gpt) continues the prompt: printed and logged."""
    found = RUN_MODEL.match(cfg.model_uri)
    if not found:
        raise UsageError(f"model_uri: a language model is named runs:/<run id>/model, got {cfg.model_uri!r}")
    with tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
        shape_file = tracking.download(found[1], "model/model.json", scratch)
        weights = tracking.download(found[1], "model/weights.pt", scratch)
        if shape_file is None or weights is None:
            raise UsageError(f"model_uri: run {found[1]} has no language model (model/model.json, weights.pt)")
        model, vocabulary = load_gpt(Path(weights), json.loads(Path(shape_file).read_text(encoding="utf-8")))
    index = {char: position for position, char in enumerate(vocabulary)}
    unknown = sorted(set(cfg.prompt) - set(index))
    if unknown:
        raise UsageError(f"prompt: characters {''.join(unknown)!r} are not in the model's vocabulary")
    ids = model.generate([index[c] for c in cfg.prompt], cfg.length, cfg.temperature,
                         torch.Generator().manual_seed(cfg.seed))
    text = "".join(vocabulary[i] for i in ids)
    print(text)
    with tracking.open_run(cfg.experiment, "predict", {"task": "predict", "model_uri": cfg.model_uri}) as run:
        run.log_params(as_params(cfg))
        run.log_text(text, "continuation.txt")
    return EXIT_OK


def main(cfg: PredictConfig) -> int:
    """Read the images and the model (errors before any run starts), predict, print a line per image, log."""
    if cfg.prompt:
        return continue_prompt(cfg)
    items = read_images(cfg.input)
    predict = tracking.load_predictor(cfg.model_uri)
    probs = probabilities(predict, items.images, cfg.batch_size)
    for name, row in zip(items.names, probs):
        print(f"{name}\t{CIFAR_CLASSES[int(row.argmax())]}\t{row.max():.4f}")
    known = items.labels >= 0
    accuracy = float((probs.argmax(1)[known] == items.labels[known]).mean()) if known.any() else None
    with tracking.open_run(cfg.experiment, "predict", {"task": "predict", "model_uri": cfg.model_uri}) as run:
        run.log_params({**as_params(cfg), "images": str(len(items.names))})
        run.log_text(predictions_csv(items, probs), "predictions.csv")
        if accuracy is not None:
            run.log_metrics({"accuracy": accuracy}, step=0)
    if accuracy is not None:
        print(f"accuracy {accuracy:.2%} on {int(known.sum())} labelled images (run {run.run_id})")
    return EXIT_OK

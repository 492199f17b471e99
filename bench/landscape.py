"""Row 'landscape': seconds to draw the loss landscape of an 8-optimizer sweep (the notebook's seven and nesterov,
lockstep from one start, their paths recorded), against the sweep's own training time; tiny_cnn on CPU,
resnet18 on a GPU. Timed as compare does it (landscape_report.draw), with a memory logger instead of MLflow: the
row measures the landscape, not the tracking."""
from __future__ import annotations

import dataclasses
import time

import torch

from bench.data import describe, load_arrays
from bench.machine import log
from bench.table import Row, times
from pipeline.cifar import build_loaders, build_trainer
from pipeline.config.tasks import build_config
from pipeline.landscape import report as landscape_report
from pipeline.optim.registry import NOTEBOOK_OPTIMIZERS
from pipeline.training.hooks import MemoryLogger
from pipeline.training.loop import fit

OPTIMIZERS = (*NOTEBOOK_OPTIMIZERS, "nesterov")


def landscape_rows(device: torch.device, quick: bool) -> list[Row]:
    """One row: landscape seconds over training seconds of the same sweep."""
    model = "resnet18" if device.type == "cuda" else "tiny_cnn"
    grid, images, epochs, train = (7, 128, 1, 256) if quick else (21, 512, 2, 1024)
    arrays = load_arrays()
    source = describe(arrays)
    arrays = dataclasses.replace(arrays, train_x=arrays.train_x[:train], train_y=arrays.train_y[:train],
                                 test_x=arrays.test_x[:256], test_y=arrays.test_y[:256])
    cfgs = [build_config("cifar", {"model": model, "optimizer": name, "epochs": str(epochs), "device": device.type,
                                   "landscape": "true", "landscape_grid": str(grid),
                                   "landscape_images": str(images)}) for name in OPTIMIZERS]
    loaders = build_loaders(cfgs[0], arrays, device)
    trainers = [build_trainer(cfg, loaders, device) for cfg in cfgs]
    for trainer in trainers:
        trainer.recorder = landscape_report.recorder(trainer)
    log(f"landscape: {len(cfgs)} optimizers x {epochs} epochs of {model}, then a {grid} x {grid} grid")
    began = time.perf_counter()
    fit([t.member() for t in trainers], loaders[0], loaders[1], epochs, trainers[0].precision, 1.0,
        [lambda *_: None] * len(trainers), show_progress=False)
    trained = time.perf_counter() - began
    began = time.perf_counter()
    landscape_report.draw(MemoryLogger(), cfgs[0], {c.optimizer: t.recorder for c, t in zip(cfgs, trainers)},
                          arrays, device)
    drawn = time.perf_counter() - began
    points = sum(len(t.recorder.deltas) for t in trainers)
    note = (f"{len(cfgs)} optimizers ({', '.join(OPTIMIZERS)}) of {model} trained lockstep for {epochs} epochs on "
            f"{train} images of the {source}; the landscape: {grid * grid} grid points and {points} path points, "
            f"each on {images} images (BatchNorm measured at every point), PCA directions, both plots drawn")
    return [Row(f"landscape 8 opt {model}", f"{drawn:.1f} s landscape", f"{trained:.1f} s training",
                times(drawn / trained), "report (against training)", "-", (note,))]

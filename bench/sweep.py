"""CUDA row 'sweep': the notebook's 8 optimizers x 5 epochs, one after another (solo) vs in lockstep, projected."""
from __future__ import annotations

import math

import numpy as np
import torch

from bench.machine import best_seconds, log
from bench.table import Row, met, times
from pipeline.optim.registry import NOTEBOOK_OPTIMIZERS, OptimizerSettings, build_optimizer
from pipeline.training.loop import Member, Precision, train_epoch
from pipeline.workloads.cifar.data import CifarLoader
from pipeline.workloads.cifar.models import build_model

OPTIMIZERS = (*NOTEBOOK_OPTIMIZERS, "nesterov")  # the notebook's seven and the nesterov it promised
EPOCHS = 5
TRAIN_IMAGES = 50_000  # the full CIFAR-10 training set
BATCH = 32  # the notebook's
TARGET_S = 60.0  # wall seconds for the whole lockstep sweep on an H200


def build_members(model: str, names: tuple[str, ...], device: torch.device, precision: Precision) -> list[Member]:
    """One seeded model and optimizer per name, set up as our cifar runs do on this device."""
    members = []
    for name in names:
        torch.manual_seed(0)  # the same initial weights for every optimizer
        net = build_model(model).to(device)
        if precision.channels_last and device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(OptimizerSettings(name), net.parameters(), fast=device.type == "cuda")
        members.append(Member(net, optimizer))
    return members


def seconds_per_batch(model: str, x: np.ndarray, y: np.ndarray, device: torch.device, lockstep: bool,
                      warmup: int, timed: int, names: tuple[str, ...] = OPTIMIZERS) -> float:
    """Seconds for every optimizer to take one step on one batch: all on each batch, or one optimizer at a time."""
    precision = Precision(device, bf16=True, channels_last=True)  # params.yaml defaults
    warm = CifarLoader(x[:warmup * BATCH], y[:warmup * BATCH], BATCH, train=True, device=device)
    batches = CifarLoader(x[:timed * BATCH], y[:timed * BATCH], BATCH, train=True, seed=1, device=device,
                          drop_last=True)
    groups = [build_members(model, names, device, precision)] if lockstep else \
        [build_members(model, (name,), device, precision) for name in names]
    total = 0.0
    for members in groups:  # solo: each optimizer trains alone over the same number of batches
        train_epoch(members, warm, precision, show_progress=False)
        total += best_seconds(lambda: train_epoch(members, batches, precision, show_progress=False), 1, device)
    return total / timed


def sweep_row(model: str, x: np.ndarray, y: np.ndarray, device: torch.device, quick: bool) -> Row:
    """Both modes timed over a few batches, projected to 8 optimizers x 5 epochs of 50,000 images."""
    warmup, timed = (3, 10) if quick else (5, 40)
    log(f"cuda: sweep of {len(OPTIMIZERS)} optimizers, solo vs lockstep, {timed} timed batches each")
    solo = seconds_per_batch(model, x, y, device, False, warmup, timed)
    lockstep = seconds_per_batch(model, x, y, device, True, warmup, timed)
    batches = EPOCHS * math.ceil(TRAIN_IMAGES / BATCH)
    note = (f"projected: seconds per batch for all {len(OPTIMIZERS)} optimizers ({timed} batches timed after "
            f"{warmup} warm-up) x {batches} batches ({EPOCHS} epochs of {TRAIN_IMAGES:,} images at batch {BATCH}); "
            "evaluation and logging not included")
    return Row(f"cuda sweep {len(OPTIMIZERS)} opt x {EPOCHS} ep", f"{lockstep * batches:.0f} s lockstep",
               f"{solo * batches:.0f} s solo", times(solo / lockstep), f"lockstep <= {TARGET_S:.0f} s wall",
               met(lockstep * batches <= TARGET_S), (note,))

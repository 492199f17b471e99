"""Rows 'cifar': training images/s of our loader + train_epoch against the notebook's DataLoader loop."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.baselines import NotebookCifar, notebook_loader, notebook_train_seconds, torchvision_train_transform
from bench.data import describe, images, load_arrays
from bench.machine import best_seconds, interleaved_best, log
from bench.table import Row, met, rate, times
from pipeline.optim.registry import OptimizerSettings, build_optimizer
from pipeline.training.loop import Member, Precision, train_epoch
from pipeline.workloads.cifar.data import CifarArrays, CifarLoader
from pipeline.workloads.cifar.models import build_model

MODELS = ("resnet18", "resnet18_imagenet")
NOTEBOOK_BATCH = 32  # the notebook's, and our runs' default (params.yaml cifar.batch_size)
TARGET = 1.3  # ours / the notebook loop at batch 32, on any device; the GPU goals live in bench.cuda


@dataclass(frozen=True)
class Plan:
    """How many batches one measurement trains (a warm-up, then the timed ones) and how many rounds are run."""

    warmup: int
    timed: int
    rounds: int  # alternating rounds of every measure; the best is kept


def plan_for(model: str, batch: int, device: torch.device, quick: bool) -> Plan:
    """Small on CPU (resnet18 trains ~50 images/s there), about 4,000 timed images on a GPU."""
    if device.type == "cuda":
        return Plan(warmup=5, timed=max(4096 // batch, 8), rounds=2)
    images_timed = 96 if quick else (384 if model == "resnet18" else 1536)  # resnet18_imagenet: ~15x fewer FLOPs
    return Plan(warmup=1, timed=max(images_timed // batch, 1), rounds=1 if quick else 2)


def seeded_model(name: str, device: torch.device, precision: Precision) -> nn.Module:
    """The same initial weights for both loops (seed 0), on the device, channels_last where the precision says."""
    torch.manual_seed(0)
    model = build_model(name).to(device)
    if precision.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def flops_per_image(name: str, batch: int = 4) -> float:
    """FLOPs of one forward + backward per image (convolutions and matmuls, as counted by FlopCounterMode)."""
    model = build_model(name).train()
    x = torch.randn(batch, 3, 32, 32)
    labels = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), labels).backward()
    return counter.get_total_flops() / batch  # linear in the batch: per image, counted on CPU in fp32


def ours_images_per_s(name: str, x: np.ndarray, y: np.ndarray, batch: int, device: torch.device,
                      plan: Plan) -> float:
    """Images/s of pipeline's path: uint8 data on the device, batched augmentation, sums read once per epoch."""
    cuda = device.type == "cuda"
    # As params.yaml's defaults: bf16 autocast where the device runs it natively, channels_last on CUDA.
    precision = Precision(device, bf16=True, channels_last=True)
    model = seeded_model(name, device, precision)
    # The notebook's SGD(lr=0.001, momentum=0.9); fused/foreach kernels on CUDA, as our cifar runs build it.
    member = Member(model, build_optimizer(OptimizerSettings("momentum"), model.parameters(), fast=cuda))
    count = plan.timed * batch
    # Loaders are built outside the timing: the upload to the device happens once per run, not per epoch.
    warm = CifarLoader(x[:plan.warmup * batch], y[:plan.warmup * batch], batch, train=True, device=device)
    timed = CifarLoader(x[:count], y[:count], batch, train=True, seed=1, device=device, drop_last=True)
    train_epoch([member], warm, precision, show_progress=False)
    seconds = best_seconds(lambda: train_epoch([member], timed, precision, show_progress=False),
                           1, device)
    return count / seconds


def notebook_images_per_s(name: str, x: np.ndarray, y: np.ndarray, device: torch.device, plan: Plan) -> float:
    """Images/s of the notebook's loop: PIL transforms in 2 workers, fp32, per-step host reads."""
    model = seeded_model(name, device, Precision(device))
    dataset = NotebookCifar(x, y, torchvision_train_transform())
    seconds, seen = notebook_train_seconds(model, notebook_loader(dataset, NOTEBOOK_BATCH), device, plan.warmup,
                                           plan.timed)
    return seen / seconds


def _note(batch: int, plan: Plan, base_plan: Plan, device: torch.device, gflops: float, ours: float,
          base: float) -> str:
    """How one cifar row was measured, and the arithmetic rate each loop reached."""
    ours_precision = "bf16 autocast" if Precision(device, bf16=True).autocast_bf16 else "fp32"
    return (f"ours: CifarLoader (uint8 on {device.type}) + train_epoch in {ours_precision}, batch {batch}, "
            f"{plan.timed * batch} images timed after {plan.warmup} warm-up batch(es); notebook: fp32, batch "
            f"{NOTEBOOK_BATCH}, {base_plan.timed * NOTEBOOK_BATCH} images after {base_plan.warmup}; best of "
            f"{plan.rounds} alternating rounds; {gflops:.3g} GFLOP/image fwd+bwd, so ours runs "
            f"{gflops * ours:.0f} GFLOP/s, the notebook {gflops * base:.0f} GFLOP/s")


def model_rows(name: str, arrays: CifarArrays, device: torch.device, quick: bool) -> list[Row]:
    """Our path at batch 32 (and 128 in the full run) against the notebook at batch 32, for one model."""
    batches = (NOTEBOOK_BATCH,) if quick else (NOTEBOOK_BATCH, 128)
    plans = {batch: plan_for(name, batch, device, quick) for batch in batches}
    base_plan = plans[NOTEBOOK_BATCH]
    x, y = images(arrays, (base_plan.warmup + base_plan.timed) * max(batches))
    measures = {"notebook b32": lambda: notebook_images_per_s(name, x, y, device, base_plan)}
    for batch in batches:
        measures[f"ours b{batch}"] = partial(ours_images_per_s, name, x, y, batch, device, plans[batch])
    log(f"cifar {name}: notebook loop vs ours at batch {', '.join(map(str, batches))}, {base_plan.rounds} rounds")
    best = interleaved_best(measures, base_plan.rounds)
    base, target = best["notebook b32"], TARGET
    gflops = flops_per_image(name) / 1e9  # to show how close to the hardware's arithmetic both loops run
    rows = []
    for batch in batches:
        ours = best[f"ours b{batch}"]
        rows.append(Row(f"cifar {name} b{batch}", rate(ours, "img/s"), rate(base, f"img/s (b{NOTEBOOK_BATCH})"),
                        times(ours / base), f">= {target}x", met(ours / base >= target),
                        (_note(batch, plans[batch], base_plan, device, gflops, ours, base),)))
    return rows


def cifar_rows(device: torch.device, quick: bool) -> list[Row]:
    """Both models' rows; the first carries a note on where the images came from."""
    arrays = load_arrays()
    rows = []
    for name in MODELS:
        rows += model_rows(name, arrays, device, quick)
    first = rows[0]
    rows[0] = Row(*first.cells(), notes=first.notes + (f"images: {describe(arrays)}; optimizer SGD momentum 0.9 "
                                                        "lr 0.001 in both loops",))
    return rows

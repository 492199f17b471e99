"""CUDA-only rows: resnet18 images/s at batch 512, achieved TFLOP/s, and the 8 x 5 sweep solo vs lockstep."""
from __future__ import annotations

import torch

from bench.cifar import NOTEBOOK_BATCH, Plan, flops_per_image, notebook_images_per_s, ours_images_per_s
from bench.data import images, load_arrays
from bench.machine import log
from bench.sweep import TARGET_S, sweep_row
from bench.table import Row, met, rate, times, unmeasured

MODEL = "resnet18"
BIG_BATCH = 512
PEAK_TFLOPS = 790.0  # H200 dense bf16 tensor-core peak, TFLOP/s
TARGET_IMAGES_S = 50_000  # images/s at batch 512 on an H200
TARGET_VS_NOTEBOOK = 30.0  # ours at batch 512 / the notebook's loop at batch 32, on an H200

NAMES = (f"cuda {MODEL} b{BIG_BATCH} img/s", f"cuda {MODEL} b{BIG_BATCH} TFLOP/s", "cuda sweep 8 opt x 5 ep")
TARGETS = (f">= {TARGET_IMAGES_S:,} img/s and >= {TARGET_VS_NOTEBOOK:.0f}x", "report (share of peak)",
           f"lockstep <= {TARGET_S:.0f} s wall")


def _speed_rows(device: torch.device, quick: bool) -> list[Row]:
    """Our path at batch 512 (bf16, channels_last) against the notebook loop, and the TFLOP/s that makes."""
    arrays = load_arrays()
    base_plan = Plan(warmup=5, timed=64 if quick else 256, rounds=1)
    x, y = images(arrays, (base_plan.warmup + base_plan.timed) * NOTEBOOK_BATCH)
    log(f"cuda: notebook loop, {MODEL} batch {NOTEBOOK_BATCH}, {base_plan}")
    base = notebook_images_per_s(MODEL, x, y, device, base_plan)
    plan = Plan(warmup=3, timed=10 if quick else 40, rounds=1 if quick else 3)
    x, y = images(arrays, plan.timed * BIG_BATCH)
    log(f"cuda: ours, {MODEL} batch {BIG_BATCH} bf16 channels_last, {plan}")
    ours = max(ours_images_per_s(MODEL, x, y, BIG_BATCH, device, plan) for _ in range(plan.rounds))
    ok = ours >= TARGET_IMAGES_S and ours / base >= TARGET_VS_NOTEBOOK
    speed = Row(NAMES[0], rate(ours, "img/s"), rate(base, f"img/s (notebook b{NOTEBOOK_BATCH})"), times(ours / base),
                TARGETS[0], met(ok), (f"bf16 autocast + channels_last, {plan.timed * BIG_BATCH} images timed after "
                                      f"{plan.warmup} warm-up batches, best of {plan.rounds}",))
    flops = flops_per_image(MODEL)
    achieved = flops * ours / 1e12
    share = Row(NAMES[1], f"{achieved:.1f} TFLOP/s", f"{PEAK_TFLOPS:.0f} TFLOP/s (bf16 peak)",
                f"{100 * achieved / PEAK_TFLOPS:.1f}% of peak", TARGETS[1], "-",
                (f"{flops / 1e9:.2f} GFLOP per image forward + backward (FlopCounterMode) x images/s above",))
    return [speed, share]


def cuda_rows(device: torch.device, quick: bool) -> list[Row]:
    """Measured on a CUDA device; 'unmeasured (no CUDA device)' rows otherwise."""
    if device.type != "cuda":
        return [unmeasured(name, "no CUDA device", target) for name, target in zip(NAMES, TARGETS)]
    rows = _speed_rows(device, quick)
    x, y = images(load_arrays(), 50 * 32)  # enough for the sweep's warm-up and timed batches
    return rows + [sweep_row(MODEL, x, y, device, quick)]

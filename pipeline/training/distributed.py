"""torch.distributed for one training run over several processes (torchrun, DistributedDataParallel): which
process this is, the process group, the sums that make every rank report the figures of one process, batches
split by rank, and synchronised BatchNorm. No I/O, no mlflow."""
from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from pipeline.core.errors import UsageError


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank (0 logs), size (processes in all), local_rank (its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process talks to MLflow and the terminal: rank 0."""
        return self.rank == 0


SINGLE = World()


def world_from_env() -> World:
    """The World torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; one process when it set none."""
    try:
        return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except (KeyError, ValueError):
        return SINGLE


def backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def start(world: World, device: torch.device) -> None:
    """Join the process group (torchrun's rendezvous, through the environment) once per process."""
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group(backend(device), **({"device_id": device} if device.type == "cuda" else {}))


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """`tensor` summed over every rank, in place (as it is with one process)."""
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_bytes(data: bytes | None, world: World, device: torch.device) -> bytes | None:
    """Rank 0's bytes (or its None) on every rank, sent as a tensor: nothing is pickled."""
    if world.size == 1:
        return data
    size = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    if int(size) < 0:
        return None
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if world.main else \
        torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().numpy()) if not world.main else data


class ShardedBatches:
    """Each global batch of `batches` (the same seeded order and augmentation on every rank), cut into this
    rank's share: (images, labels, denominator), the denominator being the global batch's size over the number
    of ranks: each rank's summed loss over it, averaged over ranks by DDP, is the mean over the global batch. A
    last global batch too small for every rank to get two images (BatchNorm in training needs them) is dropped
    from training."""

    def __init__(self, batches: Iterable, world: World, train: bool) -> None:
        self.batches, self.world, self.train = batches, world, train

    def __len__(self) -> int:
        full = len(self.batches)
        last = self.batches.images_per_epoch - (full - 1) * self.batches.batch_size if full else 0
        return full - (self.train and full > 0 and last < 2 * self.world.size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        count = len(self)
        for index, (images, labels) in enumerate(self.batches):
            if index >= count:
                break
            share = torch.tensor_split(torch.arange(labels.shape[0], device=labels.device), self.world.size)
            mine = share[self.world.rank]
            yield images[mine], labels[mine], labels.shape[0] / self.world.size


def check_shares(images: int, processes: int) -> None:
    """Refuse training data that leaves a process without a batch: with batch_size >= 2 per process (checked in
    the config), every process gets 2 images or more of a batch each epoch exactly when there are 2 per process in
    all (ShardedBatches drops a batch too small to give each two; a process with no batch trains nothing)."""
    if processes > 1 and images < 2 * processes:
        raise UsageError(f"train_limit: {images} training images give {processes} processes fewer than 2 each; "
                         f"use at least {2 * processes} (or fewer processes)")


class _SumOverRanks(torch.autograd.Function):
    """An all-reduce (sum) that autograd goes back through: the gradient of a sum over ranks is the sum of
    the ranks' gradients."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch, summed over every rank
    through a differentiable all-reduce: what sync_bn=true does on CPU processes (gloo), where
    torch.nn.SyncBatchNorm does not run (it is GPU-only); on GPUs optlab uses torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        channels, xf = x.shape[1], x.float()  # statistics in fp32, also under bf16 autocast
        count = torch.full((1,), x.numel() / channels, dtype=torch.float32, device=x.device)
        totals = _SumOverRanks.apply(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), momentum)
        scale = self.weight / torch.sqrt(var + self.eps)
        return (xf * scale.view(1, -1, 1, 1) + (self.bias - mean * scale).view(1, -1, 1, 1)).to(x.dtype)


def _swap_batchnorm(module: nn.Module, make) -> nn.Module:
    """A copy-free conversion of every BatchNorm2d-like layer (parameters and buffers kept) by `make`."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            replacement = make(child)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(module, name, replacement.to(child.running_mean.device))
        else:
            _swap_batchnorm(child, make)
    return module


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm normalised over the global batch: torch.nn.SyncBatchNorm on GPUs, CpuSyncBatchNorm on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_batchnorm(model, lambda bn: CpuSyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine,
                                                               bn.track_running_stats))


def plain_batchnorm(model: nn.Module) -> nn.Module:
    """The model with plain BatchNorm2d layers again (same weights and statistics): what gets logged and
    exported, which needs no process group."""
    def plain(bn: nn.Module) -> nn.Module:
        return nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)

    needs = any(isinstance(m, (nn.SyncBatchNorm, CpuSyncBatchNorm)) for m in model.modules())
    return _swap_batchnorm(model, plain) if needs else model


class Stopped(Exception):
    """torchrun stopped this process (SIGTERM) because another process of the job failed."""


def _stopped(signum: int, frame: object) -> None:
    raise Stopped("torchrun stopped this process: another process of the job failed")


@contextlib.contextmanager
def job(world: World, device: torch.device) -> Iterator[None]:
    """This process's part in a multi-process job: in the process group for the block, SIGTERM (torchrun
    stopping the job) raised as Stopped so that open runs end FAILED instead of staying RUNNING."""
    if world.size == 1:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _stopped)
    start(world, device)
    try:
        yield
        dist.barrier()  # leave together: a rank that tore down its connections first could abort a slower peer
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop()


def lost_contact(error: BaseException, world: World) -> bool:
    """Whether `error` is a collective that failed because another process of the job is gone."""
    if world.size == 1 or not isinstance(error, RuntimeError):
        return False
    return isinstance(error, dist.DistError) or any(
        word in str(error) for word in ("Connection closed", "Connection reset", "gloo", "NCCL", "Broken pipe"))

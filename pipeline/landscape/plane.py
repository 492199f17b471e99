"""Loss landscapes of the real network (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): the
weights an optimizer passes through, kept on the host as distances from the start; a plane through the start
that the paths of a whole sweep (every optimizer starts from the same seeded weights) lie near; each path's
coordinates in it; and a grid over it. Tensors in, tensors out: no model, no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

RECORD_PER_EPOCH = 4  # snapshots of the weights per epoch, evenly spaced, the last at the epoch's end
CHUNK = 1 << 18  # parameters per block of the sums over the weight vector: 168 points x 2^18 x 8 bytes = 352 MB


class NotDrawable(ValueError):
    """The recorded paths give no landscape to draw (the message says why); the runs themselves are fine."""


def flat(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The parameters as one float32 vector, on their device."""
    return torch.cat([p.detach().reshape(-1).float() for p in params])


@dataclass
class Recorder:
    """One optimizer's path: its weights' distance from the start at RECORD_PER_EPOCH evenly spaced steps of
    every epoch, as float16 on the host (half of float32's memory; a distance needs no more digits than a plot
    shows). Called after every optimizer step; a point that is not finite in float16 (a diverged run, or weights
    that moved past float16's range) ends the path there."""

    params: list[torch.Tensor]
    steps_per_epoch: int
    origin: torch.Tensor = field(init=False)  # float32, on the parameters' device
    steps: list[int] = field(default_factory=lambda: [0])
    deltas: list[torch.Tensor] = field(init=False)
    done: int = 0  # optimizer steps taken
    broken: bool = False

    def __post_init__(self) -> None:
        self.params = list(self.params)
        self.steps_per_epoch = max(1, self.steps_per_epoch)
        self.origin = flat(self.params)
        self.deltas = [torch.zeros(self.origin.numel(), dtype=torch.float16)]
        self.marks = {max(1, round(k * self.steps_per_epoch / RECORD_PER_EPOCH))
                      for k in range(1, RECORD_PER_EPOCH + 1)}

    def resumed(self, epochs_done: int) -> None:
        """A resumed run: count steps from the epoch it continues after (its earlier path is not known)."""
        self.done = epochs_done * self.steps_per_epoch

    def __call__(self) -> None:
        self.done += 1
        if self.broken or (self.done - 1) % self.steps_per_epoch + 1 not in self.marks:
            return
        # Checked as stored: a finite float32 distance past float16's 65,504 would be stored as inf.
        delta = (flat(self.params) - self.origin).to("cpu", torch.float16)
        if not bool(torch.isfinite(delta).all()):
            self.broken = True
            return
        self.steps.append(self.done)
        self.deltas.append(delta)


@dataclass(frozen=True)
class Plane:
    """Two directions (2, P) through the shared start, and how much of the paths each one holds (PCA only)."""

    directions: torch.Tensor
    explained: tuple[float, float] | None  # share of the paths' squared distance from the start, per direction
    kind: str  # pca | random


def _gram(deltas: list[torch.Tensor]) -> torch.Tensor:
    """(T, T) float64 inner products of the deltas, summed block by block over the parameters."""
    gram = torch.zeros(len(deltas), len(deltas), dtype=torch.float64)
    for begin in range(0, deltas[0].numel(), CHUNK):
        block = torch.stack([d[begin: begin + CHUNK] for d in deltas]).double()
        gram += block @ block.T
    return gram


def _combine(weights: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
    """(K, P) float32: row k = sum_i weights[i, k] * deltas[i]."""
    out = torch.zeros(weights.shape[1], deltas[0].numel(), dtype=torch.float32)
    for weight, delta in zip(weights.float(), deltas):
        out += weight[:, None] * delta.float()[None, :]
    return out


def pca_plane(deltas: list[torch.Tensor], seed: int = 0) -> Plane:
    """The plane of the two leading principal directions of every path's distance from the shared start
    (uncentred: through the start itself, so every path begins at (0, 0)), orthonormal. When the paths span a
    single line, the second direction is a seeded random one orthogonal to it."""
    gram = _gram(deltas)
    values, vectors = torch.linalg.eigh(gram)  # ascending
    total = float(values.clamp_min(0).sum())
    if total <= 0:
        raise NotDrawable("every recorded point is the start (no weight moved by more than float16 resolves, "
                          "about 6e-8): no path to draw a plane through")
    top, scale = vectors[:, [-1, -2]], values[[-1, -2]].clamp_min(0)
    directions = _combine(top / scale.clamp_min(1e-300).sqrt(), deltas)
    if float(scale[1]) <= 1e-12 * float(scale[0]):  # one line: any orthogonal direction draws it exactly
        other = torch.randn(directions.shape[1], generator=torch.Generator().manual_seed(seed))
        other -= (other @ directions[0]) * directions[0]
        directions[1] = other / other.norm()
    directions = _orient(directions, deltas[-1])
    return Plane(directions, (float(scale[0]) / total, float(scale[1]) / total), "pca")


def _orient(directions: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Signs that put the last recorded point in the positive quadrant (a direction's sign means nothing)."""
    signs = torch.where(directions @ last.float() < 0, -1.0, 1.0)
    return directions * signs[:, None]


def random_plane(origin: list[torch.Tensor], seed: int = 0) -> Plane:
    """Li et al.'s filter-normalised random directions: Gaussian, each filter (a slice along a tensor's first
    dimension) scaled to the norm of the same filter of the start's weights; zero for 1-D tensors (biases,
    BatchNorm), as the paper does."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(2):
        parts = []
        for weights in origin:
            weights = weights.detach().float().cpu()
            if weights.ndim <= 1:
                parts.append(torch.zeros(weights.numel()))
                continue
            noise = torch.randn(weights.shape, generator=generator)
            norms = weights.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1).clamp_min(1e-12)
            parts.append((noise * norms.view(-1, *[1] * (weights.ndim - 1))).reshape(-1))
        rows.append(torch.cat(parts))
    return Plane(torch.stack(rows), None, "random")


def project(plane: Plane, deltas: list[torch.Tensor]) -> torch.Tensor:
    """(T, 2) coordinates of each point in the plane: the least-squares combination of its two directions
    (for PCA's orthonormal directions, the dot products)."""
    metric = plane.directions @ plane.directions.T  # (2, 2)
    dots = torch.stack([plane.directions @ d.float() for d in deltas])  # (T, 2)
    return torch.linalg.solve(metric, dots.T).T


def grid_axes(coords: torch.Tensor, size: int, margin: float = 0.25,
              least: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two linspaces of `size` points that cover every coordinate with `margin` of the span on each side (and
    at least [-least, least])."""
    axes = []
    for column in coords.T:
        low, high = float(column.min()), float(column.max())
        pad = margin * max(high - low, 1e-12)
        axes.append(torch.linspace(min(low - pad, -least), max(high + pad, least), size))
    return axes[0], axes[1]

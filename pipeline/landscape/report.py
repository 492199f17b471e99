"""What a landscape logs, on a single cifar run or a compare's parent: the plane through the shared start (PCA
of every optimizer's path, or Li et al.'s filter-normalised random directions), the loss over a grid on it and
along the paths, as plots/landscape_contour.png, plots/landscape_surface.png, landscape.csv (x, y, loss, acc)
and landscape_paths.csv (optimizer, step, x, y, loss)."""
from __future__ import annotations

import io
import sys
import time
from typing import Iterable, Mapping

import numpy as np
import torch

from pipeline.config.tasks import CifarConfig
from pipeline.core.errors import one_line
from pipeline.landscape import loss_grid
from pipeline.landscape.plane import NotDrawable, Recorder, grid_axes, pca_plane, project, random_plane
from pipeline.training.hooks import RunHooks, RunLogger
from pipeline.training.loop import Precision
from pipeline.viz import landscape as landscape_figures
from pipeline.workloads.cifar.data import CIFAR_CLASSES, CifarArrays, CifarLoader
from pipeline.workloads.cifar.models import build_model


def enabled(cfg: CifarConfig, device: torch.device) -> bool:
    """landscape=true, or unset (null) and a one-process run on a GPU."""
    return cfg.landscape if cfg.landscape is not None else device.type == "cuda" and cfg.nproc == 1


def recorder(trainer: object) -> Recorder:
    """A recorder of the trainer's path (its plain model's parameters), steps counted per training epoch."""
    return Recorder(list(trainer.model.parameters()), len(trainer.batches()[0]))  # type: ignore[attr-defined]


# Images per forward pass at each point, on a GPU (a training batch of 32 leaves it idle); on CPU the run's own
# batch: tiny_cnn took 0.11 s a point at 32 and 0.16 s at 256 on 2 cores (activations outgrow the caches).
GPU_BATCH = 512


def _images(cfg: CifarConfig, arrays: CifarArrays, device: torch.device) -> CifarLoader:
    """The first landscape_images training images, unaugmented, in whole batches: every point's sample."""
    count = min(cfg.landscape_images, len(arrays.train_y))
    batch = min(count, GPU_BATCH if device.type == "cuda" else cfg.batch_size)
    return CifarLoader(arrays.train_x[:count], arrays.train_y[:count], batch, train=False, device=device).sample(count)


def _csv(header: str, rows: list[tuple]) -> str:
    buffer = io.StringIO()
    buffer.write(header + "\n")
    for row in rows:
        buffer.write(",".join(str(value) if isinstance(value, str) else f"{value:.9g}" for value in row) + "\n")
    return buffer.getvalue()


def draw(run: RunLogger, cfg: CifarConfig, recorders: Mapping[str, Recorder], arrays: CifarArrays,
         device: torch.device, left_out: Iterable[str] = ()) -> bool:
    """Compute the landscape of the recorded paths (all from one start; those of `left_out`, diverged runs,
    not) and log its plots and tables; returns whether it was drawn. One that cannot be drawn (no path left the
    start, every run diverged) is one warning line and the run's tag `landscape_skipped`: the runs trained
    well, and the run keeps its status."""
    left_out = sorted(set(left_out) & set(recorders))
    try:
        if left_out and len(left_out) == len(recorders):
            raise NotDrawable(f"every run diverged ({', '.join(left_out)}): no path to draw")
        if left_out:
            print(f"landscape: leaving out {', '.join(left_out)} (diverged)")
        _draw(run, cfg, {label: r for label, r in recorders.items() if label not in left_out}, arrays, device)
        return True
    except (ValueError, torch.linalg.LinAlgError) as error:  # NotDrawable says why; the others as they are
        why = str(error) if isinstance(error, NotDrawable) else f"the plane could not be computed ({one_line(error)})"
        print(f"warning: landscape not drawn: {why}", file=sys.stderr)
        run.set_tags({"landscape_skipped": why[:5000]})
        return False


def _draw(run: RunLogger, cfg: CifarConfig, recorders: Mapping[str, Recorder], arrays: CifarArrays,
          device: torch.device) -> None:
    """draw()'s work: the plane, the grid's and the paths' losses, logged."""
    began = time.perf_counter()
    paths = {label: r for label, r in recorders.items() if len(r.deltas) > 1}
    if not paths:
        raise NotDrawable("no path has a recorded point past its start (every run diverged, or its weights "
                          "left float16's range, before its first recorded step)")
    origin = next(iter(paths.values())).origin
    if any(not torch.equal(r.origin, origin) for r in paths.values()):
        raise NotDrawable("the paths do not share one start (different seeds or models)")
    model = build_model(cfg.model, len(CIFAR_CLASSES), cfg.pretrained).to(device)
    plane = pca_plane([d for r in paths.values() for d in r.deltas], cfg.seed) if cfg.landscape_directions == "pca" \
        else random_plane([p.cpu() for p in _split(origin, model)], cfg.seed)
    coords = {label: project(plane, r.deltas) for label, r in paths.items()}
    axes = grid_axes(torch.cat(list(coords.values())), cfg.landscape_grid, least=1.0 if plane.kind == "random" else 0)
    precision, images = Precision(device), _images(cfg, arrays, device)
    figures = loss_grid.grid_figures(model, origin, plane, axes, images, precision)
    if not bool(torch.isfinite(figures.loss).any()):
        raise NotDrawable("the loss is not finite at any point of the grid")
    losses = {label: loss_grid.path_losses(model, origin, r.deltas, images, precision) for label, r in paths.items()}
    _log(run, cfg, plane, figures, {label: (coords[label], losses[label], paths[label].steps) for label in paths})
    points = sum(len(r.deltas) for r in paths.values())
    print(f"landscape: {len(axes[0]) * len(axes[1])} grid points and {points} path points on {len(images.labels)} "
          f"images, {time.perf_counter() - began:.1f} s")


def _split(vector: torch.Tensor, model: torch.nn.Module) -> list[torch.Tensor]:
    """A flat weight vector as tensors shaped like the model's parameters."""
    sizes = [p.numel() for p in model.parameters()]
    return [part.view_as(p) for part, p in zip(torch.split(vector, sizes), model.parameters())]


def _log(run: RunLogger, cfg: CifarConfig, plane, figures: loss_grid.Figures, paths: Mapping[str, tuple]) -> None:
    """The two tables and the two figures."""
    xs, ys = figures.xs.numpy(), figures.ys.numpy()
    grid = [(float(x), float(y), float(figures.loss[i, j]), float(figures.acc[i, j]))
            for i, y in enumerate(ys) for j, x in enumerate(xs)]
    run.log_text(_csv("x,y,loss,acc", grid), "landscape.csv")
    rows = [(label, int(step), float(c[0]), float(c[1]), float(loss)) for label, (coords, losses, steps) in
            paths.items() for step, c, loss in zip(steps, coords.numpy(), losses)]
    run.log_text(_csv("optimizer,step,x,y,loss", rows), "landscape_paths.csv")
    drawn = {label: (coords.numpy(), np.array(losses)) for label, (coords, losses, _) in paths.items()}
    labels = landscape_figures.axis_labels(plane.explained, plane.kind)
    size = plane.directions.shape[1]
    title = (f"{cfg.model}: training loss on {cfg.landscape_images} fixed training images over a plane through\n"
             f"the shared start ({plane.kind} directions): a 2-D slice of {size:,} dimensions")
    loss = figures.loss.numpy()
    run.log_figure(landscape_figures.contour_figure(xs, ys, loss, drawn, labels, title), "plots/landscape_contour.png")
    run.log_figure(landscape_figures.surface_figure(xs, ys, loss, drawn, labels, title), "plots/landscape_surface.png")


class SweepLandscape:
    """A compare's landscape: the path of every child it trains on the sweep's first seed (they all start from
    the same seeded weights), drawn on the parent once they are trained."""

    def __init__(self, cfg: CifarConfig, arrays: CifarArrays, device: torch.device) -> None:
        self.cfg, self.arrays, self.device = cfg, arrays, device
        self.recorders: dict[str, Recorder] = {}

    def attach(self, cfg: CifarConfig, trainer: object) -> None:
        """Record this child's path (first seed only: later seeds start elsewhere)."""
        if cfg.seed == self.cfg.seed:
            trainer.recorder = self.recorders[cfg.optimizer] = recorder(trainer)  # type: ignore[attr-defined]

    def hooks(self, cfg: CifarConfig) -> RunHooks:
        """What a solo child run is handed to record its path."""
        return RunHooks(on_trainer=lambda trainer: self.attach(cfg, trainer))

    def draw(self, run: RunLogger, diverged: Iterable[str] = ()) -> bool:
        """The landscape on the parent `run`, without the paths of the `diverged` optimizers' runs."""
        return draw(run, self.cfg, self.recorders, self.arrays, self.device, diverged)

"""The `compare` entry point: one parent run, one child run per optimizer, overlays and a summary."""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import tracking
from pipeline.config.compare import CompareConfig
from pipeline.config.tasks import as_params
from pipeline.core.errors import EXIT_OK, UsageError
from pipeline.core.provenance import code_version, config_hash
from pipeline.optim.registry import TUNABLE
from pipeline.sweeps import summary
from pipeline.sweeps.summary import RunRecord
from pipeline.sweeps.tune import results as tune_results
from pipeline.training.hooks import RunHooks
from pipeline.viz import figures
from pipeline.viz import tune as tune_figures
from pipeline.workloads.toy.functions import get_function

METRICS = {"toy": ("loss", "distance_to_min"),
           "cifar": ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time", "best_val_acc",
                     "time_to_target")}
CHAMPION = "champion"


def _record(run_id: str, task: str, reused: bool = False) -> RunRecord:
    data = tracking.fetch_run(run_id, METRICS[task])
    return RunRecord(run_id, data["status"], data["params"], data["tags"], data["metrics"], reused)


def _trainer(cfg: CompareConfig):
    """(A function that trains one child config under a parent run and returns its run id, the sweep's landscape
    or None). For cifar the data is loaded here, once for all children and before the parent run starts (missing
    data: no run at all)."""
    if cfg.task == "toy":
        from pipeline.toy import run_toy

        return (lambda child, parent: run_toy(child, parent, in_sweep=True)[0]), None
    from pipeline.cifar import load_data, resolve_device, run_cifar, run_lockstep
    from pipeline.landscape.report import SweepLandscape, enabled

    device, arrays = resolve_device(cfg.children[0].device), load_data(cfg.children[0])
    scape = SweepLandscape(cfg.children[0], arrays, device) if enabled(cfg.children[0], device) else None
    if cfg.lockstep:
        return (lambda children, parent: run_lockstep(children, arrays, device, parent,
                                                      scape.attach if scape else None)), scape
    return (lambda child, parent: run_cifar(child, arrays, device, parent,
                                            scape.hooks(child) if scape else RunHooks())[0]), scape


def reusable(cfg: CompareConfig, child, parent: tracking.Run) -> RunRecord | None:
    """A stored run with the same config and code that reached an outcome, unless rerun=true."""
    found = None if cfg.rerun else tracking.find_finished_run(parent.experiment_id, config_hash(child),
                                                              code_version())
    if found:
        print(f"{child.optimizer}: reusing finished run {found} (rerun=true trains again)")
        return _record(found, cfg.task, reused=True)
    return None


def lockstep_records(cfg: CompareConfig, parent: tracking.Run, train) -> list[RunRecord]:
    """Reuse what can be reused, train the rest together on the same batches (`train`: cifar.run_lockstep over
    the arrays); records in the children's order."""
    found = {child.optimizer: reusable(cfg, child, parent) for child in cfg.children}
    todo = [child for child in cfg.children if found[child.optimizer] is None]
    if todo:
        outcomes = train(todo, parent)
        found.update({child.optimizer: _record(run_id, cfg.task) for child, (run_id, _) in zip(todo, outcomes)})
    return [found[child.optimizer] for child in cfg.children]


def run_child(cfg: CompareConfig, child, parent: tracking.Run, train) -> RunRecord:
    """Reuse a finished run with the same config and code, else train one; a failure is recorded, not raised."""
    reused = reusable(cfg, child, parent)
    if reused is not None:
        return reused
    try:
        return _record(train(child, parent), cfg.task)
    except Exception as error:  # noqa: BLE001 - one broken child must not end the sweep
        print(f"error: {child.optimizer} failed ({type(error).__name__}: {error}); the sweep goes on",
              file=sys.stderr)
        return RunRecord.failed(child.optimizer)


def shared_params(cfg: CompareConfig) -> dict[str, str]:
    """The sweep's params: its own plus every child param that all children share."""
    children = [as_params(child) for child in cfg.children]
    common = {k: v for k, v in children[0].items() if all(c.get(k) == v for c in children)} if children else {}
    # A setting only some optimizers take (momentum for sgd but not adam): which children got it.
    partial = {f"{key}_applies_to": ",".join(c.optimizer for c in cfg.children if getattr(c, key) is not None)
               for key in TUNABLE
               if 0 < sum(getattr(c, key) is not None for c in cfg.children) < len(cfg.children)}
    return {**common, **partial, "task": cfg.task, "optimizers": ",".join(cfg.optimizer_list()),
            "rerun": str(cfg.rerun), "lockstep": str(cfg.lockstep), "seeds": str(cfg.seeds)}


def draw_toy(run: tracking.Run, records: list[RunRecord], scratch: Path) -> None:
    """Every child's path on one contour plot, one surface, one loss plot and an animated GIF."""
    usable = [r for r in records if r.has_run]
    if not usable:
        return
    fn = get_function(usable[0].params["function"])
    paths, losses = {}, {}
    for record in usable:  # every step of each child (their metric histories are thinned: run_toy in_sweep)
        csv = tracking.download(record.run_id, "trajectory.csv", scratch / record.run_id)
        if csv is not None:
            table = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
            paths[record.label], losses[record.label] = table[:, 1:3], table[:, 3]
    run.log_figure(figures.contour_figure(fn, paths), "plots/contour.png")
    if len(paths) > 1:
        run.log_figure(figures.panels_figure(fn, paths), "plots/contour_panels.png")
    run.log_figure(figures.surface_figure(fn, paths), "plots/surface.png")
    run.log_figure(figures.loss_figure(fn, losses), "plots/loss.png")
    gif = scratch / "paths.gif"
    write_gif(figures.paths_frames(fn, paths), gif, fps=12)
    run.log_file(gif, "plots")


def write_gif(frames: list, path: Path, fps: float) -> None:
    """Save RGB frames as a looping GIF with one palette for all: the last frame's, which has every path's
    colour (each frame's own palette, Pillow's default, lost some and took 20 times longer)."""
    from PIL import Image

    palette = frames[-1].quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    indexed = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    indexed[0].save(path, save_all=True, append_images=indexed[1:], duration=round(1000 / fps), loop=0)


def draw_cifar(run: tracking.Run, records: list[RunRecord]) -> None:
    """The notebook's four overlays (train/test x accuracy/loss against epoch) and accuracy against time."""
    for key, name, label, percent in (("train_acc", "train_accuracy", "train accuracy", True),
                                      ("train_loss", "train_loss", "train loss", False),
                                      ("val_acc", "test_accuracy", "test accuracy", True),
                                      ("val_loss", "test_loss", "test loss", False)):
        figure = figures.overlay_figure(summary.overlay(records, key), "epoch", label, f"{label.capitalize()} "
                                      "per optimizer", percent=percent)
        run.log_figure(figure, f"plots/{name}.png")
    timed = summary.overlay(records, "val_acc", x_key="epoch_time")
    run.log_figure(figures.overlay_figure(timed, "training time (s)", "test accuracy",
                                        "Test accuracy against training time", percent=True, integer_x=False),
                   "plots/test_accuracy_vs_time.png")


def crown(run: tracking.Run, records: list[RunRecord]) -> str | None:
    """Point the registry alias `champion` at the best child's model; returns its models:/ URI."""
    best = summary.champion(records)
    if best is None or "model_uri" not in best.tags:
        return None
    name = best.params.get("model_name", "optlab-cifar")
    version = tracking.set_alias(name, best.run_id, CHAMPION)
    run.set_tags({"champion_run_id": best.run_id, "champion_uri": f"models:/{name}@{CHAMPION}",
                       "champion_version": version})
    return f"models:/{name}@{CHAMPION}"


def report(run: tracking.Run, task: str, records: list[RunRecord], title: str) -> str:
    """Draw the overlays, log summary.csv and summary.md, tag the children; returns the Markdown table."""
    rows = summary.rows(task, records)
    markdown = summary.as_markdown(rows, title)
    run.log_text(summary.as_csv(rows), "summary.csv")
    run.log_text(markdown, "summary.md")
    run.set_tags({"children": ",".join(r.run_id for r in records if r.has_run),
                  "mlflow.note.content": summary.note(markdown)})
    run.log_metrics(summary.headline(task, records), 0)
    with tempfile.TemporaryDirectory(prefix="optlab-") as scratch:
        draw_toy(run, records, Path(scratch)) if task == "toy" else draw_cifar(run, records)
    return markdown


def redraw_ids(cfg: CompareConfig) -> tuple[str, list[str]]:
    """(task, child run ids) named by from_runs: a compare run's children, or an experiment's newest runs."""
    if tracking.run_exists(cfg.from_runs):
        tags = tracking.fetch_run(cfg.from_runs, ())["tags"]
        task, ids = tags.get("compare_task", cfg.task), [i for i in tags.get("children", "").split(",") if i]
    else:
        task, ids = cfg.task, tracking.latest_runs(cfg.from_runs, cfg.task)
    if not ids:
        raise UsageError(f"from_runs: no {cfg.task} runs found for {cfg.from_runs!r} (a compare run id or an "
                         "experiment name)")
    return task, ids


def main(cfg: CompareConfig) -> int:
    """The `compare` entry point: print the summary table, where the best model is, and a link to the sweep."""
    if cfg.workloads:
        from pipeline.sweeps.workloads import compare_workloads  # noqa: PLC0415

        return compare_workloads(cfg)
    run_id, markdown, uri = sweep(cfg)
    print(markdown)
    print(f"compare run {run_id}" + (f"; best model: {uri}" if uri else ""))
    link = tracking.sweep_link(run_id)
    print(f"this sweep in the MLflow UI: {link}" + ("" if tracking.tracking_uri().startswith("http") else
                                                  " (after `make ui`)"))
    return EXIT_OK


def train_seeds(cfg: CompareConfig, parent: tracking.Run, train) -> list[list[RunRecord]]:
    """Every child on each of the sweep's seeds (seed, seed+1, ...): records per seed, in the children's order."""
    per_seed = []
    for offset in range(cfg.seeds):
        seeded = dataclasses.replace(cfg, children=tuple(dataclasses.replace(c, seed=c.seed + offset)
                                                         for c in cfg.children))
        per_seed.append(lockstep_records(seeded, parent, train) if cfg.lockstep else
                        [run_child(seeded, child, parent, train) for child in seeded.children])
    return per_seed


def draw_seeds(run: tracking.Run, task: str, per_seed: list[list[RunRecord]]) -> None:
    """plots/seeds_<metric>.png: mean line and min-max band over the seeds per optimizer."""
    metrics, axes = (("val_acc", "train_loss"), ("epoch", "training seconds")) if task == "cifar" else \
        (("loss",), ("step",))
    for metric in metrics:
        panels: dict[str, dict] = {f"{metric} against {axis}": {} for axis in axes}
        for index, record in enumerate(per_seed[0]):
            runs = [seed[index] for seed in per_seed if seed[index].has_run and seed[index].series(metric)[1]]
            if not runs:
                continue
            steps, curves = tune_results.shared_steps([r.series(metric) for r in runs])
            mean, low, high = tune_results.band(curves)
            panels[f"{metric} against {axes[0]}"][record.label] = (steps, mean, low, high)
            if task == "cifar":
                seconds = tune_results.band([np.cumsum(r.series("epoch_time")[1]) for r in runs])[0]
                panels[f"{metric} against training seconds"][record.label] = (seconds, mean, low, high)
        run.log_figure(tune_figures.seeds_figure(panels, metric, log_y=metric != "val_acc"), f"plots/seeds_{metric}.png")


def _judge_seeds(parent: tracking.Run, cfg: CompareConfig, per_seed: list[list[RunRecord]], markdown: str) -> str:
    """The verdict over the seeds (verdict.json, a tag `verdict` and a line under the summary); returns the
    summary with that line."""
    from pipeline.sweeps.tune.verdict import verdict_json  # noqa: PLC0415

    found = summary.seed_verdict(cfg.task, per_seed)
    parent.log_dict(verdict_json({cfg.task: found}, {}), "verdict.json")
    parent.set_tags({"verdict": found.decision.text})
    return f"{markdown}\nOver {cfg.seeds} seeds ({found.score_metric}): {found.decision.text}\n"


def sweep(cfg: CompareConfig) -> tuple[str, str, str | None]:
    """Train (or reuse) every child, then draw and summarise; returns (parent run id, summary, champion URI)."""
    if cfg.from_runs:
        task, ids = redraw_ids(cfg)
        cfg = dataclasses.replace(cfg, task=task)
    train, scape = (None, None) if cfg.from_runs else _trainer(cfg)
    if scape is not None and not cfg.rerun:
        print("landscape: every child trains again (the landscape needs each optimizer's path); rerun=true")
        cfg = dataclasses.replace(cfg, rerun=True)
    tags = {"task": "compare", "compare_task": cfg.task, **({"redrawn_from": cfg.from_runs} if cfg.from_runs else {})}
    name = summary.parent_name("compare", cfg.task, len(cfg.children), time.time())
    with tracking.open_run(cfg.experiment, name, tags) as parent:
        parent.log_params(shared_params(cfg))
        per_seed = [[_record(run_id, cfg.task, reused=True) for run_id in ids]] if cfg.from_runs else \
            train_seeds(cfg, parent, train)
        records = per_seed[0]
        tracking.add_to_sweep([parent.run_id] + [r.run_id for seed in per_seed for r in seed if r.has_run],
                              parent.run_id)
        tracking.share_sweep_view(parent.experiment_id, parent.run_id, ("param", "optimizer"))
        markdown = report(parent, cfg.task, records, f"compare {cfg.task}: {len(records)} optimizers")
        if len(per_seed) > 1:
            draw_seeds(parent, cfg.task, per_seed)
            parent.set_tags({"seed_runs": ",".join(r.run_id for seed in per_seed[1:] for r in seed)[:5000]})
            markdown = _judge_seeds(parent, cfg, per_seed, markdown)
        # A redraw trains nothing, so it registers nothing: no new model version, the alias left where it is.
        uri = crown(parent, records) if cfg.task == "cifar" and not cfg.from_runs else None
        if scape is not None:
            scape.draw(parent, {record.label for record in records if record.diverged})
    return parent.run_id, markdown, uri

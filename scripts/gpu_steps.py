"""The GPU check's steps, in order: environment, pytest -m gpu, bench, one cifar run, a lockstep compare, train of
each suite workload, torchrun. Each takes (context, seconds it may take) and returns an Outcome."""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_run import (REPO, TEXT, Context, Outcome, Ran, Step, find_shared, history, install_wheels, latest,
                     missing_modules, query, run, runs_of, tags, tail, wheels_python)


@dataclass(frozen=True)
class Sizes:
    """How big the training steps are: the real thing on a GPU, tiny for a dry run (QUICK=1)."""

    model: str
    batch: int
    epochs: int  # the cifar step; compare and torchrun train `short` epochs
    short: int
    train_seconds: int  # each workload of the train step
    extra: tuple[str, ...]  # every cifar, compare and torchrun command
    landscape: tuple[str, ...]  # the cifar step (unset: drawn for one-process CUDA runs)


FULL = Sizes("resnet18", 512, 3, 2, 30, (), ())
QUICK = Sizes("tiny_cnn", 64, 1, 1, 3, ("--train_limit", "256", "--val_limit", "128"),
              ("--landscape", "true", "--landscape_grid", "5", "--landscape_images", "64"))
NO_DATA = "no CIFAR-10 subset in shared/data/cifar10-subset (in the checkout, or beside it)"


def sizes(ctx: Context) -> Sizes:
    return QUICK if ctx.quick else FULL


def environment(ctx: Context, limit_s: float) -> Outcome:
    """Step 0: the wheels into a temporary folder (INSTALL=auto|yes|no), then what the machine has."""
    installed = _install(ctx, limit_s)
    if installed.status == "failed":
        return installed
    probe = run(ctx, [sys.executable, "scripts/gpu_probe.py", "pyproject.toml"], max(limit_s - installed.seconds, 10))
    found = [line for line in probe.output.splitlines() if line.startswith("{")]
    if probe.code != 0 or not found:
        return Outcome("failed", f"scripts/gpu_probe.py exited {probe.code}", installed.seconds + probe.seconds,
                       output=tail(probe.output, 40))
    ctx.facts = json.loads(found[-1])
    problems = ctx.facts["import_errors"] + ([ctx.facts.get("torch_error", "torch sees no CUDA device")]
                                             if ctx.device == "cuda" and not ctx.facts.get("cuda_available") else [])
    figures = [f"outside pyproject.toml's ranges: {', '.join(ctx.facts['outside'])}"] if ctx.facts["outside"] else []
    return Outcome("failed" if problems else "passed", "; ".join(problems) or installed.detail,
                   installed.seconds + probe.seconds, figures)


def _install(ctx: Context, limit_s: float) -> Outcome:
    """Install the wheels when asked or when they are for this Python; otherwise this Python must have them."""
    wheels, here = ctx.wheels, f"{sys.version_info.major}.{sys.version_info.minor}"
    have, made_for = any(wheels.glob("*.whl")), wheels_python(wheels)
    if ctx.install == "yes" or (ctx.install == "auto" and have and made_for == here):
        if not have:
            return Outcome("failed", f"INSTALL=yes but {wheels} holds no wheels: run `make gpu-wheels` and carry it")
        site = ctx.tmp / "site"
        outcome = install_wheels(ctx, wheels, site, limit_s)
        ctx.env["PYTHONPATH"] = f"{site}:{ctx.env['PYTHONPATH']}"
        return outcome
    why = {"no": "INSTALL=no"}.get(ctx.install) or (f"{wheels} holds wheels for Python {made_for}, this is {here}"
                                                    if have else f"no wheels in {wheels}")
    missing = missing_modules(sys.executable, ctx.env)
    if missing:
        return Outcome("failed", f"{why}, and this Python lacks {', '.join(missing)}: run `make gpu-wheels` here "
                                 "and carry .gpu-wheels")
    return Outcome("skipped", f"not installed ({why}): this Python's own packages")


def pytest_gpu(ctx: Context, limit_s: float) -> Outcome:
    """Step 1: the tests marked gpu, from the files that hold any (other files may import what is not here)."""
    files = sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").glob("test_*.py")
                   if "mark.gpu" in path.read_text(encoding="utf-8"))
    ran = run(ctx, [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files], limit_s)
    lines = ran.output.strip().splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"passed|failed|skipped|error|no tests",
                                                                             line)), "no summary")
    figures = [f"files: {', '.join(files)}", f"result: {summary}"] + [line for line in lines if "SKIPPED" in line]
    if ran.code == 0 and " passed" not in f" {summary}":
        return Outcome("failed", f"no gpu test ran ({summary})", ran.seconds, figures, tail(ran.output, 30))
    return _finished(ran, summary, figures)


def bench(ctx: Context, limit_s: float) -> Outcome:
    """Step 2: python -m bench on the cuda, cifar and toy rows (toy alone on CPU), its table into the report."""
    rows = "cuda,cifar,toy" if ctx.device == "cuda" else "toy"
    table = ctx.tmp / "bench.md"
    command = [sys.executable, "-m", "bench", "--rows", rows, "--device", ctx.device, "--out", str(table)]
    ran = run(ctx, command + (["--quick"] if ctx.quick else []), limit_s)
    figures = [table.read_text(encoding="utf-8")] if table.is_file() else []
    outcome = _finished(ran, f"rows {rows}" + ("" if ctx.device == "cuda" else " (cuda and cifar rows need a GPU)"),
                        figures)
    outcome.output = outcome.output if outcome.status == "failed" else ""  # the table says it all
    return outcome


def cifar(ctx: Context, limit_s: float) -> Outcome:
    """Step 3: one cifar run, bf16 and channels_last, the default landscape (tiny and drawn on CPU with QUICK)."""
    if ctx.data_dir is None:
        return Outcome("failed", NO_DATA)
    size = sizes(ctx)
    command = _cifar_command(ctx, "cifar", size.epochs, "gpu-check-cifar") + [
        "--bf16", "true", "--channels_last", "true", *size.landscape]
    ran = run(ctx, command, limit_s, cwd=ctx.tmp)
    return _finished(ran, f"{size.model}, batch {size.batch}, {_epochs(size.epochs)}",
                     _run_figures(ctx, "gpu-check-cifar") + _landscape(ran.output))


def compare(ctx: Context, limit_s: float) -> Outcome:
    """Step 4: the notebook's optimizers in lockstep on the subset (models not logged: the cifar step does)."""
    if ctx.data_dir is None:
        return Outcome("failed", NO_DATA)
    size = sizes(ctx)
    command = [sys.executable, "-m", "pipeline", "compare", "--task", "cifar", "--optimizers", "notebook",
               "--lockstep", "true", "--epochs", str(size.short), "--model", size.model, "--device", ctx.device,
               "--data_dir", str(ctx.data_dir), "--download", "false", "--experiment", "gpu-check-compare",
               "--log_model", "false", *size.extra]
    ran = run(ctx, command, limit_s, cwd=ctx.tmp)
    figures = []
    for run_id, status in runs_of(ctx.store, "gpu-check-compare"):
        params, metrics = tags(ctx.store, run_id), latest(ctx.store, run_id)
        if "optimizer" in params and "throughput" in metrics:
            figures.append(f"{params['optimizer']}: {status}, val_acc {metrics.get('val_acc', float('nan')):.1%}, "
                           f"last epoch {metrics.get('epoch_time', float('nan')):.2f} s, "
                           f"{metrics['throughput']:,.0f} img/s")
    return _finished(ran, f"{size.model}, batch 32, {_epochs(size.short)}", figures + _landscape(ran.output))


def train(ctx: Context, limit_s: float) -> Outcome:
    """Step 5: `train` of each suite workload at its full budget for a fixed time each, if this checkout has it
    (QUICK: 20 steps of the quick budget, and only the suite's first workload and shakespeare_gpt)."""
    ends = time.monotonic() + limit_s
    listed = run(ctx, [sys.executable, "-m", "pipeline", "workloads"], min(limit_s, 60), cwd=ctx.tmp)
    names = suite(listed.output) if listed.code == 0 else []
    if not names:
        return Outcome("skipped", "no train entry point in this checkout (`python -m pipeline workloads` exited "
                                  f"{listed.code})", listed.seconds)
    if ctx.quick:
        names = list(dict.fromkeys([names[0], *(name for name in names if name == "shakespeare_gpt")]))
    figures, failed, output = [], [], []
    for name in names:
        if ends - time.monotonic() < 10:
            failed.append(f"{name} not started: the step's {limit_s:.0f} s were spent")
            continue
        ran, figure = _train_one(ctx, name, ends - time.monotonic())
        figures.append(f"{name}: {figure}")
        if ran.code != 0:
            failed.append(f"{name} " + ("ran past its time limit" if ran.timed_out else f"exited {ran.code}"))
            output.append(f"--- {name}\n{tail(ran.output, 20)}")
    budget = "quick" if ctx.quick else "full"
    return Outcome("failed" if failed else "passed", "; ".join(failed) or f"{len(names)} workloads at budget "
                   f"{budget}, {sizes(ctx).train_seconds} s each: {', '.join(names)}", 0.0, figures, "\n".join(output))


def suite(listing: str) -> list[str]:
    """The suite's workloads from `python -m pipeline workloads` ('... suite = a, b, c'), else every name line."""
    found = re.search(r"suite = ([\w, ]+)", listing)
    if found:
        return [name.strip() for name in found.group(1).split(",") if name.strip()]
    return [line.split()[0] for line in listing.splitlines() if re.match(r"[a-z][a-z0-9_]*\s+\S", line)
            and not line.startswith(("sets ", "your "))]


def _train_one(ctx: Context, name: str, limit_s: float) -> tuple[Ran, str]:
    """One workload for TRAIN seconds (budget full; quick with QUICK), its data from shared/ (no download)."""
    seconds = sizes(ctx).train_seconds
    data = ctx.data_dir if name.startswith("cifar") else find_shared(TEXT, "input.txt") if "shakespeare" in name \
        else None
    command = [sys.executable, "-m", "pipeline", "train", "--workload", name, "--optimizer", "adamw", "--budget",
               "quick" if ctx.quick else "full", "--device", ctx.device, "--max_seconds", str(seconds)]
    command += ["--data_dir", str(data), "--download", "false"] if data else []
    # QUICK on CPU: the quick budget's first evaluation (250 gpt steps) alone takes a minute on 2 busy cores
    command += ["--steps", "20", "--eval_every", "10"] if ctx.quick and not name.startswith("cifar") else []
    before = {run_id for run_id, _ in runs_of(ctx.store, "gpu-check-train")}
    # max_seconds stops at the first evaluation past it: room for one evaluation interval and the start
    ran = run(ctx, command, min(seconds + 45, limit_s), cwd=ctx.tmp,
              env={"MLFLOW_EXPERIMENT_NAME": "gpu-check-train"})
    made = [run_id for run_id, _ in runs_of(ctx.store, "gpu-check-train") if run_id not in before]
    return ran, _train_figures(ctx, ran, made[-1] if made else None)


def torchrun(ctx: Context, limit_s: float) -> Outcome:
    """Step 6: one cifar process under torchrun (torch.distributed.run): the NCCL path on one GPU."""
    if ctx.data_dir is None:
        return Outcome("failed", NO_DATA)
    size = sizes(ctx)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", *_cifar_command(
        ctx, "cifar", size.short, "gpu-check-torchrun")[1:], "--landscape", "false"]
    ran = run(ctx, command, limit_s, cwd=ctx.tmp)
    return _finished(ran, f"{size.model}, batch {size.batch}, {_epochs(size.short)}, 1 process (NCCL)",
                     _run_figures(ctx, "gpu-check-torchrun"))


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("s" if count != 1 else "")


def _cifar_command(ctx: Context, entry: str, epochs: int, experiment: str) -> list[str]:
    size = sizes(ctx)
    return [sys.executable, "-m", "pipeline", entry, "--model", size.model, "--batch_size", str(size.batch),
            "--epochs", str(epochs), "--device", ctx.device, "--data_dir", str(ctx.data_dir), "--download", "false",
            "--experiment", experiment, *size.extra]


def _run_figures(ctx: Context, experiment: str) -> list[str]:
    """A cifar run's figures, read back from the store: status, epoch times, images/s, accuracy."""
    found = runs_of(ctx.store, experiment)
    if not found:
        return ["no run in the store"]
    run_id, status = found[-1]
    epochs, speed = history(ctx.store, run_id, "epoch_time"), history(ctx.store, run_id, "throughput")
    return [f"run {run_id}: {status}", f"epoch time: {', '.join(f'{s:.2f}' for s in epochs)} s",
            f"images/s: {', '.join(f'{v:,.0f}' for v in speed)}",
            f"val_acc after the last epoch: {latest(ctx.store, run_id).get('val_acc', float('nan')):.1%}"]


def _landscape(output: str) -> list[str]:
    """The landscape's own line (grid, images and its time), as the run printed it."""
    return [line.strip() for line in output.splitlines() if line.startswith("landscape:")] or ["landscape: none"]


def _train_figures(ctx: Context, ran: Ran, run_id: str | None) -> str:
    """steps/s (steps over training seconds, as logged at the last evaluation; else from the printed lines) and
    the last val_loss / val_acc of one train run."""
    trained = query(ctx.store, "SELECT step, value FROM latest_metrics WHERE run_uuid = ? AND key = ?", run_id,
                    "train_seconds") if run_id else []
    printed = re.findall(r"^step (\d+)/\d+: .*\(([\d.]+) s\)$", ran.output, re.MULTILINE)
    steps, seconds = trained[0] if trained else (map(float, printed[-1]) if printed else (0, 0.0))
    metrics = latest(ctx.store, run_id) if run_id else {}
    shown = [f"{steps / seconds:,.2f} steps/s ({steps:.0f} steps in {seconds:.1f} s)" if seconds else
             "steps/s not reported"]
    shown += [f"{key} {metrics[key]:.4f}" for key in ("val_loss", "val_acc") if key in metrics]
    return ", ".join(shown) + ("" if ran.code == 0 else f"; exit {ran.code}")


def _finished(ran: Ran, detail: str, figures: list[str]) -> Outcome:
    """passed on exit 0; else failed, saying the exit code (or the time limit) and keeping the output's end."""
    if ran.code == 0:
        return Outcome("passed", detail, ran.seconds, figures, tail(ran.output, 8))
    why = "ran past its time limit" if ran.timed_out else f"exited {ran.code}"
    return Outcome("failed", f"{why}; {detail}", ran.seconds, figures, tail(ran.output, 40))


# Budgets (seconds) sized for an H200 so that the whole check ends within TOTAL_S = 480 (scripts/gpu_check.py,
# which also cuts any step short at that deadline); docs/gpu-check.md gives the reckoning.
STEPS = (Step(0, "environment: wheels, versions, GPU", 45, False, environment),
         Step(1, "pytest -m gpu", 90, True, pytest_gpu),
         Step(2, "python -m bench", 120, False, bench),
         Step(3, "cifar: one run, bf16, channels_last, landscape", 75, False, cifar),
         Step(4, "compare: optimizers=notebook, lockstep", 75, False, compare),
         Step(5, "train: each suite workload", 240, False, train),
         Step(6, "torchrun --nproc-per-node=1 -m pipeline cifar", 60, True, torchrun))

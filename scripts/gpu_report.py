"""The GPU check's one Markdown report: the machine, a table of every step (status, time, budget), then each
step's figures and the end of its output."""
from __future__ import annotations

import platform
import shlex
import time
from pathlib import Path

from gpu_run import Context, Outcome, Step

PACKAGES = ("torch", "torchvision", "numpy", "mlflow-skinny", "mlflow", "optuna", "sqlalchemy", "alembic",
            "pytorch-optimizer", "schedulefree", "matplotlib", "pyyaml", "tqdm", "psutil")


def machine_lines(ctx: Context) -> list[str]:
    """GPU, driver, Python, torch and its CUDA, as the probe found them (or why it could not)."""
    facts = ctx.facts
    if not facts:
        return [f"- machine: {platform.node()}, Python {platform.python_version()} (no probe: step 0 did not run "
                "or failed)"]
    gpus = "; ".join(facts.get("gpus", [])) or "none seen by torch"
    return [f"- GPU: {gpus}; driver {facts.get('driver') or 'not read (no nvidia-smi)'}",
            f"- torch {facts.get('torch', '?')}, CUDA {facts.get('torch_cuda') or '-'}, cuDNN "
            f"{facts.get('cudnn') or '-'}, NCCL {facts.get('nccl') or '-'}; Python {facts['python']} "
            f"({facts['executable']}); {facts['platform']}",
            "- packages: " + ", ".join(f"{name} {facts['versions'][name]}" for name in PACKAGES
                                       if name in facts["versions"]),
            "- pyproject.toml's ranges: " + ("; ".join(facts["outside"]) or "every installed dependency within")
            + (f"; not installed: {', '.join(facts['absent'])}" if facts["absent"] else "")]


def header(ctx: Context, argv: list[str], outcomes: list[tuple[Step, Outcome]], total_s: float,
           limit_s: float) -> list[str]:
    """Title, command, the verdict and the machine."""
    failed = [str(step.number) for step, outcome in outcomes if outcome.status == "failed"]
    skipped = [str(step.number) for step, outcome in outcomes if outcome.status == "skipped"]
    verdict = (f"FAILED (step {', '.join(failed)})" if failed else "passed") + \
        (f", step {', '.join(skipped)} skipped" if skipped else "")
    mode = f"DEVICE={ctx.device} QUICK={int(ctx.quick)}"
    return ["# GPU check", "",
            f"- result: **{verdict}**, {total_s:.0f} s of the {limit_s:.0f} s the check allows itself ({mode})",
            f"- command: `{shlex.join(['python', 'scripts/gpu_check.py', *argv])}`",
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            *machine_lines(ctx),
            f"- data: {ctx.data_dir or 'no CIFAR-10 subset found'}; runs logged to a temporary SQLite store "
            "(gone after the check); every command's whole output: gpu-check.log beside this file", ""]


def step_table(outcomes: list[tuple[Step, Outcome]]) -> list[str]:
    """One row a step."""
    rows = ["| # | step | status | time | budget | detail |", "|---|---|---|---|---|---|"]
    for step, outcome in outcomes:
        detail = outcome.detail.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {step.number} | {step.name} | {outcome.status} | {outcome.seconds:.1f} s | "
                    f"{step.budget_s:.0f} s | {detail} |")
    return rows + [""]


def step_section(step: Step, outcome: Outcome) -> list[str]:
    """A step's figures (a multi-line one, such as bench's table, as it is) and the end of its output."""
    lines = [f"## {step.number}. {step.name}", "", f"{outcome.status}, {outcome.seconds:.1f} s: {outcome.detail}", ""]
    for figure in outcome.figures:
        lines += ["", figure.rstrip(), ""] if "\n" in figure else [f"- {figure}"]
    if outcome.output.strip():
        lines += ["", "End of its output:", "", "```text", outcome.output.rstrip(), "```"]
    return lines + [""]


def write_report(ctx: Context, argv: list[str], outcomes: list[tuple[Step, Outcome]], total_s: float,
                 limit_s: float) -> Path:
    """OUT/gpu-check.md; returns its path."""
    lines = header(ctx, argv, outcomes, total_s, limit_s) + step_table(outcomes)
    for step, outcome in outcomes:
        lines += step_section(step, outcome)
    path = ctx.out / "gpu-check.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path

"""`make gpu-check`: one prepared check of the project's GPU paths, for the few minutes a lent GPU machine gives
(docs/gpu-check.md). Each step is timed and bounded; after a failed one the rest are skipped (--keep-going runs
them); the whole check ends within --total_s. Writes OUT/gpu-check.md (and gpu-check.log, every command's
output); exit 0 when no step failed, 1 when one did, 130 when interrupted.

    python scripts/gpu_check.py --out "$OUT"                               # on the GPU machine, with .gpu-wheels
    python scripts/gpu_check.py --device cpu --quick --out /tmp/report    # dry run here: tiny sizes, no CUDA steps
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, however it is started

from gpu_report import write_report  # noqa: E402
from gpu_run import REPO, Context, Outcome, Step, base_env, find_data_dir  # noqa: E402
from gpu_steps import STEPS  # noqa: E402

TOTAL_S = 480.0  # 8 minutes on an H200, leaving a lent machine's 15 minutes room for its start and a rerun
LEAST_S = 10.0  # a step is not started with less time left than this


def step_numbers(text: str) -> set[int]:
    """--steps: 'all' or a comma list of step numbers (step 0, the environment, always runs)."""
    if text == "all":
        return {step.number for step in STEPS}
    try:
        chosen = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        chosen = set()
    known = {step.number for step in STEPS}
    if not chosen or not chosen <= known:
        raise argparse.ArgumentTypeError(f"{text!r}: 'all' or a comma list from {min(known)}-{max(known)}")
    return chosen | {0}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: tiny_cnn, 256 images, 1 epoch")
    parser.add_argument("--out", type=Path, default=REPO / "gpu-report", help="folder for gpu-check.md")
    parser.add_argument("--install", choices=("auto", "yes", "no"), default="auto",
                        help="the wheels: auto installs them when they are for this Python")
    parser.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels", help="what `make gpu-wheels` made")
    parser.add_argument("--steps", type=step_numbers, default=step_numbers("all"), help="all, or e.g. 3,4")
    parser.add_argument("--keep-going", action="store_true", help="run the steps after a failed one too")
    parser.add_argument("--total_s", type=float, default=TOTAL_S, help="the whole check's time limit")
    return parser.parse_args(argv)


def skip_reason(ctx: Context, step: Step, chosen: set[int], failed: Step | None) -> str | None:
    """Why `step` does not run, or None."""
    if step.number not in chosen:
        return f"not among --steps {','.join(map(str, sorted(chosen)))}"
    if failed is not None:
        return f"step {failed.number} ({failed.name}) failed"
    if step.cuda_only and ctx.device != "cuda":
        return "needs CUDA (DEVICE=cpu)"
    if ctx.left() < LEAST_S:
        return f"{max(ctx.left(), 0):.0f} s left of the check's time"
    return None


def run_steps(ctx: Context, chosen: set[int], keep_going: bool) -> list[tuple[Step, Outcome]]:
    """Every step in order, each within min(its budget, the time left); an interrupt ends the loop."""
    outcomes: list[tuple[Step, Outcome]] = []
    failed: Step | None = None
    for step in STEPS:
        why = skip_reason(ctx, step, chosen, failed)
        print(f"[{step.number}/{len(STEPS) - 1}] {step.name}", flush=True)
        began = time.monotonic()
        try:
            outcome = Outcome("skipped", why) if why else step.work(ctx, min(step.budget_s, ctx.left()))
        except KeyboardInterrupt:
            outcomes.append((step, Outcome("failed", "interrupted", time.monotonic() - began)))
            raise Interrupted(outcomes) from None
        outcome.seconds = 0.0 if why else time.monotonic() - began
        print(f"  {outcome.status} in {outcome.seconds:.1f} s: {outcome.detail}", flush=True)
        for figure in outcome.figures:
            print(f"  - {figure}" if "\n" not in figure else f"  ({figure.count(chr(10))} lines in the report)")
        outcomes.append((step, outcome))
        if outcome.status == "failed" and (step.number == 0 or not keep_going):
            failed = failed or step
    return outcomes


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during a step: the outcomes so far, the interrupted one last."""

    def __init__(self, outcomes: list[tuple[Step, Outcome]]) -> None:
        super().__init__("interrupted")
        self.outcomes = outcomes


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the running step's group is stopped and the report written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    args.out.mkdir(parents=True, exist_ok=True)
    began, code = time.monotonic(), 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch, \
            open(args.out / "gpu-check.log", "w", encoding="utf-8") as log:
        ctx = Context(args.device, args.quick, args.out, Path(scratch), log, began + args.total_s, args.wheels,
                      args.install)
        ctx.env, ctx.data_dir = base_env(ctx.tmp, None), find_data_dir()
        try:
            outcomes = run_steps(ctx, args.steps, args.keep_going)
        except Interrupted as stop:
            outcomes, code = stop.outcomes, 130
        report = write_report(ctx, argv, outcomes, time.monotonic() - began, args.total_s)
    failed = [step.number for step, outcome in outcomes if outcome.status == "failed"]
    print(f"gpu check: {'failed: step ' + ', '.join(map(str, failed)) if failed else 'passed'} in "
          f"{time.monotonic() - began:.0f} s; report {report}")
    return code or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())

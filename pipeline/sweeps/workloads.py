"""`compare workloads=...`: every optimizer on every workload (train's runs and budgets) under one parent run,
and the table a profile over workloads starts from: per workload and optimizer its score, whether and when it
reached the workload's target."""
from __future__ import annotations

import sys

from pipeline import cifar, tracking, train
from pipeline.config.compare import CompareConfig
from pipeline.config.train import TrainConfig
from pipeline.core.errors import EXIT_OK, UsageError, one_line


def _train(child: TrainConfig, parent: tracking.Run) -> tuple[str, int]:
    """One child: a CIFAR-10 workload through the cifar entry's run, the others through train's."""
    if not child.spec.cifar_model:
        return train.run_steps(child, child.spec, parent)
    cfg, device = train.cifar_run_config(child)
    run_id, code = cifar.run_cifar(cfg, cifar.load_data(cfg), device, parent=parent)
    return run_id, code


def _row(child: TrainConfig, run_id: str, code: int) -> dict:
    """What the table shows of one child: read back from the store, as the UI shows it."""
    target = child.spec.target
    keys = (f"best_{target.metric}", "time_to_target", "steps_to_target")
    found = tracking.fetch_run(run_id, keys) if run_id else {"status": "FAILED", "metrics": {}}
    last = {key: values[-1][1] for key, values in found["metrics"].items() if values}
    return {"workload": child.workload, "optimizer": child.optimizer, "status": found["status"], "exit": code,
            "score": last.get(keys[0]), "metric": target.metric, "time_to_target": last.get("time_to_target"),
            "steps_to_target": last.get("steps_to_target"), "run_id": run_id}


def table(rows: list[dict]) -> str:
    """The summary as Markdown: one row per workload and optimizer."""
    lines = ["| workload | optimizer | score | time to target (s) | steps to target | status |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        score = "" if row["score"] is None else f"{row['metric']} {row['score']:.4f}"
        time = "missed" if row["time_to_target"] is None else f"{row['time_to_target']:.1f}"
        steps = "" if row["steps_to_target"] is None else f"{row['steps_to_target']:.0f}"
        lines.append(f"| {row['workload']} | {row['optimizer']} | {score} | {time} | {steps} | {row['status']} |")
    return "\n".join(lines)


def compare_workloads(cfg: CompareConfig) -> int:
    """Train every child under one parent, print and log the table; a child that breaks is one line and the
    sweep goes on."""
    for workload, optimizer, why in cfg.skipped:
        print(f"note: {optimizer} is left out on {workload}: {why}")
    workloads = sorted({child.workload for child in cfg.children})
    with tracking.open_run(cfg.experiment, "compare-workloads", {"task": "compare", "workloads": ",".join(workloads)}) \
            as parent:
        parent.log_params({"workloads": cfg.workloads, "optimizers": cfg.optimizers, "children": len(cfg.children)})
        rows = []
        for index, child in enumerate(cfg.children, 1):
            print(f"[{index}/{len(cfg.children)}] {child.optimizer} on {child.workload}", flush=True)
            try:
                run_id, code = _train(child, parent)
            except UsageError:
                raise
            except Exception as error:  # noqa: BLE001 - one broken child must not end the sweep
                print(f"error: {child.optimizer} on {child.workload} failed ({one_line(error)}); the sweep goes on",
                      file=sys.stderr)
                run_id, code = "", 1
            rows.append(_row(child, run_id, code))
        markdown = table(rows)
        tracking.add_to_sweep([parent.run_id] + [row["run_id"] for row in rows if row["run_id"]], parent.run_id)
        tracking.share_sweep_view(parent.experiment_id, parent.run_id, ("tag", "workload"))
        parent.log_text(markdown, "summary.md")
        parent.log_dict({"rows": rows}, "summary.json")
    print(markdown)
    print(f"compare run {parent.run_id}; in the MLflow UI: {tracking.sweep_link(parent.run_id)}")
    return EXIT_OK

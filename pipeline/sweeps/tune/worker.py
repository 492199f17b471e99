"""A `tune` worker: it takes trials from the studies in order (tuning trials, the default-lr run, then seed reruns
of the best setting) until every study is done, each trial an MLflow run nested under its optimizer's run."""
from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optuna

from pipeline import tracking
from pipeline.config.tasks import logged_params
from pipeline.config.tune import StudyPlan, TuneConfig
from pipeline.core.errors import EXIT_DIVERGED
from pipeline.sweeps.tune import search
from pipeline.training.hooks import RunHooks
from pipeline.training.loop import StopTraining
from pipeline.workloads.toy import scores
from pipeline.workloads.toy.functions import get_function

PHASES = ("trials", "default", "seeds")
ROLES = {"trials": "trial", "default": "default", "seeds": "seed"}
POLL_S = 1.0  # seconds between looks at studies another worker holds


@dataclass(frozen=True)
class RunIds:
    """The tune's MLflow runs every worker logs under: the parent, and one child per (optimizer, workload)."""

    parent: str
    children: Mapping[str, str]  # StudyPlan.label -> run id


def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A worker died mid-trial: its run ends FAILED (not RUNNING forever) and the trial is queued again."""
    if trial.user_attrs.get("run_id"):
        tracking.fail_run(trial.user_attrs["run_id"], "its worker stopped sending heartbeats (killed or cut off); "
                          "the trial was queued again")
    search.retry(study, trial)


class Worker:
    """One process's share of a tune: studies loaded once, runs nested under the tune's runs."""

    def __init__(self, cfg: TuneConfig, ids: RunIds, storage: Any, cifar: tuple | None = None) -> None:
        self.cfg, self.ids, self.storage = cfg, ids, storage
        self.studies: dict[tuple[str, str], optuna.Study] = {}
        self.parents: dict[str, tracking.Run] = {}
        self.cifar = cifar  # (arrays, device): given, or loaded on the first cifar trial

    @property
    def bounds(self) -> search.Bounds:
        cfg = self.cfg
        return {"lr": (cfg.lr_min, cfg.lr_max), "weight_decay": (cfg.weight_decay_min, cfg.weight_decay_max)}

    def budget(self, phase: str) -> int:
        return {"trials": self.cfg.trials, "default": 1, "seeds": self.cfg.seeds}[phase]

    def study(self, plan: StudyPlan, phase: str) -> optuna.Study:
        """The phase's study of `plan`, created by the first worker to ask; the same sampler everywhere."""
        key = (plan.label, phase)
        if key not in self.studies:
            epochs = getattr(plan.base, "epochs", 1)
            self.studies[key] = optuna.create_study(
                storage=self.storage, study_name=self.cfg.study_name(plan, phase), load_if_exists=True,
                direction="minimize" if self.cfg.task == "toy" else "maximize",
                sampler=search.make_sampler(self.cfg.sampler, plan.dims, self.bounds, self.cfg.trials,
                                            plan.base.seed),
                pruner=search.make_pruner(self.cfg.pruner if phase == "trials" else "none", epochs))
        return self.studies[key]

    def work(self) -> None:
        """Take trials until every study is done; wait (failing dead workers' trials) while others hold the rest."""
        while True:
            pending = ran = False
            for plan in self.cfg.children:
                for phase in PHASES:
                    study, budget = self.study(plan, phase), self.budget(phase)
                    if search.is_done(study, budget):
                        continue
                    pending = True
                    if phase == "seeds" and not search.is_done(self.study(plan, "trials"), self.cfg.trials):
                        break
                    search.fail_stale(study, search.GRACE_BEATS * self.cfg.heartbeat_s)
                    if search.has_room(study, budget):
                        search.run_one(study, budget, self.objective(plan, phase))
                        ran = True
            if not pending:
                return
            if not ran:
                time.sleep(POLL_S)

    def objective(self, plan: StudyPlan, phase: str) -> Callable[[optuna.trial.Trial], float]:
        """What one trial of this phase runs: a tuning point, the defaults, or the best point on a fresh seed."""
        def objective(trial: optuna.trial.Trial) -> float:
            if phase == "trials":
                cfg = dataclasses.replace(plan.base, **search.suggest(trial, plan.dims, self.bounds))
            elif phase == "default":
                cfg = plan.base
            else:
                best = search.best_trial(self.study(plan, "trials")).params
                index = search.seed_index(self.study(plan, "seeds"), trial)
                cfg = dataclasses.replace(plan.base, **best, seed=plan.base.seed + 1 + index)
            tags = {"role": ROLES[phase], "study": self.cfg.study_name(plan, phase), "trial": str(trial.number),
                    "optimizer": plan.optimizer, "workload": plan.workload,
                    "worker": f"{socket.gethostname()}:{os.getpid()}", tracking.SWEEPS_TAG: self.ids.parent}
            try:
                score = self.score(plan, phase, cfg, trial, tags)
            except (optuna.TrialPruned, KeyboardInterrupt):
                raise
            except Exception as error:  # noqa: BLE001 - reported here, recorded FAILED by Optuna, the tune goes on
                print(f"error: {plan.label} {ROLES[phase]} {trial.number} failed ({type(error).__name__}: {error})",
                      file=sys.stderr)
                raise
            print(f"{plan.label} {ROLES[phase]} {trial.number}: {_point(cfg, plan)} -> score {score:.6g}", flush=True)
            return score

        return objective

    def parent(self, plan: StudyPlan) -> tracking.Run:
        if plan.label not in self.parents:
            self.parents[plan.label] = tracking.existing_run(self.ids.children[plan.label])
        return self.parents[plan.label]

    def score(self, plan: StudyPlan, phase: str, cfg: Any, trial: optuna.trial.Trial, tags: dict) -> float:
        hooks = RunHooks(tags=tags, name=run_name(plan, phase, cfg, trial.number),
                         on_open=lambda run: trial.set_user_attr("run_id", run.run_id))
        if self.cfg.task == "toy":
            return self.toy_score(plan, phase, cfg, hooks)
        return self.cifar_score(plan, phase, cfg, trial, hooks)

    def toy_score(self, plan: StudyPlan, phase: str, cfg: Any, hooks: RunHooks) -> float:
        """The mean capped gap over `starts` random starts, computed and logged (per step) inside the run; a
        seed rerun is an ordinary toy run besides."""
        curve = []

        def score(run: Any) -> None:
            hooks.opened(run)
            curve.extend(scores.score_curve(get_function(cfg.function), cfg.optimizer_settings, self.cfg.starts,
                                            cfg.seed, cfg.steps, cfg.tolerance))
            now = int(time.time() * 1000)
            run.log_params({"starts": self.cfg.starts})
            run.log_steps([(step, now, {"score": float(value)}) for step, value in enumerate(curve)])

        if phase == "seeds":
            from pipeline.toy import run_toy  # noqa: PLC0415 - toy's plotting loads only where a seed run needs it

            run_toy(dataclasses.replace(cfg, start="random"), self.parent(plan),
                    RunHooks(tags={**hooks.tags, "seed": str(cfg.seed)}, name=hooks.name, on_open=score))
        else:
            with tracking.open_run(cfg.experiment, hooks.name, {"task": "toy", **hooks.tags},
                                   parent=self.parent(plan)) as run:
                run.log_params(logged_params(cfg))
                score(run)
        return float(curve[-1])

    def cifar_score(self, plan: StudyPlan, phase: str, cfg: Any, trial: optuna.trial.Trial,
                    hooks: RunHooks) -> float:
        """Final val_acc of an ordinary cifar run (0 if it diverged); trials report each epoch to the pruner."""
        from pipeline.cifar import run_cifar  # noqa: PLC0415

        if self.cifar is None:
            self.cifar = cifar_inputs(self.cfg)
        last: dict[str, float] = {}

        def on_epoch(epoch: int, metrics: dict) -> None:
            last["val_acc"] = metrics["val_acc"]
            if phase == "trials" and self.cfg.pruner != "none":
                trial.report(metrics["val_acc"], epoch)
                if epoch < cfg.epochs and trial.should_prune():
                    last["pruned"] = epoch
                    raise StopTraining(f"pruned by hyperband after epoch {epoch}")

        tags = {**hooks.tags, **({"seed": str(cfg.seed)} if phase == "seeds" else {})}
        _, code = run_cifar(cfg, *self.cifar, self.parent(plan), dataclasses.replace(hooks, tags=tags,
                                                                                     on_epoch=on_epoch))
        if code == EXIT_DIVERGED:
            trial.set_user_attr("diverged", True)
            return 0.0
        if "pruned" in last:
            print(f"{plan.label} trial {trial.number}: pruned after epoch {last['pruned']:.0f}", flush=True)
            raise optuna.TrialPruned(f"val_acc {last['val_acc']:.4f}")
        return float(last.get("val_acc", 0.0))


def short_number(value: float) -> str:
    """2.1e-3 for 0.0021: a number for a run name, two significant figures, no exponent padding."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def run_name(plan: StudyPlan, phase: str, cfg: Any, number: int) -> str:
    """adam-t03-lr2.1e-3, adam-default-lr1e-3, adam-seed2: what each run is, readable in the runs table."""
    lr = short_number(cfg.optimizer_settings.kwargs["lr"])
    if phase == "trials":
        return f"{plan.optimizer}-t{number:02d}-lr{lr}"
    return f"{plan.optimizer}-default-lr{lr}" if phase == "default" else f"{plan.optimizer}-seed{cfg.seed}"


def cifar_inputs(cfg: TuneConfig) -> tuple:
    """(arrays, device) every cifar trial of this tune trains on: missing data or device is a UsageError."""
    from pipeline.cifar import load_data, resolve_device  # noqa: PLC0415

    base = cfg.children[0].base
    return load_data(base), resolve_device(base.device)


def _point(cfg: Any, plan: StudyPlan) -> str:
    """The trial's setting, for its progress line."""
    shown = {"lr": cfg.optimizer_settings.kwargs["lr"], **({"weight_decay": cfg.weight_decay}
                                                          if "weight_decay" in plan.dims else {})}
    return ", ".join(f"{key} {value:.4g}" for key, value in shown.items())

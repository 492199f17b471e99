"""A `tune` worker: it takes trials from the studies in order (tuning trials, the first the default setting; then seed reruns
of the best setting) until every study is done, each trial an MLflow run nested under its optimizer's run."""
from __future__ import annotations

import contextlib
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
from pipeline.core.progress import Counter
from pipeline.optim.registry import preload
from pipeline.sweeps.tune import batch, search, trained
from pipeline.sweeps.tune.studies import PHASES, Studies
from pipeline.training.hooks import RunHooks
from pipeline.workloads.toy import scores
from pipeline.workloads.toy.functions import get_function

ROLES = {"trials": "trial", "seeds": "seed"}
DEFAULT_ATTR = "default"  # user attr of the trial that is the optimizer's own default setting (trial 0)
BASIN_ATTR = "basin"  # user attr of a toy study's first seed trial: its setting's basin map (scores.basin_text)


def default_point(plan: StudyPlan) -> dict[str, float]:
    """The optimizer's own setting in the searched dimensions (a weight decay of 0 stays unsearched: a log scale
    has no 0)."""
    resolved = plan.base.optimizer_settings.kwargs
    return {dim: float(resolved[dim]) for dim in plan.dims if resolved.get(dim)}


def enqueue_default(study: optuna.Study, plan: StudyPlan) -> None:
    """The study's first trial is the default setting, counted in its K (Optuna's enqueue_trial), so tuning
    never selects a setting worse than the default on the tuning seed."""
    if not any(t.user_attrs.get(DEFAULT_ATTR) for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(default_point(plan), user_attrs={DEFAULT_ATTR: True})
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


class Worker(Studies):
    """One process's share of a tune: its studies (those of `studies`, loaded or not yet), and runs nested under
    the tune's runs; worker `index` of this command's local workers (batch.in_turn)."""

    def __init__(self, ids: RunIds, studies: Studies, cifar: tuple | None = None, progress: Counter | None = None,
                 index: int = 0) -> None:
        super().__init__(studies.cfg, studies.storage, studies.studies)
        cfg = studies.cfg
        self.ids = ids
        self.plans = batch.in_turn(cfg.children, index, cfg.workers)
        self.progress = progress or Counter()  # finished trials, for the command's bar
        self.parents: dict[str, tracking.Run] = {}
        # cifar: (arrays, device); workloads: workload -> (arrays, device) of its CIFAR-10 data; given, or loaded
        # on the first trial that needs them
        self.inputs = cifar if cifar is not None else (None if cfg.kind == "cifar" else {})
        preload()  # before the first trial, where a Ctrl-C would land in the middle of an import

    def work(self) -> None:
        """Take trials until every study is done; wait (failing dead workers' trials) while others hold the rest."""
        while True:
            pending = ran = False
            for plan in self.plans:
                for phase in PHASES:
                    study, budget = self.study(plan, phase), self.budget(phase)
                    if search.is_done(study, budget):
                        continue
                    pending = True
                    if phase == "seeds" and not search.is_done(self.study(plan, "trials"), self.cfg.trials):
                        break
                    search.fail_stale(study, search.GRACE_BEATS * self.cfg.heartbeat_s)
                    if search.has_room(study, budget):
                        self.progress.study(f"{plan.label} {phase}")
                        self.run(plan, phase, study, budget)
                        ran = True
            if not pending:
                return
            if not ran:
                time.sleep(POLL_S)

    def run(self, plan: StudyPlan, phase: str, study: optuna.Study, budget: int) -> None:
        """A cifar trial, one at a time; toy trials in batches, as many as this worker's share of the study (one
        at a time for a sampler that learns from every score: tpe)."""
        if self.cfg.kind != "toy":
            search.run_one(study, budget, self.objective(plan, phase))
            return
        batched = phase != "trials" or self.cfg.sampler in batch.BATCHED
        size = batch.share(study, budget, self.cfg.workers, len(self.cfg.children)) if batched else 1
        batch.run_batch(study, budget, size, lambda trial: self.setting(plan, phase, trial),
                        lambda trials, cfgs: self.toy_batch(plan, phase, trials, cfgs))

    def setting(self, plan: StudyPlan, phase: str, trial: optuna.trial.Trial) -> Any:
        """What one trial of this phase runs: a tuning point, the defaults, or the best point on a fresh seed."""
        if phase == "trials":
            return dataclasses.replace(plan.base, **search.suggest(trial, plan.dims, self.bounds))
        best = search.best_trial(self.study(plan, "trials")).params
        index = search.seed_index(self.study(plan, "seeds"), trial)
        return dataclasses.replace(plan.base, **best, seed=plan.base.seed + 1 + index)

    def tags(self, plan: StudyPlan, phase: str, trial: optuna.trial.Trial) -> dict[str, str]:
        default = {"default": "true"} if trial.user_attrs.get(DEFAULT_ATTR) else {}
        return {"role": ROLES[phase], "study": self.cfg.study_name(plan, phase), "trial": str(trial.number),
                **default, "optimizer": plan.optimizer, "workload": plan.workload,
                "worker": f"{socket.gethostname()}:{os.getpid()}", tracking.SWEEPS_TAG: self.ids.parent}

    def finished(self, plan: StudyPlan, phase: str, numbers: list[int], cfgs: list, values: list[float]) -> None:
        """Count the trials on the progress bar; with verbose=true, one line each."""
        self.progress.advance(len(numbers))
        if self.cfg.verbose:
            for number, cfg, value in zip(numbers, cfgs, values):
                print(f"{plan.label} {ROLES[phase]} {number}: {_point(cfg, plan)} -> score {value:.6g}", flush=True)

    def objective(self, plan: StudyPlan, phase: str) -> Callable[[optuna.trial.Trial], float]:
        """One trained trial of this phase (a cifar run, or a train run of a workload), as an Optuna objective."""
        def objective(trial: optuna.trial.Trial) -> float:
            cfg = self.setting(plan, phase, trial)
            tags = {**self.tags(plan, phase, trial), **({"seed": str(cfg.seed)} if phase == "seeds" else {})}
            hooks = RunHooks(tags=tags, name=run_name(plan, phase, cfg, trial.number,
                                                      bool(trial.user_attrs.get(DEFAULT_ATTR))),
                             on_open=lambda run: trial.set_user_attr("run_id", run.run_id))
            try:
                score = self.score(plan, phase, cfg, trial, hooks)
            except (optuna.TrialPruned, KeyboardInterrupt):
                raise
            except Exception as error:  # noqa: BLE001 - reported here, recorded FAILED by Optuna, the tune goes on
                print(f"error: {plan.label} {ROLES[phase]} {trial.number} failed ({type(error).__name__}: {error})",
                      file=sys.stderr)
                raise
            self.finished(plan, phase, [trial.number], [cfg], [score])
            return score

        return objective

    def score(self, plan: StudyPlan, phase: str, cfg: Any, trial: optuna.trial.Trial, hooks: RunHooks) -> float:
        """What a trained trial of config `cfg` scores (trained.py)."""
        if self.cfg.kind == "train":
            return trained.train_score(self.cfg, plan, cfg, self.inputs, self.parent(plan), hooks)
        if self.inputs is None:
            self.inputs = trained.cifar_inputs(self.cfg.children[0].base)
        return trained.cifar_score(self.cfg, plan, phase, cfg, self.inputs, trial, self.parent(plan), hooks)

    def toy_batch(self, plan: StudyPlan, phase: str, trials: list, cfgs: list) -> list[float]:
        """A batch of toy trials: each the mean capped gap over `starts` random starts, descended together, and
        an MLflow run (RUNNING while they descend) holding its params, score curve and tags; a seed rerun is an
        ordinary toy run besides, with its figures."""
        try:
            curves = self._toy_runs(plan, phase, trials, cfgs)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - reported here; run_batch fails the trials, the tune goes on
            numbers = ", ".join(str(t.number) for t in trials)
            print(f"error: {plan.label} {ROLES[phase]} {numbers} failed ({type(error).__name__}: {error})",
                  file=sys.stderr)
            raise
        values = [float(curve[-1]) for curve in curves]
        self.finished(plan, phase, [t.number for t in trials], cfgs, values)
        return values

    def _toy_runs(self, plan: StudyPlan, phase: str, trials: list, cfgs: list) -> list:
        if phase == "seeds":  # each an ordinary toy run of one random start, descended with the score's starts
            plotted = [dataclasses.replace(cfg, start="random") for cfg in cfgs]
            # The first seed's trial carries the tuned setting's basin map (the report's basins.png), its grid
            # descended in the same batch: one descent fewer per study.
            mapped = [t for t, cfg in zip(trials, cfgs) if cfg.seed == plan.base.seed + 1]
            curves, trajs = self._descend(cfgs, plotted, basin=bool(mapped))
            if mapped:
                fn = get_function(cfgs[0].function)
                mapped[0].set_user_attr(BASIN_ATTR, scores.basin_text(scores.basin_of(fn, trajs.pop())))
            for trial, cfg, curve, traj in zip(trials, plotted, curves, trajs):
                self._seed_run(plan, trial, cfg, curve, traj)
            return curves
        with contextlib.ExitStack() as stack:
            runs = []
            for trial, cfg in zip(trials, cfgs):
                runs.append(stack.enter_context(tracking.open_run(
                    cfg.experiment, run_name(plan, phase, cfg, trial.number, bool(trial.user_attrs.get(DEFAULT_ATTR))),
                    {"task": "toy", **self.tags(plan, phase, trial)}, parent=self.parent(plan))))
                trial.set_user_attr("run_id", runs[-1].run_id)
            curves = self._descend(cfgs, [])[0]
            for run, cfg, curve in zip(runs, cfgs, curves):
                run.log_steps(_score_steps(curve), params={**logged_params(cfg), "starts": self.cfg.starts})
        return curves

    def _descend(self, cfgs: list, plotted: list, basin: bool = False) -> tuple[list, list]:
        """The score curves of toy trials `cfgs`, and in the same descent the trajectory of each `plotted` config,
        then (`basin`) of the basin grid at the first config's setting (scores.scored_descents)."""
        first, also = cfgs[0], []
        fn = get_function(first.function)
        if plotted:
            from pipeline.toy import start_of  # noqa: PLC0415 - toy's plotting loads only for seed runs
            also = [(cfg.optimizer_settings, start_of(cfg)) for cfg in plotted]
        if basin:
            also.append((first.optimizer_settings, scores.basin_starts(fn, first.optimizer_settings)))
        return scores.scored_descents(fn, [c.optimizer_settings for c in cfgs], self.cfg.starts,
                                      [c.seed for c in cfgs], first.steps, first.tolerance, also)

    def _seed_run(self, plan: StudyPlan, trial: optuna.trial.Trial, cfg: Any, curve: Any, traj: Any) -> None:
        """A seed rerun: an ordinary toy run of one random start (its figures, trajectory `traj` and outcome),
        with the score curve of its `starts` besides."""
        from pipeline.toy import run_toy  # noqa: PLC0415 - toy's plotting loads only where a seed run needs it

        tags = {**self.tags(plan, "seeds", trial), "seed": str(cfg.seed)}
        hooks = RunHooks(tags=tags, name=run_name(plan, "seeds", cfg, trial.number),
                         on_open=lambda run: trial.set_user_attr("run_id", run.run_id),
                         logged=(_score_steps(curve), {"starts": self.cfg.starts}))
        run_toy(cfg, self.parent(plan), hooks, quiet=not self.cfg.verbose, descended=traj, in_sweep=True)

    def parent(self, plan: StudyPlan) -> tracking.Run:
        if plan.label not in self.parents:
            self.parents[plan.label] = tracking.existing_run(self.ids.children[plan.label])
        return self.parents[plan.label]


def short_number(value: float) -> str:
    """2.1e-3 for 0.0021: a number for a run name, two significant figures, no exponent padding."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def run_name(plan: StudyPlan, phase: str, cfg: Any, number: int, default: bool = False) -> str:
    """adam-t03-lr2.1e-3, adam-t00-default-lr1e-3, adam-seed2: what each run is, readable in the runs table."""
    lr = short_number(cfg.optimizer_settings.kwargs["lr"])
    if phase == "trials":
        return f"{plan.optimizer}-t{number:02d}-{'default-' if default else ''}lr{lr}"
    return f"{plan.optimizer}-seed{cfg.seed}"


def _score_steps(curve: Any) -> list:
    """A score curve as logged steps: a sweep's history (tracking.HISTORY_POINTS), its last step the score."""
    return tracking.history_steps({"score": curve}, tracking.HISTORY_POINTS)


def _point(cfg: Any, plan: StudyPlan) -> str:
    """The trial's setting, for its progress line."""
    shown = {"lr": cfg.optimizer_settings.kwargs["lr"], **({"weight_decay": cfg.weight_decay}
                                                          if "weight_decay" in plan.dims else {})}
    return ", ".join(f"{key} {value:.4g}" for key, value in shown.items())

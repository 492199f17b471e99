"""A tune's Optuna studies as one process sees them: one per (optimizer, workload) and phase (tuning trials, then
seed reruns of the best setting), loaded once, created by the first process to ask, with the same sampler
everywhere; and how many trials they have counted. Workers take trials from them; the report reads them."""
from __future__ import annotations

from typing import Any

import optuna

from pipeline.config.tune import StudyPlan, TuneConfig
from pipeline.sweeps.tune import search

PHASES = ("trials", "seeds")
Loaded = dict[tuple[str, str], optuna.Study]  # (StudyPlan.label, phase) -> its study


class Studies:
    """The studies of a tune on one storage; `loaded`: those another Studies of this process has loaded (loading
    one takes several transactions, and a command reads every study three times: to count, work and report)."""

    def __init__(self, cfg: TuneConfig, storage: Any, loaded: Loaded | None = None) -> None:
        self.cfg, self.storage = cfg, storage
        self.studies: Loaded = {} if loaded is None else loaded

    @property
    def bounds(self) -> search.Bounds:
        cfg = self.cfg
        return {"lr": (cfg.lr_min, cfg.lr_max), "weight_decay": (cfg.weight_decay_min, cfg.weight_decay_max)}

    def budget(self, phase: str) -> int:
        return {"trials": self.cfg.trials, "seeds": self.cfg.seeds}[phase]

    def study(self, plan: StudyPlan, phase: str) -> optuna.Study:
        """The phase's study of `plan`, created by the first worker to ask; the same sampler everywhere."""
        key = (plan.label, phase)
        if key not in self.studies:
            epochs = getattr(plan.base, "epochs", 1)
            self.studies[key] = optuna.create_study(
                storage=self.storage, study_name=self.cfg.study_name(plan, phase), load_if_exists=True,
                direction="maximize" if self.cfg.score_of(plan)[1] == "max" else "minimize",
                sampler=search.make_sampler(self.cfg.sampler, plan.dims, self.bounds, self.cfg.trials,
                                            plan.base.seed),
                pruner=search.make_pruner(self.cfg.pruner if phase == "trials" else "none", epochs))
        return self.studies[key]

    def counted(self) -> int:
        """Trials every study has counted so far (a tune run again continues from there)."""
        total = 0
        for plan in self.cfg.children:
            for phase in PHASES:
                found = search.counts(self.study(plan, phase))
                total += min(self.budget(phase), found["complete"] + found["pruned"])
        return total

"""`tune`'s machinery: Optuna storages, samplers and exact budgets (`search`), runs made once by many processes
(`claim`), the worker that takes trials (`worker`), a finished tune's numbers (`results`, pure) and what it logs
(`report`)."""
from pipeline.sweeps.tune.results import StudyResult, TrialRecord

"""Many runs compared: `summary` (a compare's rows and overlays, pure) and `tune` (Optuna studies with exact
budgets, the worker that runs their trials, the results and the report)."""
from pipeline.sweeps.summary import RunRecord, as_csv, as_markdown

"""Everything that talks to MLflow, and the only package that imports it.

- `server`: where runs go (the tracking URI), a check of the server at the edge, store errors told apart;
- `run`: `open_run(...)` -> `Run`, the one way to start or continue a run (top level or nested) and log to it;
- `handed`: the run `mlflow run` made for this process (its experiment checked, a note or failure said on it);
- `experiments`: which experiment a run goes to, made and marked for the UI;
- `store`: questions asked of stored runs (resumable, reusable, histories, artifacts, models, aliases);
- `modelfiles`: a logged model's folder checked before MLflow loads it;
- `outbox`: the background sender that keeps logging through a server outage (knows no MLflow itself).

Importing this package loads MLflow: the command line validates every param before it imports an entry point.
"""
from pipeline.tracking.experiments import ensure_experiment, local_store_folder
from pipeline.tracking.handed import check_handed_experiment, fail_handed_run, handed_run_tags, note_handed_run
from pipeline.tracking.run import (HISTORY_POINTS, Run, end_run, existing_run, fail_run, history_steps, kill_run,
                                   open_run)
from pipeline.tracking.server import check_server, is_permanent, is_store_error, tracking_uri
from pipeline.tracking.store import (SWEEPS_TAG, add_to_sweep, download, fetch_run, find_finished_run,
                                     find_resumable_run, last_step, latest_runs, load_predictor, run_exists,
                                     running_runs, set_alias, share_sweep_view, sweep_link)

__all__ = ["HISTORY_POINTS", "Run", "SWEEPS_TAG", "add_to_sweep", "check_handed_experiment", "check_server",
           "download", "end_run", "ensure_experiment", "existing_run", "fail_handed_run", "fail_run", "fetch_run",
           "find_finished_run", "find_resumable_run", "handed_run_tags", "history_steps", "is_permanent",
           "is_store_error", "kill_run", "last_step", "latest_runs", "load_predictor", "local_store_folder",
           "note_handed_run", "open_run", "run_exists", "running_runs", "set_alias", "share_sweep_view", "sweep_link",
           "tracking_uri"]

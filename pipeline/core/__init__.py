"""What every other package stands on: errors and exit codes, typed values from text, provenance hashes, the run
`mlflow run` hands over. Imports nothing of optlab's and no third-party package."""
from pipeline.core.errors import (EXIT_ARTIFACTS, EXIT_BROKEN_PIPE, EXIT_DIVERGED, EXIT_INTERNAL, EXIT_INTERRUPTED,
                                  EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, EXIT_WORKER_DIED, Terminated, UsageError,
                                  one_line)
from pipeline.core.handed import handed_run_id, take_handed_run_id
from pipeline.core.provenance import code_version, config_hash
from pipeline.core.values import UNSET, coerce, parse_point, require, short

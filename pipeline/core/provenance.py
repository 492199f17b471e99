"""Which code and which settings made a run: short hashes that let a sweep reuse a finished run."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: params.yaml, the code hashed below

# Settings that change where or how a run is recorded, not what it computes.
_NOT_IN_HASH = {"resume", "checkpoint_every_s", "system_metrics", "log_model", "register", "model_name", "experiment",
                "landscape", "landscape_grid", "landscape_images", "landscape_directions"}


def config_hash(config: Any) -> str:
    """A short hash of everything that decides a run's numbers: equal hashes, equal training."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_HASH}
    fields["entry"] = type(config).__name__
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def code_version() -> str:
    """A short hash of the package's source: runs with equal hashes ran the same code."""
    digest = hashlib.sha256()
    package = PROJECT_ROOT / "pipeline"
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]

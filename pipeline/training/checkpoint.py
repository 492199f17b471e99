"""Save and restore everything a resumed cifar run needs. Loading never runs code from the file: a checkpoint
comes from a run's artifacts, which anyone with write access to a shared store can replace."""
from __future__ import annotations

import dataclasses
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from pipeline.core.errors import UsageError, one_line
from pipeline.training.loop import FitState

FILE_NAME = "last.pt"


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, loader: Any, state: FitState) -> Path:
    """Write weights, optimizer, schedule, the loader's random streams and the progress to folder/last.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "loader": loader.state_dict(), "torch_rng": torch.get_rng_state(),
                "state": dataclasses.asdict(state)}, path)
    return path


def read_checkpoint(path: Path, device: torch.device, label: str) -> dict[str, Any]:
    """The checkpoint's contents, loaded with torch's weights_only unpickler: tensors, numbers, strings,
    lists and dicts only. Anything else (code, a truncated or foreign file) is one UsageError naming `label`."""
    try:
        with warnings.catch_warnings():  # a foreign pickle draws torch warnings: the one line below says it all
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise UsageError(_refusal(label, error)) from None
    missing = {"model", "optimizer", "scheduler", "loader", "torch_rng", "state"} - set(
        saved if isinstance(saved, dict) else ())
    if missing:
        raise UsageError(_refusal(label, ValueError(f"it lacks {', '.join(sorted(missing))}")))
    return saved


def restore_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       loader: Any, label: str) -> FitState:
    """Load a checkpoint into the model, optimizer, schedule and loader; returns the progress to continue from.
    A checkpoint that does not fit them (another model, a damaged file) is one UsageError naming `label`."""
    device = next(model.parameters()).device
    saved = read_checkpoint(path, device, label)
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        loader.load_state_dict({key: value.cpu() for key, value in saved["loader"].items()})
        torch.set_rng_state(saved["torch_rng"].cpu())
        state = FitState(**saved["state"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise UsageError(_refusal(label, error)) from None
    if not isinstance(state.epoch, int) or state.epoch < 0 or not isinstance(state.history, list):
        raise UsageError(_refusal(label, ValueError(f"its progress is not an epoch count: {state.epoch!r}")))
    return state


def _refusal(label: str, error: BaseException) -> str:
    """One line: which checkpoint, why it cannot be used, and what to do instead."""
    return (f"resume: cannot use {label} ({one_line(error)}); start a new run without "
            "resume=true, or remove the damaged checkpoint")

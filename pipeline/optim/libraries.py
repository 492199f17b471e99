"""Any optimizer of torch.optim, pytorch-optimizer or schedulefree by its name there: `torch:Rprop`,
`pytorch_optimizer:lamb`, `schedulefree:SGDScheduleFree`. Each name is checked against that library's own list;
the libraries are imported only when such a name is used."""
from __future__ import annotations

import difflib
import functools
import importlib

import torch

from pipeline.core.errors import UsageError

LIBRARIES = ("torch", "pytorch_optimizer", "schedulefree")
# Classes the libraries list whose step optlab's loops (one gradient, then step()) cannot drive, and why.
UNDRIVABLE = {
    "torch:lbfgs": "it needs a closure (it evaluates the loss several times per step)",
    "torch:sparseadam": "it takes sparse gradients only",
    "torch:muon": "it takes 2-D parameters only; optimizer=muon gives it a network's hidden matrices (conv kernels "
                  "flattened) and AdamW the rest",
}


def _optimizer_classes(module: object) -> dict[str, type]:
    """Lower-cased name -> class for every public torch Optimizer subclass a module holds."""
    found = {}
    for name in dir(module):
        value = getattr(module, name)
        if not name.startswith("_") and isinstance(value, type) and issubclass(value, torch.optim.Optimizer) \
                and value is not torch.optim.Optimizer:
            found[name.lower()] = value
    return found


@functools.lru_cache(maxsize=None)
def library_classes(library: str) -> dict[str, type]:
    """Lower-cased name -> class, for every optimizer `library` offers (its own list where it has one)."""
    if library == "torch":
        return _optimizer_classes(torch.optim)
    if library == "pytorch_optimizer":
        module = importlib.import_module("pytorch_optimizer")
        return {name.lower(): module.load_optimizer(name) for name in module.get_supported_optimizers()}
    module = importlib.import_module("schedulefree")
    # *Closure classes need a closure; wrappers take another optimizer instead of settings.
    return {name: cls for name, cls in _optimizer_classes(module).items()
            if not name.endswith("closure") and "wrapper" not in name}


def find_class(text: str) -> tuple[str, type]:
    """'<library>:<name>' -> (canonical name, class), or one UsageError with the library's closest names."""
    library, _, wanted = text.partition(":")
    library = library.strip().replace("-", "_")
    if library not in LIBRARIES:
        raise UsageError(f"optimizer {text!r}: unknown library {library!r}; use one of {', '.join(LIBRARIES)} "
                         "(e.g. torch:Rprop), or a registered name: python -m pipeline optimizers")
    try:
        classes = library_classes(library)
    except ImportError as error:
        raise UsageError(f"optimizer {text!r}: the library {library} is not installed ({error}); "
                         "make setup installs it") from None
    key = wanted.strip().lower()
    if key not in classes:
        close = difflib.get_close_matches(key, list(classes), n=3, cutoff=0.6)
        hint = f"; closest: {', '.join(f'{library}:{classes[c].__name__}' for c in close)}" if close else ""
        raise UsageError(f"optimizer {text!r}: {library} has no optimizer {wanted.strip()!r}{hint} "
                         f"({len(classes)} names, e.g. {library}:{next(iter(classes.values())).__name__})")
    name = f"{library}:{classes[key].__name__}"
    if name.lower() in UNDRIVABLE:
        raise UsageError(f"optimizer {text!r} cannot be used here: {UNDRIVABLE[name.lower()]}")
    return name, classes[key]


def import_path(cls: type) -> str:
    """Where a class is defined, as 'module.Class'."""
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve(path: str) -> type:
    """The class at 'module.Class'."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def summary_of(cls: type) -> str:
    """The first sentence of a class's docstring, for listings (at most 70 characters)."""
    text = " ".join((cls.__doc__ or cls.__name__).split())
    return text.split(". ")[0][:70]

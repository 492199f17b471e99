"""Unpickle CIFAR-10 batch files without running code: only dicts, lists, strings, numbers and numpy arrays.

A pickle runs code by naming a global (a function or class) and calling it; every global goes through
Unpickler.find_class, so admitting only the few that rebuild numpy arrays leaves a file nothing to run.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import UsageError

try:  # numpy 2 renamed numpy.core to numpy._core; files name whichever numpy wrote them
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer


class RefusedPickle(pickle.UnpicklingError):
    """The file asks for something a data file never needs; the message says what."""


_NDARRAY = object()  # stands for numpy.ndarray: only _empty_array may use it, so a file cannot size arrays itself


def _empty_array(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """numpy's _reconstruct as numpy's own pickles call it: an empty array that the file's data then fills."""
    if subtype is not _NDARRAY or shape != (0,):
        raise RefusedPickle("it calls numpy's array constructor in a way numpy's own pickles never do")
    return _reconstruct(np.ndarray, (0,), b"b")


def _plain_dtype(*args: Any) -> np.dtype:
    """numpy.dtype, without object fields: an object array would hold whatever the file builds."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedPickle(f"it holds a numpy array of Python objects ({dtype}), which a data file never needs")
    return dtype


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """_codecs.encode as protocol 0-2 pickles write bytes; other codecs (zlib, bz2, ...) could inflate a file."""
    if encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"it makes bytes with the {encoding!r} codec, where data files use latin-1")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    """bytes() as protocol 0-2 pickles write b''; taking no argument, it cannot allocate a size the file chose."""
    return b""


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x and 2.x names of one module
# (module, name) -> what the file gets, from pickletools on files written by numpy 2 (protocols 0-5), the
# numpy 1.x and Python 2 names of the same objects, and the official Python 2 files' layout.
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _plain_dtype,
    **{(module, "_reconstruct"): _empty_array for module in _NUMPY_CORE},
    **{(module, "scalar"): scalar for module in _NUMPY_CORE},  # numpy scalars, e.g. np.int64 labels
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5 arrays (it refuses object dtypes itself)
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_bytes,  # bytes in protocol 0-2 pickles written by Python 3
    ("__builtin__", "bytes"): _empty_bytes,  # b'' in protocol 0-2 pickles (Python 2 module name)
    ("builtins", "bytes"): _empty_bytes,
}


def _shown(module: str, name: str) -> str:
    """module.name for a message: kept on one line and short, whatever the file holds."""
    text = f"{module}.{name}"
    return text if text.isprintable() and len(text) <= 100 else ascii(text[:100])


class DataOnlyUnpickler(pickle.Unpickler):
    """pickle.Unpickler that hands out only the ALLOWED globals and refuses every other one."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed stand-in for module.name, or RefusedPickle before anything is imported or called."""
        if (module, name) not in ALLOWED:
            raise RefusedPickle(f"it asks to load {_shown(module, name)}, which a data file never needs")
        return ALLOWED[(module, name)]


def load_batch_pickle(path: Path) -> object:
    """The object pickled in path, built from data only; any file that is refused or unreadable is a UsageError."""
    try:
        with path.open("rb") as f:
            # latin1: the official files are Python 2 pickles, whose byte strings load as latin-1 text.
            return DataOnlyUnpickler(f, encoding="latin1").load()
    except RefusedPickle as err:
        raise UsageError(f"{path} is not a plain CIFAR-10 batch: {err}; refusing to load it") from None
    except Exception as err:  # a garbled pickle can raise almost anything; report it as a bad file
        raise UsageError(f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}); replace the file") from None

"""A user's own workload: `workload=package.module:function` imports the module as `python -m` would (the
working folder first, then PYTHONPATH) and calls the function, which returns a `Workload` built on the same
contract as the registered ones (docs/workloads.md). Only names typed on the command line get here: names read
back from a tracking store are never imported."""
from __future__ import annotations

import importlib
import os
import re
import sys

from pipeline.core.errors import UsageError, one_line
from pipeline.workloads.spec import Workload

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def load_user_workload(text: str):
    """The Workload `package.module:function` returns, or one UsageError line saying what went wrong."""
    if not _NAME.match(text):
        raise UsageError(f"workload: {text!r} is neither a registered name nor package.module:function")
    module_name, _, function_name = text.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` finds modules of the working folder
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - the user's module: any failure to import is one line
        raise UsageError(f"workload: cannot import {module_name!r} ({one_line(error)}); run from the folder that "
                         "holds it or put it on PYTHONPATH") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(f"workload: {module_name} has no function {function_name!r}")
    try:
        workload = function()
    except Exception as error:  # noqa: BLE001
        raise UsageError(f"workload: {text}() raised {one_line(error)}") from None
    if not isinstance(workload, Workload):
        raise UsageError(f"workload: {text}() returned {type(workload).__name__}, not a Workload "
                         "(pipeline.workloads.spec.Workload; see docs/workloads.md)")
    if workload.cifar_model or workload.build is None or workload.data is None:
        raise UsageError(f"workload: {text}() must give build and data (a step-trained workload)")
    return workload

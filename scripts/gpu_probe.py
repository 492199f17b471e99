"""The machine as the GPU check sees it, as one JSON object on stdout: Python, torch and its CUDA, the GPUs, the
versions of the packages the project uses against pyproject.toml's ranges, and whether they import.

Run by scripts/gpu_check.py with the wheels on PYTHONPATH: `python scripts/gpu_probe.py pyproject.toml`."""
from __future__ import annotations

import importlib
import json
import platform
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

# what the steps import, the SQLite store's module and mlflow.pytorch (log_model) included: a wheel missing from
# scripts/gpu-wheels.txt fails step 0 in seconds instead of a training step after minutes
MODULES = ("torch", "torchvision", "numpy", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.pytorch",
           "sqlalchemy", "alembic", "optuna", "pytorch_optimizer", "schedulefree", "matplotlib", "yaml", "tqdm",
           "psutil", "pipeline.tracking", "pipeline.compare", "pipeline.tune")


def torch_facts() -> dict:
    """torch's version, its CUDA, cuDNN and NCCL, and each GPU it sees."""
    import torch

    cuda = torch.cuda.is_available()
    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
             "cudnn": torch.backends.cudnn.version() if cuda else None, "gpus": []}
    if cuda:
        facts["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            facts["gpus"].append(f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                                 f"{props.multi_processor_count} SMs, compute {props.major}.{props.minor}")
    return facts


def driver() -> str | None:
    """The driver version nvidia-smi reports, if there is one."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], text=True,
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def ranges(pyproject: Path) -> dict:
    """Each dependency's installed version, and those outside pyproject.toml's range or not installed."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    versions, outside, absent = {}, [], []
    for line in project["dependencies"]:
        requirement = Requirement(line)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            absent.append(requirement.name)
            continue
        versions[requirement.name] = version
        if not requirement.specifier.contains(re.sub(r"\+.*", "", version), prereleases=True):
            outside.append(f"{requirement.name} {version} (pyproject: {requirement.specifier})")
    return {"versions": versions, "outside": outside, "absent": absent}


def imports() -> list[str]:
    """The modules that fail to import, each with its error."""
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure is the finding
            failed.append(f"{name}: {type(error).__name__}: {error}")
    return failed


def main() -> int:
    facts = {"python": platform.python_version(), "platform": platform.platform(), "executable": sys.executable,
             "driver": driver(), **ranges(Path(sys.argv[1])), "import_errors": imports()}
    try:
        facts.update(torch_facts())
    except Exception as error:  # noqa: BLE001 - reported, not raised: the check says what is wrong
        facts["torch_error"] = f"{type(error).__name__}: {error}"
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

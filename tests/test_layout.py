"""The house rules the README's layout section states, checked on the source: imports flow one way, mlflow only in
tracking/, matplotlib only in plots.py, tuneplots.py and landscapeplots.py, modules of at most 300 lines and functions of at most 40."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
# Layers from the top; a module may import its own layer or any below it (the README's import-direction line).
LAYERS = [
    {"cli", "__main__"},
    {"demo"},
    {"compare", "tune"},
    {"tune_report"},
    {"trials"},
    {"toy", "cifar", "predict", "launch"},
    {"runlog", "landscape_report"},
    {"tracking", "plots", "tuneplots", "landscapeplots", "summary", "tuned", "logger", "outbox", "search", "claim",
     "scores", "styles"},
    {"descent", "train", "checkpoint", "surface"},
    {"optimizers", "optimizer_libraries", "muon", "schedulers", "functions", "models", "data", "images",
     "safe_pickle", "reference", "distributed", "landscape"},
    {"config", "compare_config", "tune_config", "provenance", "values", "errors"},
]
REGISTRIES = {"optimizers", "schedulers", "functions", "models"}  # config validates names against them (allowed)


def _modules() -> dict[str, Path]:
    """Module name -> source file for every module of the package; tracking/'s files as tracking.<name>."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "tracking":
            found[f"tracking.{path.stem}"] = path
        elif path.stem != "__init__":
            found[path.stem] = path
    return found


def _layer(name: str) -> int:
    top = name.split(".")[0]
    return next(index for index, layer in enumerate(LAYERS) if top in layer)


def _imported(path: Path) -> set[str]:
    """The pipeline modules and third-party top-level packages a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {f"{node.module}.{alias.name}" for alias in node.names} if node.module == "pipeline" else \
                {node.module}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


@pytest.mark.parametrize("name,path", sorted(_modules().items()))
def test_imports_flow_one_way(name, path):
    for imported in _imported(path):
        if not imported.startswith("pipeline."):
            continue
        target = imported.split(".")[1]
        if name.split(".")[0] in ("config", "compare_config", "tune_config") and target in REGISTRIES:
            continue
        assert _layer(target) >= _layer(name), f"{name} imports {target} from a layer above it"


@pytest.mark.parametrize("name,path", sorted(_modules().items()))
def test_mlflow_only_in_tracking_and_matplotlib_only_in_plots(name, path):
    tops = {imported.split(".")[0] for imported in _imported(path)}
    assert "mlflow" not in tops or name.startswith("tracking."), name
    assert "matplotlib" not in tops or name in ("plots", "tuneplots", "landscapeplots"), name


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: path.name)
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 300, f"{path.name} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= 40, f"{path.name}:{node.lineno} {node.name}"


def test_the_readme_layout_section_names_every_module():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("## What we fixed")]
    missing = [path.name for path in _modules().values()
               if path.stem not in ("__main__", "__init__") and f" {path.name} " not in layout.replace("\n", " \n")]
    assert not missing, f"README's layout section lacks {missing}"

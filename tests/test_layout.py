"""The house rules docs/architecture.md states, checked on the source: packages by job with entry modules beside
them, imports that flow one way with no circle, mlflow only in tracking/, matplotlib only in viz/, no lazy
`__getattr__` in a package, modules of at most 300 lines and functions of at most 40."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
ENTRY_MODULES = {"cli", "__main__", "demo", "toy", "cifar", "compare", "tune", "train", "predict"}
# Layers from the top; a module may import its own layer or any below it (docs/architecture.md's import direction).
# A name ending in "." stands for every module of that package.
LAYERS = [
    {"cli", "__main__"},
    {"demo"},
    {"compare", "tune"},
    {"sweeps.tune.report"},
    {"sweeps.tune.ruling"},
    {"sweeps.tune.worker", "sweeps.tune.trained", "sweeps.workloads"},
    {"sweeps.tune.studies"},
    {"train"},
    {"toy", "cifar", "predict", "training.nproc"},
    {"training.runlog", "landscape.report"},
    {"tracking.", "viz.", "sweeps.summary", "sweeps.tune.results", "sweeps.tune.verdict",
     "sweeps.tune.search", "sweeps.tune.batch", "sweeps.tune.claim", "training.hooks", "workloads.toy.scores"},
    {"workloads.toy.descent", "training.loop", "training.checkpoint", "landscape.loss_grid", "sweeps.tune.budget"},
    {"workloads.registry", "workloads.user"},
    {"optim.", "workloads.toy.functions", "workloads.toy.reference", "workloads.cifar.", "training.distributed",
     "training.objective", "workloads.quadratic", "workloads.text.", "workloads.spec", "landscape.plane"},
    {"config.", "core."},
]
REGISTRIES = ("optim.", "workloads.toy.functions", "workloads.cifar.models", "workloads.registry")  # config checks names against them


def _modules() -> dict[str, Path]:
    """Dotted name below `pipeline` -> source file, for every module; a package's __init__ under its own name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found[name] = path
    return found


MODULES = _modules()


def _layer(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer or any(entry.endswith(".") and name.startswith(entry) for entry in layer):
            return index
    packages = [index for index, layer in enumerate(LAYERS)
                for entry in layer if entry.startswith(name + ".")]  # a package sits at its lowest module's layer
    assert packages, f"pipeline.{name} has no layer"
    return max(packages)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(pipeline modules, third-party top-level packages) a file imports, anywhere in it."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pipeline" or node.module.startswith("pipeline."):
                base = node.module.removeprefix("pipeline").lstrip(".")
                for alias in node.names:
                    sub = f"{base}.{alias.name}".lstrip(".")
                    ours.add(sub if sub in MODULES else base)
            else:
                theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline."):
                    ours.add(alias.name.removeprefix("pipeline."))
                else:
                    theirs.add(alias.name.split(".")[0])
    return {name for name in ours if name}, theirs


def test_every_module_but_the_entry_points_is_in_a_package():
    loose = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    assert set(loose) <= ENTRY_MODULES, f"modules outside a package: {set(loose) - ENTRY_MODULES}"
    for name in MODULES:
        _layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_flow_one_way(name):
    for imported in _imports(MODULES[name])[0]:
        if name.startswith("config.") and imported.startswith(REGISTRIES):
            continue
        if imported == name.rpartition(".")[0] or name == imported.rpartition(".")[0]:
            continue  # a package and its own modules
        assert _layer(imported) >= _layer(name), f"pipeline.{name} imports pipeline.{imported}, a layer above it"


def test_no_import_circle():
    graph = {name: {target for target in _imports(path)[0] if target != name} for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(name, trail):
        if state.get(name) == 1:
            return
        assert state.get(name) != 0, "import circle: " + " -> ".join(trail[trail.index(name):] + [name])
        state[name] = 0
        for target in sorted(graph.get(name, ())):
            if target.startswith(name + "."):
                continue  # a package's __init__ importing its own modules runs after its parents
            visit(target, trail + [name])
        state[name] = 1

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_mlflow_only_in_tracking_and_matplotlib_only_in_viz(name):
    theirs = _imports(MODULES[name])[1]
    assert "mlflow" not in theirs or name.startswith("tracking"), name
    assert "matplotlib" not in theirs or name.startswith("viz"), name


def test_no_package_loads_its_names_lazily():
    for path in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(path.read_text())
        assert not [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"], \
            path


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 300, f"{path.name} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= 40, f"{path.name}:{node.lineno} {node.name}"


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [str(path.relative_to(PACKAGE)) for path in MODULES.values()
               if path.stem != "__init__" and str(path.relative_to(PACKAGE)) not in page]
    assert not missing, f"docs/architecture.md lacks {missing}"

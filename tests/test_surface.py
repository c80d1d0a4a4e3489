"""The package read as a maintainer would: floors, imports, sizes, the public surface.

Walks the package's source (ASTs) and asserts the architecture's rules: no private name imported
across modules, arrows only downward (engine -> probe packages -> front ends), no import cycle between
packages, no module over 400 lines, every public probe registered and annotated, and
``import workbench`` loading neither plotly nor ipywidgets.
"""

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import workbench
from workbench.registry import probes

ROOT = Path(workbench.__file__).parent
ENGINE = {
    "config",
    "state",
    "params",
    "data",
    "objective",
    "capture",
    "results",
    "registry",
    "tail",
    "loading",
    "runs",
    "function_modes",
    "tasks",
    "testing",
    "validate",
    "stats",
}
PROBE_PACKAGES = set(workbench.registry.PROBE_PACKAGES)
FRONT = {"plots", "widgets", "reports", "cli", "main"}
MAX_LINES = 400


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(["workbench", *parts]), path


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, top_level_only: bool):
    """(target module, imported names, line) for each import of the file."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports under `if TYPE_CHECKING`/try at module level
        nodes = [
            n
            for stmt in tree.body
            for n in ast.walk(stmt)
            if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        ]
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno


def _floor(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    top = parts[1]
    return "engine" if top in ENGINE else "probe" if top in PROBE_PACKAGES else "front" if top in FRONT else None


MODULES = dict(_modules())


def test_no_private_name_is_imported_across_modules():
    bad = []
    for module, path in MODULES.items():
        for target, names, line in _imports(module, path, top_level_only=False):
            if not target.startswith("workbench") or target == module:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {n} from {target}")
    assert bad == []


def test_arrows_point_only_downward():
    order = {"engine": 0, "probe": 1, "front": 2}
    bad = []
    for module, path in MODULES.items():
        src = _floor(module)
        for target, _, line in _imports(module, path, top_level_only=False):
            dst = _floor(target) if target.startswith("workbench.") else None
            if src and dst and order[dst] > order[src]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {target} ({dst})")
            if target.split(".")[0] in ("plotly", "ipywidgets") and src in ("engine", "probe"):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {target}")
    assert bad == []


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        src = ".".join(module.split(".")[:2])
        for target, _, _ in _imports(module, path, top_level_only=True):
            if target.startswith("workbench."):
                dst = ".".join(target.split(".")[:2])
                if dst != src:
                    graph.setdefault(src, set()).add(dst)
    seen, stack = set(), []

    def visit(n):
        if n in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(n) :] + [n])}")
        if n in seen:
            return
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            visit(m)
        stack.pop()
        seen.add(n)

    for n in sorted(graph):
        visit(n)


def test_no_module_over_400_lines():
    big = {
        str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert big == {}


def test_import_workbench_loads_no_front_end():
    code = "import sys, workbench; print(sorted(m for m in ('plotly', 'ipywidgets', 'papermill') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def _public_functions():
    for pkg in sorted(PROBE_PACKAGES - {"evaluate"}):
        mod = importlib.import_module(f"workbench.{pkg}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield f"{pkg}.{name}", obj


def test_every_public_function_computing_a_result_from_a_model_is_a_registered_probe():
    """Functions of a model that return xarray are probes; helpers returning tensors or names are not."""
    registered = {info.func for info in probes().values()}
    bad = []
    for qual, f in _public_functions():
        sig = inspect.signature(f)
        first = next(iter(sig.parameters), "")
        returns_xarray = any(k in str(sig.return_annotation) for k in ("xr.", "Dataset", "DataArray"))
        if first in ("model", "models", "model_a", "checkpoints") and returns_xarray and f not in registered:
            bad.append(qual)
    assert bad == []


def test_public_api_is_annotated():
    bad = []
    for qual, f in _public_functions():
        sig = inspect.signature(f)
        if sig.return_annotation is inspect.Signature.empty:
            bad.append(f"{qual} -> ?")
        for p in sig.parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in workbench.registry.TAIL:
                continue
            if p.annotation is inspect.Parameter.empty:
                bad.append(f"{qual}({p.name})")
    assert bad == []


@pytest.mark.parametrize("name", sorted(n for n, i in probes().items() if i.func.__module__.startswith("workbench.")))
def test_probe_has_a_docstring_with_an_example(name):
    doc = inspect.getdoc(probes()[name].func) or ""
    assert ">>>" in doc, f"{name}: the docstring has no runnable example"

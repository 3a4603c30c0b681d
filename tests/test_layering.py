"""The layers import one way only, and no module imports itself back through others.

data_schema <- model <- annotate <- train <- flows: each package may import only those to its
left. `testaudio` (synthetic audio for tests and the demo) imports no songmill package, and only
train and flows may import it (no stage depends on generated audio). Checked on the source (every
import statement, top-level or inside a function, and every `songmill.x.y` module named by a
string literal, which is how `importlib.import_module` loads plugins and stages), so neither a
lazy import nor an importlib string can hide a dependency running the wrong way or close a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["data_schema", "model", "annotate", "train", "flows"]
# package -> the songmill packages it may import
ALLOWED: dict[str, set[str]] = {layer: set(LAYERS[:i]) for i, layer in enumerate(LAYERS)}
ALLOWED["testaudio"] = set()
ALLOWED["train"].add("testaudio")
ALLOWED["flows"].add("testaudio")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("songmill", *(parts[:-1] if parts[-1] == "__init__" else parts)))
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """songmill modules that `path` imports (resolving `from songmill.x import y` to x.y when
    y is itself a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from songmill.annotate import tempo` depends on the module tempo, not on the
            # package's __init__ (a parent package runs before any of its modules anyway).
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # "songmill.flows.commands.lyrics" or "songmill.annotate.qc:QCStage": what importlib loads
            target = node.value.partition(":")[0]
            names = [target] if target in MODULES else []
        else:
            continue
        for name in names:
            if not name.startswith("songmill."):
                continue
            while name not in MODULES and name.count(".") > 1:
                name = name.rsplit(".", 1)[0]
            if name in MODULES:
                out.add(name)
    return out


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".")[1]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_lower_layers(module):
    own = _package(module)
    upward = sorted(
        m for m in GRAPH[module] if _package(m) != own and _package(m) not in ALLOWED[own]
    )
    assert not upward, f"{module} imports from a layer it may not use: {upward}"


def test_string_literals_naming_modules_are_followed():
    """The CLI loads its command modules by name; the graph must hold those edges (without them
    a command module importing the CLI back would close a cycle no import statement shows)."""
    assert "songmill.flows.commands.lyrics" in GRAPH["songmill.flows.cli"]
    assert "songmill.annotate.qc" in GRAPH["songmill.annotate"]


def test_nothing_imports_the_cli():
    importers = sorted(m for m, deps in GRAPH.items() if "songmill.flows.cli" in deps)
    assert not importers, f"the CLI only parses and prints; imported by {importers}"


def test_no_import_cycles():
    # Depth-first search with an explicit path; reports the first cycle found.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_installs_under_one_namespace():
    import songmill
    import songmill.model
    import songmill.testaudio

    # resolved: a development checkout may reach the tree through a `songmill` symlink
    assert Path(songmill.model.__file__).resolve().parent == ROOT / "model"
    assert Path(songmill.testaudio.__file__).resolve().parent == ROOT / "testaudio"
    assert Path(songmill.__file__).resolve().parent == ROOT

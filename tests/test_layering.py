"""The layers import one way only, and no module imports itself back through others.

data_schema <- model <- annotate <- train <- flows: each package may import only those to its
left. Checked on the source (every import statement, top-level or inside a function), so a lazy
import cannot hide a dependency running the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["data_schema", "model", "annotate", "train", "flows"]


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"songmill.{package}" if path.stem == "__init__" else f"songmill.{package}.{path.stem}"
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
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
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


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_lower_layers(module):
    upward = sorted(m for m in GRAPH[module] if _layer(m) > _layer(module))
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_no_import_cycles():
    # Depth-first search with an explicit path; reports the first cycle found.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
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

    assert Path(songmill.model.__file__).parent == ROOT / "model"
    assert Path(songmill.__file__).parent == ROOT

"""gentune's packages import one way: models <- trainables <- analysis <- search, with no cycles.

Every import is counted, at module level or inside a function: a lazy import is still a dependency."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = ["models", "trainables", "analysis", "search"]  # each may import only those before it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Modules of gentune's packages that a file imports (`from x import y` counts y when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in LAYERS}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for layer in LAYERS for p in (REPO / layer).rglob("*.py")}
    return {name: {m for m in imports_of(p, name) if m in files and m != name} for name, p in files.items()}


def test_no_upward_import():
    bad = []
    for name, deps in graph().items():
        mine = LAYERS.index(name.split(".")[0])
        bad += [f"{name} imports {d}" for d in sorted(deps) if LAYERS.index(d.split(".")[0]) > mine]
    assert not bad, "imports against the layers " + " <- ".join(LAYERS) + ":\n" + "\n".join(bad)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(g[n]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]) if d in path else f"{n} -> {d}")
            elif d not in state:
                visit(d, path + [d])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_walker_sees_imports(tmp_path):
    """The checks above could pass by seeing nothing: the walker finds known imports, lazy ones included."""
    g = graph()
    assert "trainables.errors" in g["trainables.config"]
    assert any(d.startswith("trainables") for d in g["analysis.export"])
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from search.sweep import run_sweep\n")
    assert imports_of(f, "models.m") == {"search.sweep", "search.sweep.run_sweep"}

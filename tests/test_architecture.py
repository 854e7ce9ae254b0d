"""The package's import graph: no module imports another that (directly or through others)
imports it back, whether at the top of a file or inside a function; the library never imports
the notebooks' helper."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tumorseg"


def imports_of(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere in it (``from .x import``,
    ``from . import x``, ``import tumorseg.x``, ``from tumorseg.x import``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or module.split(".")[0] == "tumorseg":
                name = module.removeprefix("tumorseg").lstrip(".")
                if name:
                    found.add(name.split(".")[0])
                else:  # from . import x, y
                    found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("tumorseg.")
            }
    return found - {path.stem}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {path.stem: path for path in package.glob("*.py")}
    return {name: imports_of(path) & modules.keys() for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state = dict.fromkeys(graph, "new")
    trail: list[str] = []

    def visit(node):
        state[node] = "open"
        trail.append(node)
        for target in sorted(graph[node]):
            if state[target] == "open":
                return trail[trail.index(target) :] + [target]
            if state[target] == "new" and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        trail.pop()
        return None

    for node in sorted(graph):
        if state[node] == "new" and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lazy_and_relative_imports_are_seen(tmp_path):
    (tmp_path / "one.py").write_text("def f():\n    from .two import g\n")
    (tmp_path / "two.py").write_text("from tumorseg import one\nimport tumorseg.three\n")
    (tmp_path / "three.py").write_text("")
    assert import_graph(tmp_path) == {"one": {"two"}, "two": {"one", "three"}, "three": set()}


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert {"train", "inference", "run"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_library_never_imports_the_notebooks_helper():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        names |= {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        assert not names & {"util", "public_tests"}, path.name

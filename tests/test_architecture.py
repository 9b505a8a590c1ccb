"""The import structure of mktool/ (issue 11): no cycles, no mktool import hidden inside a
function, and no import chain longer than it is today.

The graph is read from the source with ``ast`` (nothing is imported): an edge A → B for every
``import mktool.B`` / ``from mktool import B`` / ``from mktool.B import …`` in A, wherever it
sits, so an import moved into a function to dodge a cycle still counts. Two imports sit inside
a function on purpose (``INNER_IMPORT_EXCEPTIONS``): ``__main__`` imports the CLI inside
``main()`` (a Ctrl-C during the CLI's imports is reported there; ``__main__`` is also left out
of the chain length), and the CLI loads the Spark engine only when ``--engine spark`` asks.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "mktool"
#: The longest import chain inside mktool/, in modules (``__main__`` excluded). Lower it when a
#: refactor shortens the chain; never raise it to let a new dependency in.
MAX_CHAIN = 8
#: The imports of a mktool module inside a function that are allowed, by (module, statement), with
#: the reason; any other one, even in these modules, is refused.
INNER_IMPORT_EXCEPTIONS = {
    ("__main__", "from mktool.cli import main as cli_main"):
        "a Ctrl-C while the CLI is imported is caught around the import",
    ("cli", "from mktool import sparkdb"):
        "mktool.sparkdb (and pyarrow under it) is imported only for --engine spark: 0.16 s of every start",
}


def _modules(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name below it: ``cli``, ``ruletest`` (its
    ``__init__``), ``ruletest.cases``; sub-packages count like any module."""
    out: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "__init__"] = path
    return out


def _module(dotted: str, known: set[str]) -> str | None:
    """The longest known module a dotted name below mktool refers to (``ruletest.cases.X`` → ``ruletest.cases``)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def _targets(node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The mktool modules one import statement names."""
    found: set[str | None] = set()
    if isinstance(node, ast.Import):
        found = {_module(a.name.removeprefix("mktool."), known) for a in node.names if a.name.startswith("mktool.")}
    elif node.level:  # relative: `from . import x`, `from .x import y` (mktool uses none)
        found = {_module(node.module, known)} if node.module else {_module(a.name, known) for a in node.names}
    elif node.module == "mktool":
        found = {_module(a.name, known) for a in node.names}
    elif node.module and node.module.startswith("mktool."):
        base = node.module.removeprefix("mktool.")
        found = {_module(f"{base}.{a.name}", known) for a in node.names}
    return {m for m in found if m is not None}


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """(module → the mktool modules it imports, module → its mktool imports inside functions)."""
    mods = _modules(package)
    graph: dict[str, set[str]] = {}
    inner: dict[str, list[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(node, set(mods)) - {name}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and _targets(node, set(mods)):
                        inner.setdefault(name, []).append(f"line {node.lineno}: {ast.unparse(node)}")
        graph[name] = deps
    return graph, inner


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, …, a]``), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def longest_chain(graph: dict[str, set[str]], *, skip: frozenset[str] = frozenset({"__main__"})) -> list[str]:
    """The longest import chain (a path of modules) in an acyclic graph."""

    @functools.cache
    def longest_from(m: str) -> tuple[str, ...]:
        below = [longest_from(d) for d in sorted(graph.get(m, ())) if d not in skip]
        return (m, *max(below, key=len, default=()))

    return list(max((longest_from(m) for m in sorted(graph) if m not in skip), key=len))


# -- the checks on mktool/ --------------------------------------------------------------------------
def test_no_import_cycle_counting_imports_inside_functions() -> None:
    graph, _ = import_graph()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_mktool_import_inside_a_function() -> None:
    _, inner = import_graph()
    hidden = {m: kept for m, lines in inner.items()
              if (kept := [line for line in lines if (m, line.split(": ", 1)[1]) not in INNER_IMPORT_EXCEPTIONS])}
    assert hidden == {}, f"mktool imports inside functions (move them to the top of the module): {hidden}"


def test_import_chain_is_no_longer_than_today() -> None:
    graph, _ = import_graph()
    chain = longest_chain(graph)
    assert len(chain) <= MAX_CHAIN, f"import chain of {len(chain)} modules: {' -> '.join(chain)}"


def test_steps_do_not_reach_the_project_through_each_other() -> None:
    """The project layer (rules folder, score model, plan config) imports no step and no workflow."""
    graph, _ = import_graph()
    steps = {"ingest", "view", "matrices", "plan", "export", "explain", "evaluate", "factors", "campaign", "profile",
             "scene", "scenedelivery", "ruletest", "ruletest.cases", "ruletest.customers", "ruletest.judging",
             "ruletest.reports"}
    above = steps | {"pipeline", "snapshot", "diff", "report", "scenewatch", "cli", "__main__"}
    for core in ("project", "rules", "scoremodel", "planconfig", "schema", "yamlio"):
        reach = _reachable(graph, core)
        assert not reach & above, f"{core} reaches {sorted(reach & above)}"


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for d in graph.get(todo.pop(), ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


# -- the checker itself, on crafted graphs -------------------------------------------------------------
def test_cycle_found_through_an_import_inside_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "mktool"
    pkg.mkdir()
    (pkg / "a.py").write_text("from mktool import b\n", encoding="utf-8")
    (pkg / "b.py").write_text("def f():\n    from mktool.c import x\n    return x\n", encoding="utf-8")
    (pkg / "c.py").write_text("import mktool.a\nx = 1\n", encoding="utf-8")
    (pkg / "d.py").write_text("import os\nfrom mktool.errors import E\n", encoding="utf-8")
    graph, inner = import_graph(pkg)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}  # errors is not a module of this package
    assert inner == {"b": ["line 2: from mktool.c import x"]}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_longest_chain_on_a_crafted_graph() -> None:
    graph = {"__main__": {"cli"}, "cli": {"pipeline", "errors"}, "pipeline": {"view", "errors"},
             "view": {"project"}, "project": {"errors"}, "errors": set(), "lonely": set()}
    assert longest_chain(graph) == ["cli", "pipeline", "view", "project", "errors"]
    assert find_cycle(graph) is None

"""The arrows point one way: no import cycle anywhere (lazy imports inside functions count), the runtime imports
neither the toolkit nor export, the export leaves import no other export module, and benchmarks import only
the package, never each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"toolkit": "crisis_tool", "export": "crisis_tool.export", "runtime": "crisis_tool.runtime",
         "benchmarks": "benchmarks"}
EXPORT_LEAVES = ("crisis_tool.export.options", "crisis_tool.export.gate_report", "crisis_tool.export.qdq")


def module_files() -> dict[str, Path]:
    """{module name: file} for every module of the package's three folders and of benchmarks/."""
    out = {}
    for folder, package in ROOMS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The known modules `path` imports, anywhere in the file (lazy imports included)."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            subs = [f"{base}.{alias.name}" for alias in node.names]
            # `from package import module` imports the module; the package itself only when a name is not one
            targets = [*subs, *([] if all(sub in known for sub in subs) else [base])]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, files) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_runtime_imports_neither_toolkit_nor_export() -> None:
    bad = {name: sorted(t for t in targets if not t.startswith("crisis_tool.runtime"))
           for name, targets in import_graph().items() if name.startswith("crisis_tool.runtime")}
    assert not {k: v for k, v in bad.items() if v}


def test_export_leaves_import_no_other_export_module() -> None:
    graph = import_graph()
    for leaf in EXPORT_LEAVES:
        assert leaf in graph, f"{leaf} is gone: update EXPORT_LEAVES"
        assert not {t for t in graph[leaf] if t.startswith("crisis_tool.export")}, leaf


def test_benchmarks_import_only_the_package() -> None:
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("benchmarks"):
            assert not {t for t in targets if t.startswith("benchmarks")}, name


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    """The checker itself bites: a lazy import inside a function that closes a loop is a cycle."""
    (tmp_path / "a.py").write_text("import crisis_tool.runtime.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from crisis_tool.runtime import a\n")
    known = ["crisis_tool.runtime.a", "crisis_tool.runtime.b"]
    graph = {name: imports_of(name, tmp_path / f"{name.rpartition('.')[2]}.py", known) for name in known}
    assert cycles(graph) == [known]
    assert cycles({"x": {"y"}, "y": set()}) == []


@pytest.mark.parametrize("name", ["crisis_tool.runtime.predictor", "crisis_tool.export.exporter"])
def test_the_graph_sees_real_imports(name: str) -> None:
    assert "crisis_tool.runtime.bundle" in import_graph()[name] or name.endswith("exporter")

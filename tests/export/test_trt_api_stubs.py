"""Every TensorRT API the code touches exists in TensorRT's published stubs (tensorrt-stubs), which install here
though TensorRT does not: a misspelt `trt.BuilderFlag.INT8` or `builder.create_builder_config` is found on a
laptop, not on the Jetson.

What is checked, by walking the AST of every module of the three packages:
- every attribute chain on the TensorRT module (`trt.X.Y`, `trt.X(...)`), where the module is a name bound
  by `import tensorrt [as X]`, or named `trt` / `tensorrt` / `self.trt` (how the code passes it around);
- attributes of objects made from it, typed through the stubs' return annotations (`builder = trt.Builder(..)`
  -> `Builder`; `builder.create_network()` -> `INetworkDefinition`, ...) within a function;
- `getattr(<trt chain>, name)` where `name` runs over a module-level tuple of strings.

The stubs are found as the installed `tensorrt-stubs` distribution, else in build/tensorrt-stubs (install them
there with `pip install --no-deps --target build/tensorrt-stubs tensorrt-stubs`: installed into the
environment, the stubs' `tensorrt/` folder makes `import tensorrt` succeed as an empty namespace package).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "export", "toolkit")
MODULE_NAMES = {"trt", "tensorrt"}


def stubs_root() -> Path | None:
    """The folder holding `tensorrt/__init__.pyi` and `tensorrt_bindings/tensorrt.pyi`, if any."""
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
        root = Path(str(dist.locate_file("")))
        if (root / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            return root
    except importlib.metadata.PackageNotFoundError:
        pass
    local = REPO / "build" / "tensorrt-stubs"
    return local if (local / "tensorrt_bindings" / "tensorrt.pyi").is_file() else None


# --------------------------------------------------------------------------- the stubs as a name table
@dataclass
class StubClass:
    name: str
    bases: list[str]
    members: dict[str, str | None] = field(default_factory=dict)  # member -> the class name it gives, if known
    nested: dict[str, StubClass] = field(default_factory=dict)


def _type_name(node: ast.expr | None) -> str | None:
    """`X`, `mod.X`, `typing.ClassVar[X]`, `X | None` -> "X" (the last dotted part); None when unknown."""
    if node is None:
        return None
    if isinstance(node, ast.Subscript):
        return _type_name(node.slice) if ast.unparse(node.value).endswith("ClassVar") else None
    if isinstance(node, ast.BinOp):
        return _type_name(node.left)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.split(".")[-1]
    if isinstance(node, (ast.Name, ast.Attribute)):
        return ast.unparse(node).split(".")[-1]
    return None


def parse_stub(text: str, max_fixes: int = 200) -> ast.Module:
    """Parse a generated .pyi; a `def` line that is not valid Python (the generator writes a few, e.g. a
    non-default argument after defaults) keeps its name and return annotation with `(*args, **kwargs)`."""
    lines = text.splitlines()
    for _ in range(max_fixes):
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as exc:
            i = (exc.lineno or 0) - 1
            match = re.match(r"(\s*def \w+)\(.*\)(\s*->\s*.+)?:\s*$", lines[i]) if 0 <= i < len(lines) else None
            if match is None:
                raise
            lines[i] = f"{match.group(1)}(*args, **kwargs){match.group(2) or ''}:"
    raise SyntaxError(f"more than {max_fixes} invalid lines in the stubs")


def _read_class(node: ast.ClassDef) -> StubClass:
    cls = StubClass(node.name, [ast.unparse(b).split(".")[-1] for b in node.bases])
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            is_property = any(ast.unparse(d) == "property" for d in item.decorator_list)
            cls.members.setdefault(item.name, _type_name(item.returns) if is_property else f"() {item.name}")
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            cls.members[item.target.id] = _type_name(item.annotation)
        elif isinstance(item, ast.ClassDef):
            cls.nested[item.name] = _read_class(item)
            cls.members[item.name] = item.name
    cls.returns = {item.name: _type_name(item.returns) for item in node.body  # type: ignore[attr-defined]
                   if isinstance(item, ast.FunctionDef)}
    return cls


@dataclass
class Stubs:
    module: dict[str, str | None]  # top-level name -> class name (a class or a typed value) or None
    classes: dict[str, StubClass]

    @classmethod
    def load(cls, root: Path) -> Stubs:
        classes: dict[str, StubClass] = {}
        bindings = parse_stub((root / "tensorrt_bindings" / "tensorrt.pyi").read_text(encoding="utf-8"))
        for node in bindings.body:
            if isinstance(node, ast.ClassDef):
                classes[node.name] = _read_class(node)
        module: dict[str, str | None] = {}
        top = parse_stub((root / "tensorrt" / "__init__.pyi").read_text(encoding="utf-8"))
        for node in top.body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    module[alias.asname or alias.name] = alias.name if alias.name in classes else None
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    module[(alias.asname or alias.name).split(".")[0]] = None
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                module[node.name] = None
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                module[node.target.id] = _type_name(node.annotation)
        return cls(module, classes)

    def member(self, cls_name: str, attr: str, seen: frozenset[str] = frozenset()) -> tuple[bool, str | None]:
        """(exists, the class it gives) for `attr` of class `cls_name`, through its bases and nested classes."""
        cls = self.classes.get(cls_name) or self._nested(cls_name)
        if cls is None or cls_name in seen:
            return False, None
        if attr in cls.members:
            given = cls.members[attr]
            if given is not None and given.startswith("() "):
                return True, f"() {cls_name}.{attr}"
            return True, given
        for base in cls.bases:
            found, given = self.member(base, attr, seen | {cls_name})
            if found:
                return found, given
        return False, None

    def _nested(self, name: str) -> StubClass | None:
        for cls in self.classes.values():
            if name in cls.nested:
                return cls.nested[name]
        return None

    def call_result(self, given: str | None) -> str | None:
        """The class a call returns: a class's constructor gives the class, a method its return annotation."""
        if given is None:
            return None
        if given.startswith("() "):
            owner, method = given[3:].split(".", 1)
            cls = self.classes.get(owner) or self._nested(owner)
            for klass in (cls, *(self.classes.get(b) for b in (cls.bases if cls else []))):
                if klass is not None and method in klass.returns:  # type: ignore[attr-defined]
                    return klass.returns[method]  # type: ignore[attr-defined]
            return None
        return given if (given in self.classes or self._nested(given)) else None


# --------------------------------------------------------------------------- the code's uses
@dataclass(frozen=True)
class Use:
    file: str
    line: int
    text: str  # e.g. "trt.BuilderFlag.INT8" or "Builder.create_builder_config"


class UseChecker(ast.NodeVisitor):
    """Walks one module; `missing` collects uses the stubs do not have, `checked` counts the ones they do."""

    def __init__(self, stubs: Stubs, file: str, tree: ast.Module) -> None:
        self.stubs, self.file = stubs, file
        self.missing: list[Use] = []
        self.checked = 0
        self.module_names = set(MODULE_NAMES)
        self.local_types: dict[str, str] = {}
        self.self_types: dict[str, str] = {}  # `self.engine = runtime.deserialize_cuda_engine(..)`, per class
        self.constants = {t.id: [e.value for e in node.value.elts]
                          for node in tree.body if isinstance(node, ast.Assign)
                          and isinstance(node.value, (ast.Tuple, ast.List))
                          and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts)
                          for t in node.targets if isinstance(t, ast.Name)}
        self.loop_names: dict[str, list[str]] = {}

    # the module, and what a chain on it names
    def _is_module(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.module_names
        return isinstance(node, ast.Attribute) and node.attr == "trt" and isinstance(node.value, ast.Name) \
            and node.value.id == "self"

    def resolve(self, node: ast.expr) -> tuple[str | None, bool]:
        """(class name or "module", known) of an expression; records every attribute it checks."""
        if self._is_module(node):
            return "module", True
        if isinstance(node, ast.Name):
            return self.local_types.get(node.id), node.id in self.local_types
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
                and f"self.{node.attr}" in self.self_types:
            return self.self_types[f"self.{node.attr}"], True
        if isinstance(node, ast.Call):
            owner, known = self.resolve(node.func)
            return (self.stubs.call_result(owner) if known else None), known and owner is not None
        if isinstance(node, ast.Attribute):
            owner, known = self.resolve(node.value)
            if not known or owner is None:
                return None, False
            if owner == "module":
                exists, given = node.attr in self.stubs.module, self.stubs.module.get(node.attr)
                text = f"tensorrt.{node.attr}"
            else:
                exists, given = self.stubs.member(owner.removeprefix("() ").split(".")[-1], node.attr)
                text = f"{owner}.{node.attr}"
            self._record(node, text, exists)
            return given, exists
        return None, False

    def _record(self, node: ast.AST, text: str, exists: bool) -> None:
        if exists:
            self.checked += 1
        else:
            self.missing.append(Use(self.file, getattr(node, "lineno", 0), text))

    # walking
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "tensorrt":
                self.module_names.add(alias.asname or "tensorrt")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        saved = dict(self.self_types)
        self.generic_visit(node)
        self.self_types = saved

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        saved = dict(self.local_types)
        self.generic_visit(node)
        self.local_types = saved

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        given, known = self._quiet_resolve(node.value)
        for target in node.targets:
            typed = known and given is not None and given != "module"
            if isinstance(target, ast.Name) and typed:
                self.local_types[target.id] = given  # type: ignore[assignment]
            elif isinstance(target, ast.Attribute) and ast.unparse(target.value) == "self" and typed:
                self.self_types[f"self.{target.attr}"] = given  # type: ignore[assignment]
            else:
                self.visit(target)

    def _quiet_resolve(self, node: ast.expr) -> tuple[str | None, bool]:
        missing, checked = list(self.missing), self.checked
        out = self.resolve(node)
        self.missing, self.checked = missing, checked
        return out

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.resolve(node)  # the outermost attribute of a chain resolves (and records) the whole chain
        inner: ast.expr = node.value
        while isinstance(inner, (ast.Attribute, ast.Call, ast.Subscript)):  # then what hangs off the chain
            if isinstance(inner, ast.Call):
                for arg in (*inner.args, *inner.keywords):
                    self.visit(arg)
                inner = inner.func
            elif isinstance(inner, ast.Subscript):
                self.visit(inner.slice)
                inner = inner.value
            else:
                inner = inner.value
        if not isinstance(inner, ast.Name):
            self.visit(inner)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        if isinstance(node.target, ast.Name) and isinstance(node.iter, ast.Name) and node.iter.id in self.constants:
            self.loop_names[node.target.id] = self.constants[node.iter.id]
        self.generic_visit(node)

    def _visit_comp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        for generator in node.generators:  # the loop names first, then the element that uses them
            self.visit(generator)
        for part in ((node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,)):
            self.visit(part)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _visit_comp  # type: ignore[assignment]

    def visit_For(self, node: ast.For) -> None:
        self.visit_comprehension(node)  # type: ignore[arg-type]
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2:
            owner, known = self._quiet_resolve(node.args[0])
            name = node.args[1]
            names = [name.value] if isinstance(name, ast.Constant) and isinstance(name.value, str) else \
                self.loop_names.get(name.id, []) if isinstance(name, ast.Name) else []
            if known and owner is not None:
                for attr in names:
                    exists = attr in self.stubs.module if owner == "module" else self.stubs.member(owner, attr)[0]
                    self._record(node, f"{owner}.{attr}", exists)
        self.generic_visit(node)


def check_source(stubs: Stubs, source: str, file: str) -> UseChecker:
    tree = ast.parse(source, file)
    checker = UseChecker(stubs, file, tree)
    checker.visit(tree)
    return checker


@pytest.fixture(scope="module")
def stubs() -> Stubs:
    root = stubs_root()
    if root is None:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps --target build/tensorrt-stubs "
                    "tensorrt-stubs)")
    return Stubs.load(root)


def test_every_tensorrt_api_the_code_uses_exists_in_the_stubs(stubs: Stubs) -> None:
    missing: list[Use] = []
    checked: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            checker = check_source(stubs, path.read_text(encoding="utf-8"), rel)
            missing += checker.missing
            if checker.checked:
                checked[rel] = checker.checked
    assert not missing, "not in tensorrt-stubs:\n" + "\n".join(f"{u.file}:{u.line}: {u.text}" for u in missing)
    # the walk really sees the TensorRT code: the builder and the backend, each with many uses
    assert checked.get("export/tensorrt_build.py", 0) >= 15, checked
    assert checked.get("runtime/backends/tensorrt_backend.py", 0) >= 5, checked


def test_a_misspelt_attribute_is_caught(stubs: Stubs) -> None:
    source = '''
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAXX")

def build(trt, path):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.INT9)
    network = builder.create_network(0)
    network.get_layr(0)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    return {getattr(trt.LayerType, n) for n in FP32_LAYER_TYPES if hasattr(trt.LayerType, n)}

def elsewhere():
    import tensorrt as nv
    return nv.OnnxParserr
'''
    checker = check_source(stubs, source, "sample.py")
    assert sorted(u.text for u in checker.missing) == [
        "BuilderFlag.INT9", "INetworkDefinition.get_layr", "LayerType.SOFTMAXX", "LayerType.SOFTMAXX",
        "tensorrt.OnnxParserr"]
    assert checker.checked >= 12  # Logger, WARNING, Builder, create_builder_config, set_flag, BuilderFlag, ...

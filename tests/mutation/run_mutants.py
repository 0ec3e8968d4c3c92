"""A small AST mutation runner: does a test selection notice when a module's code is broken?

    .venv/bin/python tests/mutation/run_mutants.py export/qdq.py -- tests/export/test_qdq_mutants.py

Each mutant changes one spot of the module (a flipped comparison, `abs(x)` -> `x`, a constant +1 / doubled,
`and` <-> `or`, `not x` -> `x`, `return X` -> `return None`, True <-> False) and runs the pytest selection in
its own subprocess with a timeout. The module file is never edited: a `sitecustomize` put first on PYTHONPATH
of the subprocess (and of anything it starts, Ray workers included) compiles the mutated tree under the
module's own file name when the module is imported. A mutant is killed when the selection fails or times
out, and survives when it passes. Prints killed / survived / total, the kill rate, and every survivor (line,
what changed), so a person can write the test that kills it or judge it equivalent; each killed mutant names the
first test that failed on it. Mutants are numbered over the file's text, so the run stops (exit 3) if the module
changes while it runs. Judged survivors and past figures: tests/mutation/RESULTS.md.

Not collected by pytest (no `test_` prefix); CPU heavy: keep the selection narrow.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"toolkit": "crisis_tool", "export": "crisis_tool.export", "runtime": "crisis_tool.runtime"}
FLIPS: dict[type, tuple[type, ...]] = {  # each comparison: its boundary twin and its negation
    ast.Lt: (ast.LtE, ast.GtE), ast.LtE: (ast.Lt, ast.Gt), ast.Gt: (ast.GtE, ast.LtE), ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,), ast.IsNot: (ast.Is,),
}
SYMBOLS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
           ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}

SITECUSTOMIZE = '''
import ast, importlib.abc, importlib.util, os, sys
sys.path.insert(0, {runner_dir!r})
from run_mutants import mutate_tree
_NAME, _FILE, _INDEX = os.environ["MUTANT_MODULE"], os.environ["MUTANT_FILE"], int(os.environ["MUTANT_INDEX"])
sys.path.remove({runner_dir!r})

class _MutantLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        with open(_FILE, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), _FILE)
        exec(compile(mutate_tree(tree, _INDEX), _FILE, "exec"), module.__dict__)

class _MutantFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != _NAME:
            return None
        return importlib.util.spec_from_file_location(fullname, _FILE, loader=_MutantLoader())

sys.meta_path.insert(0, _MutantFinder())
'''


@dataclass(frozen=True)
class Site:
    index: int
    line: int
    change: str


def _skip_ids(tree: ast.AST) -> set[int]:
    """Nodes never mutated: annotations, docstrings, `__all__`, `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()

    def cover(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            cover(node.returns)
            for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                      node.args.kwarg):
                if a is not None:
                    cover(a.annotation)
        elif isinstance(node, ast.AnnAssign):
            cover(node.annotation)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                  for t in node.targets):
            cover(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            cover(node)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                cover(first)
    return skip


def _mutations(node: ast.AST) -> list[tuple[str, ast.AST]]:
    """Every mutated copy of `node` alone (its children untouched), with a short description."""
    out: list[tuple[str, ast.AST]] = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in FLIPS.get(type(op), ()):
                mutated = copy.copy(node)
                mutated.ops = [*node.ops[:i], new(), *node.ops[i + 1:]]
                out.append((f"{SYMBOLS[type(op)]} -> {SYMBOLS[new]}", mutated))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "abs" and node.args:
        out.append(("abs(x) -> x", node.args[0]))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append((f"{node.value} -> {not node.value}", ast.Constant(not node.value)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        new_value = node.value + 1 if isinstance(node.value, int) else (node.value * 2 if node.value else 1.0)
        out.append((f"{node.value!r} -> {new_value!r}", ast.Constant(new_value)))
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        mutated = copy.copy(node)
        mutated.op = other
        out.append(("and -> or" if isinstance(node.op, ast.And) else "or -> and", mutated))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("not x -> x", node.operand))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Name):
        out.append(("-x -> x", node.operand))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        mutated = copy.copy(node)
        mutated.value = ast.Constant(None)
        out.append(("return X -> return None", mutated))
    return out


class _Mutator(ast.NodeTransformer):
    """Walks the tree in a fixed order numbering every mutation; applies number `target` (or none: -1)."""

    def __init__(self, target: int, skip: set[int]) -> None:
        self.target, self.skip, self.count = target, skip, 0
        self.sites: list[Site] = []

    def generic_visit(self, node: ast.AST) -> ast.AST:
        replacement: ast.AST | None = None
        if id(node) not in self.skip:
            for change, mutated in _mutations(node):
                self.sites.append(Site(self.count, getattr(node, "lineno", 0), change))
                if self.count == self.target:
                    replacement = mutated
                self.count += 1
        node = super().generic_visit(node)
        return ast.copy_location(replacement, node) if replacement is not None else node


def mutate_tree(tree: ast.Module, index: int) -> ast.Module:
    """`tree` with mutation number `index` applied (line numbers kept)."""
    mutator = _Mutator(index, _skip_ids(tree))
    out = mutator.visit(tree)
    return ast.fix_missing_locations(out)


def list_sites(path: Path) -> list[Site]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    mutator = _Mutator(-1, _skip_ids(tree))
    mutator.visit(tree)
    return mutator.sites


def module_name(path: Path) -> str:
    rel = path.resolve().relative_to(REPO).with_suffix("")
    top, *rest = rel.parts
    return ".".join([PACKAGE_DIRS[top], *rest])


def first_failure(output: str) -> str:
    """The node id of the first FAILED/ERROR line of pytest's short summary ("" when there is none)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ", 1)[0]
    return ""


def run_selection(selection: list[str], env: dict[str, str], timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, first failing test) of one pytest run of the selection."""
    start = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "no:randomly",
           *selection]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    if proc.returncode == 0:
        return "passed", time.monotonic() - start, ""
    return "failed", time.monotonic() - start, first_failure(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", type=Path, help="Module file, e.g. export/qdq.py")
    parser.add_argument("selection", nargs="+", help="pytest selection (after --)")
    parser.add_argument("--lines", help="Only mutate lines A-B (e.g. 40-120)")
    parser.add_argument("--only", type=int, nargs="*", help="Only these mutant numbers")
    parser.add_argument("--json", type=Path, help="Also write the result as JSON here")
    args = parser.parse_args(argv)
    path = args.module.resolve()
    sites = list_sites(path)
    if args.lines:
        lo, hi = (int(x) for x in args.lines.split("-"))
        sites = [s for s in sites if lo <= s.line <= hi]
    if args.only is not None:
        sites = [s for s in sites if s.index in set(args.only)]
    source = path.read_bytes()
    base_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    status, baseline, _ = run_selection(args.selection, base_env, 1800)
    if status != "passed":
        print(f"the selection does not pass on the unmutated module ({status}); fix that first", file=sys.stderr)
        return 2
    timeout = max(60.0, 3 * baseline + 30)
    print(f"{module_name(path)}: {len(sites)} mutants, baseline {baseline:.1f}s, timeout {timeout:.0f}s", flush=True)
    survivors: list[Site] = []
    killed = 0
    with tempfile.TemporaryDirectory() as boot:
        Path(boot, "sitecustomize.py").write_text(SITECUSTOMIZE.format(runner_dir=str(Path(__file__).parent)))
        for site in sites:
            if path.read_bytes() != source:
                print(f"{path} changed during the run: mutant numbers no longer match; run again", file=sys.stderr)
                return 3
            env = {**base_env, "MUTANT_MODULE": module_name(path), "MUTANT_FILE": str(path),
                   "MUTANT_INDEX": str(site.index),
                   "PYTHONPATH": os.pathsep.join([boot, *filter(None, [os.environ.get("PYTHONPATH")])])}
            status, seconds, by = run_selection(args.selection, env, timeout)
            if status == "passed":
                survivors.append(site)
            else:
                killed += 1
            print(f"  #{site.index:3d} line {site.line:4d} {site.change:28s} {status:8s} {seconds:5.1f}s {by}".rstrip(),
                  flush=True)
    total = len(sites)
    rate = killed / total if total else 1.0
    print(f"{module_name(path)}: killed {killed} / {total}, survived {len(survivors)}, kill rate {rate:.1%}")
    for s in survivors:
        print(f"  survived #{s.index} line {s.line}: {s.change}")
    if args.json:
        args.json.write_text(json.dumps({"module": module_name(path), "selection": args.selection, "total": total,
                                         "killed": killed, "kill_rate": rate,
                                         "survivors": [s.__dict__ for s in survivors]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

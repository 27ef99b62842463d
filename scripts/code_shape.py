"""Shape of the code base: longest functions, widest signatures, and import cycles.

Prints the top functions of apex_plan/ by body lines and by argument count, and whether the
import graph of apex_plan's modules has a cycle, counting imports made inside functions too (a
module importing a package imports its __init__; `from pkg import mod` imports pkg.mod).

Usage: python scripts/code_shape.py [--top 10] [--root apex_plan]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def functions(tree: ast.AST):
    """(qualified name, body lines, argument count) of every function in `tree`."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                n_args = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                if a.args and a.args[0].arg in ("self", "cls"):
                    n_args -= 1
                lines = child.end_lineno - child.lineno + 1
                out.append((prefix + child.name, lines, n_args))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def imports(tree: ast.AST, module: str, is_pkg: bool, known: set[str]) -> set[str]:
    """apex_plan modules `module` imports anywhere in its file (function bodies included)."""
    deps = set()
    pkg = module if is_pkg else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    deps.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name in known:
                deps.add(name)
            for a in node.names:
                if f"{name}.{a.name}" in known:
                    deps.add(f"{name}.{a.name}")
    deps.discard(module)
    return deps


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                c = dfs(v)
                if c:
                    return c
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            c = dfs(u)
            if c:
                return c
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--root", default=str(ROOT / "apex_plan"))
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    files = sorted(root.rglob("*.py"))
    trees = {f: ast.parse(f.read_text(), str(f)) for f in files}
    names = {f: _module_name(f, root) for f in files}
    known = set(names.values())
    funcs = []
    graph = {}
    for f, tree in trees.items():
        mod = names[f]
        funcs += [(f"{mod}.{q}", n, a) for q, n, a in functions(tree)]
        graph[mod] = imports(tree, mod, f.name == "__init__.py", known)
    # a package's modules import their package's __init__ first; count that edge only when __init__ imports back
    print(f"{len(files)} modules, {len(funcs)} functions")
    print(f"\nlongest functions (lines):")
    for q, n, a in sorted(funcs, key=lambda x: -x[1])[:args.top]:
        print(f"  {n:4d}  {q}")
    print(f"\nwidest signatures (arguments, self excluded):")
    for q, n, a in sorted(funcs, key=lambda x: -x[2])[:args.top]:
        print(f"  {a:4d}  {q}")
    over = sum(1 for _, n, _ in funcs if n > 100)
    print(f"\nfunctions over 100 lines: {over}; over 10 arguments: {sum(1 for *_, a in funcs if a > 10)}")
    cyc = find_cycle(graph)
    print("import cycle (imports inside functions counted): " + (" -> ".join(cyc) if cyc else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Report the package's shape: modules per folder, the largest modules and functions, import cycles.

Usage: .venv/bin/python scripts/layout_report.py [SRC]   (default: src/champion of this checkout)

The figures issue #18 asked for, computed from the source alone (nothing is imported): the layout
rule is no module over about 450 lines, no function over about 100, and no import cycle. An
import inside a function counts toward cycles too: a cycle hidden by a lazy import is still one.
"""

from __future__ import annotations

import ast
import collections
import sys
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `root` (a package folder)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's own modules that `name` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "champion"
    known = modules(root)
    per_folder = collections.Counter(str(p.parent.relative_to(root.parent)) for p in known.values())
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in known.items()), reverse=True)
    functions = sorted(
        (node.end_lineno - node.lineno + 1, f"{name}.{node.name}")
        for name, path in known.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    )[::-1]
    print("modules per folder:", ", ".join(f"{folder} {n}" for folder, n in sorted(per_folder.items())))
    print("largest modules:", ", ".join(f"{n} ({lines})" for lines, n in sizes[:5]))
    print("modules over 450 lines:", sum(lines > 450 for lines, _ in sizes))
    print("largest functions:", ", ".join(f"{n} ({lines})" for lines, n in functions[:5]))
    print("functions over 100 / 80 lines:", sum(n > 100 for n, _ in functions), "/", sum(n > 80 for n, _ in functions))
    print("import cycles:", cycles({n: imports(n, p, known) for n, p in known.items()}) or "none")


if __name__ == "__main__":
    main()

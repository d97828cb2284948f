"""Module sizes and long functions of the library (issue 15: a codebase a newcomer can carry on).

    python benchmarks/code_stats.py [--limit 60] [--root src/fsood]

Prints every ``.py`` file under ``--root`` with its line count (largest first), then every
function or method longer than ``--limit`` lines (``ast``: from the ``def`` line, decorators
excluded, to its last line), longest first. Exit status 0 always: this measures, it does not judge
(tests/test_code_stats.py holds the limit).
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_lines(root: Path) -> list[tuple[str, int]]:
    """(path relative to ``root``'s parent, line count) of every .py file, largest first."""
    rows = [(_rel(p, root), len(p.read_text().splitlines()))
            for p in sorted(root.rglob("*.py"))]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def long_functions(root: Path, limit: int) -> list[tuple[str, int]]:
    """('file:qualname', length) of every function longer than ``limit`` lines, longest first."""
    rows = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = _rel(path, root)
        rows += [(f"{rel}:{name}", n) for name, n in _functions(tree, "") if n > limit]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the repository when under it, else to ``root``'s parent."""
    base = ROOT if path.resolve().is_relative_to(ROOT) else root.parent
    return str(path.resolve().relative_to(base.resolve()))


def _functions(node: ast.AST, prefix: str):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + child.name
            yield name, child.end_lineno - child.lineno + 1
            yield from _functions(child, name + ".")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, prefix + child.name + ".")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT / "src" / "fsood")
    ap.add_argument("--limit", type=int, default=60)
    args = ap.parse_args(argv)
    modules = module_lines(args.root)
    print(f"# modules under {args.root.name}: {len(modules)} files, "
          f"{sum(n for _, n in modules)} lines")
    for path, n in modules:
        print(f"{n:6d}  {path}")
    longs = long_functions(args.root, args.limit)
    print(f"\n# functions longer than {args.limit} lines: {len(longs)}")
    for name, n in longs:
        print(f"{n:6d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

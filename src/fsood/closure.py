"""A stage's code: the fsood source it runs, found by reading imports (no module is imported), and its hashes.

A stage's code is the import closure of its module (:func:`import_closure`): every fsood module it imports,
directly or not, at module level or inside a function, plus the package data files it declares, with the
packages of ``WHOLE_PACKAGES`` named by their folder. Snakemake hashes it (:func:`code_hash`), DVC lists it
as deps (fsood.contract, fsood.dvcyaml). The harness every stage runs through is left out: an edit of it
reruns nothing.
"""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent  # src/fsood
# Packages whose modules import one another so tightly (``datasets/__init__`` imports every builder) that a
# stage entering one runs it all: a stage depends on the folder, one DVC dep in place of a dozen (every
# dep costs `dvc status` time on each of the grid's stages, benchmarks/dag_time.py).
WHOLE_PACKAGES = ("datasets",)
# The harness every stage runs through; none of it computes an output (argument parsing, logging,
# the workspace lock, the contract and this module), so an edit of it reruns nothing. What it reads,
# params.yaml and the files named here, is declared stage by stage.
HARNESS = ("fsood.__main__", "fsood.cli", "fsood.lock", "fsood.contract", "fsood.closure", "fsood.dag",
           "fsood.rebuild")


_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([.\w]+)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)|import[ \t]+([^\n#]+))",
                     re.MULTILINE)


def _module_file(module: str) -> str | None:
    """``fsood.a.b`` -> ``a/b.py`` or ``a/b/__init__.py`` (relative to src/fsood), None if not fsood's."""
    parts = module.split(".")
    if parts[0] != "fsood":
        return None
    rel = Path(*parts[1:]) if len(parts) > 1 else Path()
    for cand in (rel.with_suffix(".py") if parts[1:] else None, rel / "__init__.py"):
        if cand is not None and (SRC / cand).is_file():
            return cand.as_posix()
    return None


def _imports(rel: str) -> set[str]:
    """fsood modules imported anywhere in one file (module level or inside functions)."""
    package = ("fsood." + rel[:-3].replace("/", ".")).removesuffix(".__init__")
    if not rel.endswith("__init__.py"):
        package = package.rsplit(".", 1)[0]
    found = set()
    for base, names, plain in _IMPORT.findall((SRC / rel).read_text()):
        if plain:
            found.update(n.split(" as ")[0].strip() for n in plain.split(","))
            continue
        if base.startswith("."):
            up = len(base) - len(base.lstrip("."))
            base = ".".join(package.split(".")[: len(package.split(".")) - up + 1] + [base.lstrip(".")]).rstrip(".")
        found.add(base)
        for name in names.strip("()").replace("\n", " ").split(","):
            name = name.split(" as ")[0].strip()
            if name:
                found.add(f"{base}.{name}")
    return {m for m in found if m.startswith("fsood")}


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.lru_cache(maxsize=None)
def import_closure(entry: tuple[str, ...]) -> tuple[str, ...]:
    """Source files (relative to src/fsood) of ``entry`` and every fsood module they import, directly or
    not, at module level or inside a function, with the packages' ``__init__`` files (importing
    ``fsood.a.b`` runs ``fsood/__init__.py`` and ``fsood/a/__init__.py``). The harness is left out."""
    todo, seen = list(entry), set()
    while todo:
        module = todo.pop()
        for m in _with_parents(module):
            if m in seen or m in HARNESS:
                continue
            seen.add(m)
            rel = _module_file(m)
            if rel is not None:
                todo.extend(_imports(rel))
    return tuple(sorted(f for m in seen if (f := _module_file(m)) is not None))


@functools.lru_cache(maxsize=None)
def code_hash(names: tuple[str, ...]) -> dict[str, str]:
    """``{file or folder/: sha256[:16]}``, once a process per stage (a dry run of the paper grid asks 169
    times). A folder hashes each of its files' paths and bytes (``__pycache__`` aside, as .dvcignore)."""
    out = {}
    for name in names:
        files = [SRC / name] if not name.endswith("/") else sorted(
            f for f in (SRC / name).rglob("*") if f.is_file() and "__pycache__" not in f.parts)
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.relative_to(SRC).as_posix().encode() + b"\0" + f.read_bytes())
        out[name] = digest.hexdigest()[:16]
    return out

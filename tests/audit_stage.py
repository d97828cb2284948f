"""Run one pipeline stage in a fresh process and record what it reads (tests/test_contract_audit.py).

    python tests/audit_stage.py OUT.json STAGE --benchmark B [--pretrain-seed K] [--method M] [--seed S]

Run from a workspace (params.yaml and the upstream outputs in place). Writes OUT.json with:
- ``keys``: every params key path the stage read (the leaves of the access tree: a key read whole,
  e.g. passed to ``json.dumps``, is a leaf; a key only walked through is not);
- ``modules``: the fsood modules imported by the end of the stage (nothing of fsood is imported
  before it: params are read with plain PyYAML);
- ``files``: the files under the fsood package that the process opened, other than its modules.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import yaml


class Tracked(dict):
    """A dict that records the dotted path of every value read from it (nested dicts come back tracked)."""

    def __init__(self, data: dict, path: str, log: set[str], aliases: dict[str, str] | None = None):
        super().__init__(data)
        self._path, self._log, self._aliases = path, log, aliases or {}

    def _wrap(self, key, value):
        path = f"{self._path}.{key}" if self._path else str(key)
        self._log.add(path)
        if path in self._aliases:  # a value merged from two keys: reading it reads both
            self._log.add(self._aliases[path])
        return Tracked(value, path, self._log) if isinstance(value, dict) and not isinstance(value, Tracked) else value

    def __getitem__(self, key):
        return self._wrap(key, super().__getitem__(key))

    def get(self, key, default=None):
        if dict.__contains__(self, key):
            return self[key]
        self._log.add(f"{self._path}.{key}" if self._path else str(key))  # reading an absence is a read
        return default

    def __iter__(self):  # overridden so that dict(x) and {**x} take the slow path through __getitem__
        return iter(list(dict.keys(self)))

    def keys(self):
        return list(dict.keys(self))

    def items(self):
        return [(k, self[k]) for k in dict.keys(self)]

    def values(self):
        return [self[k] for k in dict.keys(self)]

    def copy(self):
        return {k: self[k] for k in dict.keys(self)}

    def __reduce_ex__(self, protocol):  # deepcopy / pickle read every value
        return dict, (self.copy(),)


def _merged_overrides(defaults: dict, overrides: dict) -> dict:
    """``overrides`` laid over ``defaults`` key by key (nested mappings merged), as fsood.config._merged does.
    A copy on purpose: importing fsood.config here would put it among the modules every audited stage
    imported, and the data, pretrain and subspace stages do not run it."""
    out = dict(defaults)
    for key, value in overrides.items():
        out[key] = _merged_overrides(defaults[key], value) if isinstance(value, dict) else value
    return out


def leaves(paths: set[str]) -> list[str]:
    return sorted(p for p in paths if not any(q.startswith(p + ".") for q in paths))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("stage")
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--pretrain-seed", dest="pretrain_seed", type=int)
    parser.add_argument("--method")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    package = None
    opened: set[str] = set()

    def hook(event, hook_args):
        if event == "open" and package is not None and isinstance(hook_args[0], (str, Path)):
            path = Path(hook_args[0]).resolve()
            if path.is_relative_to(package) and path.suffix not in (".py", ".pyc"):
                opened.add(path.relative_to(package).as_posix())

    log: set[str] = set()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    # as fsood.cli runs a stage: `runtime` with the benchmark's overrides merged in (fsood.config.for_benchmark,
    # computed here on the plain dict so that merging reads nothing); a stage reading `runtime` reads both
    merged = _merged_overrides(raw["runtime"], raw["benchmarks"][args.benchmark]["runtime"])
    params = Tracked({**raw, "runtime": merged}, "", log,
                     aliases={"runtime": f"benchmarks.{args.benchmark}.runtime"})
    import importlib.util

    package = Path(importlib.util.find_spec("fsood").submodule_search_locations[0]).resolve()
    sys.addaudithook(hook)
    module = importlib.import_module(f"fsood.stages.{args.stage}")
    wildcards = {k: getattr(args, k) for k in ("benchmark", "pretrain_seed", "method", "seed")
                 if getattr(args, k) is not None}
    module.run(params, **wildcards)
    modules = sorted(m for m in sys.modules if m == "fsood" or m.startswith("fsood."))
    Path(args.out).write_text(json.dumps({"keys": leaves(log), "modules": modules, "files": sorted(opened)}, indent=1))


if __name__ == "__main__":
    main()

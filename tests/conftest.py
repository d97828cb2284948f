"""Shared fixtures: a throw-away copy of the workflow to run Snakemake / DVC / the CLI in."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The rules' `python -m fsood ...`, and `dvc` / `snakemake` run by tests, are this interpreter's.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
WORKFLOW_FILES = ["Snakefile", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"]
WORKFLOW_DIRS = ["workflow", "profiles", "src", ".dvc"]


def mirror_dir() -> Path | None:
    """The dataset mirror: ``$FSOOD_MIRROR`` (first folder), else ``../shared/data/mirror``; None if absent."""
    env = os.environ.get("FSOOD_MIRROR", "").split(os.pathsep)[0]
    for candidate in (Path(env) if env else None, ROOT.parent / "shared" / "data" / "mirror"):
        if candidate is not None and candidate.is_dir():
            return candidate.resolve()
    return None


def require_mirror() -> Path:
    """The mirror folder; skips where none is reachable, except in CI (CI=true), where it fails."""
    found = mirror_dir()
    if found is None:
        reason = "no dataset mirror: set FSOOD_MIRROR to a folder holding the registry's archives"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the real-data tests, but found {reason}")
        pytest.skip(reason)
    return found


@pytest.fixture
def mirror() -> Path:
    return require_mirror()


def make_workspace(dest: Path, git: bool = True) -> Path:
    """Copy what a pipeline run needs (no results, no caches) into ``dest``, as a git repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "cache", "tmp", "config.local")
    for name in WORKFLOW_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    if git:
        git_init(dest)
    return dest


def apply_changes(params: dict, **changes) -> dict:
    """Set (or, with DELETE, remove) dotted keys in place, e.g. ``{"grid.seeds": [0]}``."""
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return params


def edit_params(workspace: Path, **changes) -> dict:
    """Apply dotted-key changes to the workspace's params.yaml."""
    path = workspace / "params.yaml"
    params = apply_changes(yaml.safe_load(path.read_text()), **changes)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


_DELETE = object()
DELETE = _DELETE


def git_init(workspace: Path) -> None:
    run = lambda *a: subprocess.run(a, cwd=workspace, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "config", "user.email", "test@fsood.invalid")
    run("git", "config", "user.name", "fsood tests")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "baseline")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path / "ws")


# Small grid and tiny epoch counts: the whole pipeline in well under a minute.
TINY = {
    "grid.methods": ["none", "oe", "sep"],
    "grid.seeds": [0],
    "benchmarks.digits.data.n_outliers": 256,
    "benchmarks.digits.data.n_ood": 128,
    "benchmarks.digits.pretrain.epochs": 3,
    "benchmarks.digits.finetune.epochs": 2,
    "benchmarks.digits.finetune.stage2_epoch": 1,
    "report.max_points": 100,
}


@pytest.fixture(scope="session")
def digits_upstream(tmp_path_factory) -> Path:
    """The TINY digits data, pretrain and subspace of seed 0, built once per session (tests/upstream.py);
    start from ``upstream.clone_upstream(digits_upstream, dest)``, never write into it."""
    from upstream import build_upstream

    return build_upstream(tmp_path_factory.mktemp("upstream") / "ws")

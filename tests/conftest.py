"""Shared fixtures: a throw-away copy of the workflow to run Snakemake / DVC / the CLI in."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"]
WORKFLOW_DIRS = ["workflow", "profiles", "src", ".dvc"]


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

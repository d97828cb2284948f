"""Shared fixtures: a throw-away copy of the workflow to run Snakemake / DVC / the CLI in."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The rules' `python -m fsood ...`, and `dvc` / `snakemake` run by tests, are this interpreter's.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
sys.path.insert(0, str(ROOT / "benchmarks"))
# the workspace helpers live with the benchmarks, which must run without pytest (the runtime install)
from _workspace import (DELETE, WORKFLOW_DIRS, WORKFLOW_FILES, apply_changes, edit_params,  # noqa: E402,F401
                        git_init, make_workspace, mirror_dir)


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


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path / "ws")


# Small grid and tiny epoch counts: the whole pipeline in well under a minute.
TINY = {
    "grid.pretrain_seeds": [0],  # params.yaml has three; tests that need more models say so
    "grid.methods": ["oe", "sep"],
    "grid.seeds": [0],
    "benchmarks.digits.data.n_outliers": 256,
    "benchmarks.digits.data.n_ood": 128,
    "benchmarks.digits.pretrain.epochs": 3,
    "benchmarks.digits.finetune.epochs": 2,
    "benchmarks.digits.finetune.stage2_epoch": 1,
    "report.max_points": 100,
}


@pytest.fixture(scope="session")
def recorded_digits(tmp_path_factory) -> Path:
    """The TINY digits grid run by Snakemake and recorded by DVC and git, built once per session (per
    xdist worker; tests/upstream.py). Start from ``upstream.copy_recorded`` or ``upstream.clone_upstream``;
    never write into it."""
    from upstream import build_recorded

    return build_recorded(tmp_path_factory.mktemp("recorded") / "ws")


# pytest-xdist (pyproject: -n auto --dist loadfile) runs each module whole on one worker, so that its
# module-scoped fixtures are built once. The modules that start from the recorded digits run are sent
# to one worker together, which builds that run once for all of them. (xdist's own grouping by marks,
# --dist loadgroup, renames node ids in a way pytest 9 no longer reads: it would scatter them.)
RECORDED_MODULES = {"test_pipeline", "test_edit_reruns", "test_exact_rebuild", "test_bad_inputs", "test_ddp",
                    "test_resume"}


def work_unit(nodeid: str) -> str:
    """The scheduling unit of a test: its module, or the group of the modules sharing the recorded run."""
    module = nodeid.split("::", 1)[0]
    return "recorded_digits" if Path(module).stem in RECORDED_MODULES else module


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unused where it is not installed
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):  # xdist's default order: units with the most tests first
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)

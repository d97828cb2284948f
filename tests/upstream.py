"""The recorded digits run, built once per test session (per pytest-xdist worker), and the helpers to start
from it.

``build_recorded``: the TINY grid run by ``snakemake --cores 2 all``, recorded by ``dvc commit`` and
committed to git, so that both tools report nothing to do. Pipeline tests never write into it:
- :func:`copy_recorded` gives a test its own copy, every file with its mtime (git, DVC and Snakemake
  records included), in which both tools still see the clean state;
- :func:`clone_upstream` gives a fresh workspace with only the upstream stages' outputs (data,
  pretrain, subspace), for tests of the later stages. The data folder is hard-linked: only the data
  stage writes it, atomically (a new file renamed into place), so a rerun replaces its own link and
  never changes the shared copy. The model and basis are copied: tests tamper with checkpoints in place.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TINY, edit_params, git_init, make_workspace

UPSTREAM_RESULTS = ("results/digits/model0/pretrain", "results/digits/model0/subspace")  # what pretrain and subspace write


def sh(ws: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``ws``; with ``check``, a failure raises with the tail of its output."""
    proc = subprocess.run(cmd, cwd=ws, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})})
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def build_recorded(dest: Path) -> Path:
    """The TINY digits grid run by Snakemake, recorded by DVC and committed to git: both tools clean."""
    ws = make_workspace(dest)
    edit_params(ws, **TINY)
    sh(ws, "git", "commit", "-qam", "tiny grid")
    sh(ws, sys.executable, "-m", "snakemake", "--cores", "2", "all")
    sh(ws, "dvc", "commit", "-f", "-q")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "recorded run")
    return ws


def copy_recorded(recorded: Path, dest: Path) -> Path:
    """A private copy of the recorded workspace. ``copytree`` keeps every mtime (``copy2``), which
    Snakemake compares; DVC rehashes files whose inode it has not seen, and finds the same content."""
    shutil.copytree(recorded, dest, symlinks=True)
    return dest


def clone_upstream(recorded: Path, dest: Path, git: bool = False, **changes) -> Path:
    """A fresh workspace at ``dest`` with the recorded run's data (hard-linked), pretrained model and
    basis (copied), and nothing downstream; ``changes`` (dotted params keys) are applied on top of TINY.
    Only keys no upstream stage reads keep the upstream valid (e.g. finetune or score settings)."""
    ws = make_workspace(dest, git=False)
    edit_params(ws, **{**TINY, **changes})
    shutil.copytree(recorded / "data", ws / "data", copy_function=os.link)
    for folder in UPSTREAM_RESULTS:
        shutil.copytree(recorded / folder, ws / folder)
    if git:
        git_init(ws)
    return ws

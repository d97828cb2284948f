"""The digits upstream (data + pretrain + subspace of the TINY params), built once per test session.

Pipeline tests that only need a finished upstream start from a copy of it (:func:`clone_upstream`)
instead of rebuilding it. The data folder is hard-linked: only the data stage writes it, atomically
(a new file renamed into place), so a rerun replaces its own link and never changes the shared copy.
``results/`` (a few small checkpoints) is copied: tests tamper with checkpoints in place.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TINY, edit_params, make_workspace

LINKED, COPIED = "data", "results"  # what the three stages write (the workflow files are copied fresh)
STAGES = (["data"], ["pretrain"], ["subspace"])


def build_upstream(dest: Path) -> Path:
    """A TINY digits workspace with data, pretrain and subspace done by the CLI."""
    ws = make_workspace(dest, git=False)
    edit_params(ws, **TINY)
    for args in STAGES:
        proc = subprocess.run([sys.executable, "-m", "fsood", *args, "--benchmark", "digits"], cwd=ws,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"fsood {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return ws


def clone_upstream(upstream: Path, dest: Path, git: bool = False, **changes) -> Path:
    """A fresh workspace at ``dest`` with ``upstream``'s outputs (data hard-linked, results copied); ``changes``
    (dotted params keys) are applied on top of TINY. Only keys no upstream stage reads keep the
    upstream valid (e.g. finetune or score settings)."""
    ws = make_workspace(dest, git=False)
    edit_params(ws, **{**TINY, **changes})
    shutil.copytree(upstream / LINKED, ws / LINKED, copy_function=os.link)
    shutil.copytree(upstream / COPIED, ws / COPIED)
    if git:
        from conftest import git_init

        git_init(ws)
    return ws

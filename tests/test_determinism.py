"""A cell run twice gives the same bytes: metrics JSON, checkpoint and forward-pass cache."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TINY, edit_params, make_workspace

pytestmark = pytest.mark.slow


def fsood(ws, *args):
    subprocess.run([sys.executable, "-m", "fsood", *args, "--benchmark", "digits"], cwd=ws, check=True,
                   capture_output=True)


@pytest.mark.trust(kind="exact_rebuild")
def test_cell_twice_byte_identical(tmp_path):
    ws = make_workspace(tmp_path / "ws", git=False)
    edit_params(ws, **TINY)
    fsood(ws, "data")
    fsood(ws, "pretrain", "--pretrain-seed", "0")
    fsood(ws, "subspace", "--pretrain-seed", "0")
    cell = ws / "results/digits/model0/sep/seed0"
    runs = []
    for _ in range(2):
        fsood(ws, "finetune", "--pretrain-seed", "0", "--method", "sep", "--seed", "0")
        fsood(ws, "score", "--pretrain-seed", "0", "--method", "sep", "--seed", "0")
        runs.append({name: (cell / name).read_bytes() for name in ("metrics.json", "model.pt", "cache.npz", "history.csv")})
    for name in runs[0]:
        assert runs[0][name] == runs[1][name], f"{name} differs between two runs of the same cell"

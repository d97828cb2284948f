"""Exact rebuild on CPU: rerunning a cell, by DVC or with more Snakemake cores, gives the same bytes."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from upstream import copy_recorded, sh as run

pytestmark = pytest.mark.slow


def sh(ws, *cmd) -> str:
    return run(ws, *cmd).stdout


def products(ws: Path, *folders: str) -> dict[str, bytes]:
    """The bytes of every file the pipeline wrote under ``folders`` (temp files would show too)."""
    return {str(p.relative_to(ws)): p.read_bytes()
            for folder in folders for p in sorted((ws / folder).rglob("*")) if p.is_file()}


def assert_same(first: dict[str, bytes], second: dict[str, bytes]) -> None:
    assert sorted(first) == sorted(second), "the reruns wrote different files"
    differ = [name for name in first if first[name] != second[name]]
    assert not differ, f"bytes differ after a rerun: {differ}"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, recorded_digits):
    """The session's recorded run (made by Snakemake with 2 cores, tests/upstream.py), then one cell rebuilt
    with `dvc repro -f` (all its upstream too): the workspace and the products' bytes before the rebuild."""
    ws = copy_recorded(recorded_digits, tmp_path_factory.mktemp("rebuild") / "ws")
    before = products(ws, "data", "results")
    out = sh(ws, "dvc", "repro", "-f", "score@digits-0-sep-0")
    for stage in ("data@digits", "pretrain@digits-0", "subspace@digits-0", "finetune@digits-0-sep-0",
                  "score@digits-0-sep-0"):
        assert f"Running stage '{stage}'" in out, out[-2000:]
    return ws, before


@pytest.mark.trust(kind="exact_rebuild")
def test_dvc_repro_force_rebuilds_a_cell_byte_identical(rebuilt):
    ws, before = rebuilt
    after = products(ws, "data", "results")
    assert {"results/digits/model0/sep/seed0/model.pt", "results/digits/model0/sep/seed0/cache.npz",
            "results/digits/model0/sep/seed0/metrics.json", "results/digits/model0/pretrain/model.pt"} <= set(before)
    assert_same(before, after)
    assert "up to date" in sh(ws, "dvc", "status", "--with-deps", "score@digits-0-sep-0")


@pytest.mark.trust(kind="exact_rebuild")
def test_dvc_repro_force_leaves_git_clean(rebuilt):
    ws, _ = rebuilt
    assert sh(ws, "git", "status", "--porcelain") == ""  # dvc.lock and the small results unchanged


@pytest.mark.trust(kind="exact_rebuild")
def test_snakemake_cores_do_not_change_bytes(tmp_path, recorded_digits):
    """The recorded run was made with 2 cores (two cells side by side); 1 core makes the same bytes."""
    ws = copy_recorded(recorded_digits, tmp_path / "ws")
    folders = [f"results/digits/model0/{name}" for name in ("pretrain", "subspace", "none", "oe", "sep")]
    first = products(ws, *folders)
    assert {"results/digits/model0/oe/seed0/model.pt", "results/digits/model0/sep/seed0/cache.npz"} <= set(first)
    runs = sorted((ws / ".snakemake/log").glob("*.snakemake.log"))  # named by start time
    assert "Provided cores: 2" in runs[-1].read_text()
    shutil.rmtree(ws / "results")
    cells = [f"results/digits/model0/{m}/seed0/metrics.json" for m in ("oe", "sep")]
    rerun = run(ws, sys.executable, "-m", "snakemake", *cells, "results/digits/model0/subspace/nc.json",
                "results/digits/model0/none/metrics.json", "--cores", "1")
    assert "Provided cores: 1" in rerun.stderr
    assert_same(first, products(ws, *folders))

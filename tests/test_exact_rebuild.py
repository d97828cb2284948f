"""Exact rebuild on CPU: rerunning a cell, by DVC or with more Snakemake cores, gives the same bytes."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, edit_params, make_workspace

pytestmark = pytest.mark.slow

# One method, short training: each test stays well under a minute and a half on two cores.
SMALL = {**TINY, "grid.methods": ["sep"], "benchmarks.digits.pretrain.epochs": 1,
         "benchmarks.digits.data.n_outliers": 128, "benchmarks.digits.data.n_ood": 64}


def sh(ws, *cmd):
    proc = subprocess.run(cmd, cwd=ws, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def products(ws: Path, *folders: str) -> dict[str, bytes]:
    """The bytes of every file the pipeline wrote under ``folders`` (temp files would show too)."""
    return {str(p.relative_to(ws)): p.read_bytes()
            for folder in folders for p in sorted((ws / folder).rglob("*")) if p.is_file()}


def assert_same(first: dict[str, bytes], second: dict[str, bytes]) -> None:
    assert sorted(first) == sorted(second), "the reruns wrote different files"
    differ = [name for name in first if first[name] != second[name]]
    assert not differ, f"bytes differ after a rerun: {differ}"


def tiny_workspace(tmp_path: Path) -> Path:
    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **SMALL)
    sh(ws, "git", "commit", "-qam", "tiny grid")
    return ws


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """A cell run by `dvc repro`, committed, then rebuilt with `dvc repro -f` (all its upstream too):
    the workspace and the products' bytes before the rebuild."""
    ws = tiny_workspace(tmp_path_factory.mktemp("rebuild"))
    sh(ws, "dvc", "repro", "score@digits-sep-0")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "recorded run")
    before = products(ws, "data", "results")
    out = sh(ws, "dvc", "repro", "-f", "score@digits-sep-0")
    for stage in ("data@digits", "pretrain@digits", "subspace@digits", "finetune@digits-sep-0", "score@digits-sep-0"):
        assert f"Running stage '{stage}'" in out, out[-2000:]
    return ws, before


@pytest.mark.trust(kind="exact_rebuild")
def test_dvc_repro_force_rebuilds_a_cell_byte_identical(rebuilt):
    ws, before = rebuilt
    after = products(ws, "data", "results")
    assert {"results/digits/sep/seed0/model.pt", "results/digits/sep/seed0/cache.npz",
            "results/digits/sep/seed0/metrics.json", "results/digits/pretrain/model.pt"} <= set(before)
    assert_same(before, after)
    assert "up to date" in sh(ws, "dvc", "status", "--with-deps", "score@digits-sep-0")


@pytest.mark.trust(kind="exact_rebuild")
def test_dvc_repro_force_leaves_git_clean(rebuilt):
    ws, _ = rebuilt
    assert sh(ws, "git", "status", "--porcelain") == ""  # dvc.lock and the small results unchanged


@pytest.mark.trust(kind="exact_rebuild")
def test_snakemake_cores_do_not_change_bytes(tmp_path):
    ws = tiny_workspace(tmp_path)
    edit_params(ws, **{"grid.methods": ["oe", "sep"]})  # two cells, so two cores run jobs side by side
    cells = [f"results/digits/{m}/seed0/metrics.json" for m in ("oe", "sep")]
    snakemake = [sys.executable, "-m", "snakemake", *cells, "results/digits/subspace/nc.json"]
    sh(ws, *snakemake, "--cores", "1")
    first = products(ws, "results")
    assert {"results/digits/oe/seed0/model.pt", "results/digits/sep/seed0/cache.npz"} <= set(first)
    shutil.rmtree(ws / "results")
    rerun = subprocess.run([*snakemake, "--cores", "2"], cwd=ws, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Provided cores: 2" in rerun.stderr
    assert_same(first, products(ws, "results"))

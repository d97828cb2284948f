"""`cifar10-mini` on the real mirror: verification of the real archives and a small slice of
the whole pipeline (a few hundred images of each set). Skipped where no mirror is reachable,
except in CI, where the ``mirror`` fixture fails instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import edit_params, make_workspace, require_mirror

from fsood.datasets import cifar10_mini, registry
from fsood.datasets.cifar10_mini import _pick, _rng, overlap_wnids

SLICE = {"id_train": 300, "id_test": 200, "outliers": 300, "ood": 200}


def test_sample_choices_are_fixed_by_seed_and_independent_per_set():
    names = [f"n{i:03d}" for i in range(100)]
    a = _pick(names, 10, _rng(0, "id_train/cat"))
    assert a == _pick(names, 10, _rng(0, "id_train/cat")) == sorted(a)
    assert a != _pick(names, 10, _rng(1, "id_train/cat"))  # another split_seed, another list
    assert a != _pick(names, 10, _rng(0, "outliers"))  # each set draws from its own stream
    assert _pick(names, None, _rng(0, "x")) == names and _pick(names, 500, _rng(0, "x")) == names


def test_overlap_list_ships_with_the_package():
    overlap = overlap_wnids()
    assert len(overlap) == 30 and "n02123045" in overlap  # tabby cat: a CIFAR-10 class under another name


def test_real_archives_verify_from_the_mirror(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MIRROR_ENV, str(mirror))
    for name in ("cifar10-jpg", "tinyimagenet32", "dtd10"):
        source = registry.get_source(name)
        path = registry.fetch(source, [], tmp_path / "downloads")
        assert path.parent == mirror and registry.verify(source, path) == "archive sha256"
    dtd = registry.get_source("dtd10")  # the tree hash of ../shared/data/README.md, recomputed
    assert registry.tree_sha256(dtd, mirror / dtd.filename) == dtd.tree_sha256
    assert not (tmp_path / "downloads").exists()


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    found = require_mirror()  # module scope: the function-scoped ``mirror`` fixture cannot serve
    ws = make_workspace(tmp_path_factory.mktemp("c10slice") / "ws")
    bench = "benchmarks.cifar10-mini"
    edit_params(ws, **{"grid.benchmarks": ["cifar10-mini"], "grid.methods": ["none", "oe", "sep"],
                       "grid.seeds": [0], f"{bench}.data.subset": SLICE,
                       f"{bench}.pretrain.epochs": 1, "report.projection_seed": 0})
    env = dict(os.environ, FSOOD_MIRROR=str(found))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "all"], cwd=ws, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ws


def test_slice_sets_have_the_promised_content(slice_run):
    from fsood.datasets import BenchmarkData

    data = BenchmarkData(slice_run / "data" / "cifar10-mini")
    man = data.manifest
    assert man["num_classes"] == 10 and man["class_names"][:3] == ["airplane", "automobile", "bird"]
    x, y = data.load("id_train")
    assert x.shape == (300, 3, 32, 32) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [30] * 10  # class-balanced
    assert data.load("id_test")[0].shape[0] == 200
    for name in cifar10_mini.OOD_SETS:
        ood_x, ood_y = data.load(name)
        assert ood_x.shape == (200, 3, 32, 32) and (ood_y == -1).all()
        assert ood_x.std() > 5, f"{name} looks blank"
    out, held = man["sets"]["outliers"], man["sets"]["tin_holdout"]
    assert len(held["classes"]) == 40 and len(out["classes"]) == 130
    assert not set(out["classes"]) & (set(held["classes"]) | overlap_wnids())
    assert {m.split("/")[1] for m in out["members"]} <= set(out["classes"])
    assert all(m.startswith("val/images/") for m in held["members"])
    assert all(m.startswith("train/") and m.endswith(".jpg") for m in man["sets"]["id_train"]["members"])


def test_slice_runs_to_a_report(slice_run):
    summary = json.loads((slice_run / "reports" / "cifar10-mini" / "summary.json").read_text())
    assert set(summary) >= {"none", "oe", "sep"}
    metrics = json.loads((slice_run / "results" / "cifar10-mini" / "sep" / "seed0" / "metrics.json").read_text())
    assert metrics["convention"]["positive"] == "id"
    assert set(metrics["scores"]["fs"]) >= set(cifar10_mini.OOD_SETS)
    for png in ("projection.png", "score_histograms.png", "training_curves.png"):
        assert (slice_run / "reports" / "cifar10-mini" / png).stat().st_size > 10_000

"""`cifar10-mini` on the real mirror: verification of the real archives and a small slice of
the whole pipeline (a few hundred images of each set). Skipped where no mirror is reachable,
except in CI, where the ``mirror`` fixture fails instead.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import edit_params, make_workspace, require_mirror

from conftest import ROOT
from fsood.datasets import materialize, registry
from fsood.datasets.declared import class_names, pick, rng

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
MINI = PARAMS["benchmarks"]["cifar10-mini"]["data"]
OOD_SETS = list(MINI["ood_sets"])
SLICE = {"id_train": 300, "id_test": 200, "outliers": 300, "ood": 200}
OVERLAP = "src/fsood/datasets/tinyimagenet_cifar10_overlap.tsv"
HOLDOUT = "src/fsood/datasets/tinyimagenet32_holdout40.txt"

# What the cifar10-mini builder (src/fsood/datasets/cifar10_mini.py, removed after commit
# 4028cc16f098) made from the mirror with subset SLICE, holdout_classes 40, split_seed 0 and
# every OOD set: the manifest's sha256 of each set (pixels + labels). Pinned before it was removed.
OLD_BUILDER_SHA256 = {
    "id_train": "3b3f576462f04a04f6703c2f63a5ed44b62614d354e6a305f4a5fb02ed20543f",
    "id_test": "2a8d97bdb28f73ebe161aa590245e882eaf0aff6800041473559f240a5842063",
    "outliers": "88c77ec9085d5aac9d5f729a4399f47e7cdf6e15f4f58ff62158cf52c791b5cc",
    "textures": "f176b90634f44b51f25f135def38ebceca855983caaffdcf1690553d08077eda",
    "tin_holdout": "16ec9465cf56e688d94397beb18e8761e1496d6583c7b5dcda819e222569a9f6",
    "digits": "722f38ed5cf4f407075f3649f1f11febbc051810b06d62f97164ef5a1e2e6897",
    "gaussian": "3050472b0e40c3648a9d5515d97e41f41884736afe615a82ced0f5df963092de",
    "rademacher": "d7833c676d08b1447a854c23f3672aa0139563d651c8996015dd95ef497e8ae0",
    "blobs": "76591b1eedf458664dedbabfda74c40da0a5dba88d603bde55ad3cae10816fd0",
}


def sliced(data: dict) -> dict:
    """cifar10-mini's declaration with the SLICE caps."""
    data = copy.deepcopy(data)
    data["id"]["count"] = {"train": SLICE["id_train"], "test": SLICE["id_test"]}
    data["outliers"]["count"] = SLICE["outliers"]
    for spec in data["ood_sets"].values():
        spec["count"] = SLICE["ood"]
    return data


def test_sample_choices_are_fixed_by_seed_and_independent_per_set():
    a = pick(100, 10, rng(0, "id_train/cat"))
    assert a.tolist() == pick(100, 10, rng(0, "id_train/cat")).tolist() == sorted(a.tolist())
    assert a.tolist() != pick(100, 10, rng(1, "id_train/cat")).tolist()  # another split_seed, another list
    assert a.tolist() != pick(100, 10, rng(0, "outliers")).tolist()  # each set draws from its own stream
    assert pick(100, None, rng(0, "x")).tolist() == list(range(100)) == pick(100, 500, rng(0, "x")).tolist()


def test_class_lists_ship_with_the_package():
    overlap = class_names([{"file": OVERLAP}], "overlap", ROOT)
    assert len(overlap) == 30 and "n02123045" in overlap  # tabby cat: a CIFAR-10 class under another name
    holdout = class_names([{"file": HOLDOUT}], "holdout", ROOT)
    assert len(holdout) == 40 and not set(holdout) & set(overlap)


def test_declared_cifar10_mini_makes_the_old_builders_sets_byte_for_byte(mirror, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # class list files are relative to the project root
    datasets = {"mirrors": [str(mirror)], "download_dir": str(tmp_path / "downloads")}
    manifest = materialize("cifar10-mini", sliced(MINI), tmp_path / "data", datasets)
    assert {name: info["sha256"] for name, info in manifest["sets"].items()} == OLD_BUILDER_SHA256
    assert set(manifest["sources"]) == {"cifar10-jpg", "tinyimagenet32", "dtd10"}  # the hashes of the bytes read
    assert set(manifest["class_lists"]) == {OVERLAP, HOLDOUT}


def test_real_archives_verify_from_the_mirror(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MIRROR_ENV, str(mirror))
    for name in ("cifar10-jpg", "tinyimagenet32", "dtd10"):
        source = registry.get_source(name)
        path = registry.fetch(source, [], tmp_path / "downloads")
        assert path.parent == mirror and registry.verify(source, path) == "archive sha256"
    dtd = registry.get_source("dtd10")  # its recorded tree hash, recomputed
    assert registry.tree_sha256(dtd, mirror / dtd.filename) == dtd.tree_sha256
    assert not (tmp_path / "downloads").exists()


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    found = require_mirror()  # module scope: the function-scoped ``mirror`` fixture cannot serve
    ws = make_workspace(tmp_path_factory.mktemp("c10slice") / "ws")
    bench = "benchmarks.cifar10-mini"
    edit_params(ws, **{"grid.benchmarks": ["cifar10-mini"], "grid.pretrain_seeds": [0], "grid.methods": ["oe", "sep"],
                       "grid.seeds": [0], f"{bench}.data": sliced(MINI),
                       f"{bench}.pretrain.epochs": 1, f"{bench}.finetune.epochs": 2,
                       f"{bench}.finetune.stage2_epoch": 1,
                       # 2 steps an epoch (the default 24 stream over the whole ID set: 4 minutes a cell on a CPU
                       # without AVX-512); the stages, files and report are the same
                       f"{bench}.finetune.steps_per_epoch": 2,
                       "report.projection_seed": 0})
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
    for name in OOD_SETS:
        ood_x, ood_y = data.load(name)
        assert ood_x.shape == (200, 3, 32, 32) and (ood_y == -1).all()
        assert ood_x.std() > 5, f"{name} looks blank"
    out, held = man["sets"]["outliers"]["sources"][0], man["sets"]["tin_holdout"]
    assert len(held["classes"]) == 40 and len(out["classes"]) == 130
    assert not set(out["classes"]) & (set(held["classes"]) | set(class_names([{"file": OVERLAP}], "", ROOT)))
    assert {m.split("/")[1] for m in out["members"]} <= set(out["classes"])
    assert all(m.startswith("val/images/") for m in held["members"])
    assert all(m.startswith("train/") and m.endswith(".jpg") for m in man["sets"]["id_train"]["members"])


def test_slice_runs_to_a_report(slice_run):
    summary = json.loads((slice_run / "reports" / "cifar10-mini" / "summary.json").read_text())
    assert set(summary) >= {"none", "oe", "sep"}
    metrics = json.loads((slice_run / "results/cifar10-mini/model0/sep/seed0/metrics.json").read_text())
    assert metrics["convention"]["positive"] == "id"
    assert set(metrics["scores"]["fs"]) >= set(OOD_SETS)
    for png in ("projection.png", "score_histograms.png", "training_curves.png"):
        assert (slice_run / "reports" / "cifar10-mini" / png).stat().st_size > 10_000

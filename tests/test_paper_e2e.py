"""The paper's `cifar10` and `imagenet` pipelines, end to end on CPU, on fabricated copies of their data.

Every source is fabricated in its real format (tests/paper_fakes.py), served on 127.0.0.1 and
found through ``$FSOOD_SOURCES``: the registry downloads and verifies each one, the builders
read them as they would read the originals, the energy-OOD / torchvision checkpoints are
imported, and Snakemake runs every stage to the report. Only the sizes and epochs are tiny.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import paper_fakes
from conftest import edit_params, make_workspace
from fileserver import serve
from fsood.models import build_model

pytestmark = pytest.mark.slow

SMALL_TRAIN = {"epochs": 2, "stage2_epoch": 1, "id_batch_size": 8, "outlier_batch_size": 16}


def _env(ws: Path, sources: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FSOOD_MIRROR"}
    env.update(FSOOD_SOURCES=str(sources), DVC_NO_ANALYTICS="1", **extra,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])))
    return env


def _snakemake(ws: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "all"], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _finetune_keys(benchmark: str) -> dict:
    return {f"benchmarks.{benchmark}.finetune.{k}": v for k, v in SMALL_TRAIN.items()}


def _check_report(ws: Path, benchmark: str, methods: list[str], sets: list[str], hard: list[str]) -> dict:
    for method in ["none", *methods]:  # the pretrained model's own cell, then every fine-tuned one
        cell = "none" if method == "none" else f"{method}/seed0"
        metrics = json.loads((ws / f"results/{benchmark}/model0/{cell}/metrics.json").read_text())
        for score in ("fs", "msp"):
            assert set(metrics["scores"][score]) >= {*sets, *hard, "mean"}
            assert 0.0 <= metrics["scores"][score]["mean"]["auroc"] <= 100.0
        if hard:
            assert "hard_mean" in metrics["scores"]["fs"]
    for name in ("summary.md", "paper_comparison.md", "score_histograms.png", "verdict.json"):
        assert (ws / f"reports/{benchmark}" / name).stat().st_size > 0
    return json.loads((ws / f"data/{benchmark}/manifest.json").read_text())


def test_cifar10_pipeline_on_fabricated_sources(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    fakes = tmp_path / "served"
    fakes.mkdir()
    model_cfg = {"arch": "wrn", "depth": 10, "widen": 1, "dropout": 0.3}
    sets, hard = ["svhn", "lsun_crop", "isun", "textures", "places365"], ["lsun_fix", "imagenet_resize", "cifar100", "tin"]
    files = paper_fakes.cifar_sources(fakes, "cifar10", build_model(model_cfg, 3, 10), sets + hard)
    methods = ["oe", "dal", "sep"]
    edit_params(ws, **{
        "grid.benchmarks": ["cifar10"], "grid.methods": methods, "grid.pretrain_seeds": [0], "grid.seeds": [0],
        "datasets.mirrors": [],
        "benchmarks.cifar10.model": model_cfg,
        "benchmarks.cifar10.data.ood_count": 6,
        "benchmarks.cifar10.data.places365_pool": 10,
        "benchmarks.cifar10.data.subset.outliers": 64,
        "methods.dal.iterations": 2,
        "score.scores": ["fs", "msp", "energy"],
        "report.max_points": 50,
        **_finetune_keys("cifar10"),
    })
    with serve(fakes) as base_url:
        sources = paper_fakes.sources_override(tmp_path / "sources.yaml", files, base_url)
        _snakemake(ws, _env(ws, sources))
    manifest = _check_report(ws, "cifar10", methods, sets, hard)
    # every source was downloaded from 127.0.0.1, verified, and its hash recorded for DVC
    for name, path in files.items():
        assert (ws / "data/downloads" / path.name).read_bytes() == path.read_bytes()
        if name in manifest["sources"]:  # the data sources (the checkpoint is the pretrain stage's)
            assert manifest["sources"][name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(manifest["sources"]) == set(files) - {"energy-ood-wrn-cifar10"}
    assert manifest["sets"]["id_train"]["count"] == 30 and manifest["sets"]["svhn"]["count"] == 6
    assert len(manifest["sets"]["places365"]["pool"]) == 10
    assert len(manifest["sets"]["places365"]["members"]) == 6
    # the pretrained model is energy_ood's checkpoint, imported: its weights reach the fine-tuning
    import torch

    start = torch.load(ws / "results/cifar10/model0/pretrain/model.pt", weights_only=True)
    ours = build_model(model_cfg, 3, 10).state_dict()
    assert set(start) == set(ours)
    history = (ws / "results/cifar10/model0/pretrain/history.csv").read_text()
    checkpoint = files["energy-ood-wrn-cifar10"]
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in history  # what was loaded, recorded
    raw = {k.removeprefix("module."): v for k, v in torch.load(checkpoint, weights_only=True).items()}
    torch.testing.assert_close(start["fc.weight"], raw["fc.weight"])


def test_imagenet_pipeline_on_fabricated_sources(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    fakes = tmp_path / "served"
    fakes.mkdir()
    classes = 3
    root1k, root21k = paper_fakes.imagenet_folders(tmp_path / "user", classes, train=4, val=2, extra_21k=3, seed=7)
    files = paper_fakes.imagenet_sources(fakes, classes)
    methods = ["oe", "sep"]
    edit_params(ws, **{
        "grid.benchmarks": ["imagenet"], "grid.methods": methods, "grid.pretrain_seeds": [0], "grid.seeds": [0],
        "datasets.mirrors": [],
        "benchmarks.imagenet.data.ood_count": 5,
        "benchmarks.imagenet.data.resize": 36,
        "benchmarks.imagenet.data.crop": 32,
        "score.scores": ["fs", "msp", "energy"],
        "report.max_points": 50,
        "report.projection_classes": [0, 1],
        **_finetune_keys("imagenet"),
        "benchmarks.imagenet.finetune.stage2_epoch": 0,
    })
    with serve(fakes) as base_url:
        sources = paper_fakes.sources_override(tmp_path / "sources.yaml", files, base_url)
        env = _env(ws, sources, FSOOD_IMAGENET_ROOT=str(root1k), FSOOD_IMAGENET21K_ROOT=str(root21k))
        _snakemake(ws, env)
    manifest = _check_report(ws, "imagenet", methods, ["inaturalist", "sun", "places", "textures"], [])
    assert manifest["num_classes"] == classes
    assert manifest["sets"]["id_train"]["kind"] == "files" and manifest["sets"]["id_train"]["count"] == 12
    # ImageNet-21k-P minus the 1k classes: the shared class's 4 images are gone
    assert manifest["sets"]["outliers"]["count"] == 12
    assert manifest["sets"]["outliers"]["removed_imagenet1k_classes"] == 1

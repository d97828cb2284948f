"""The worked example of a declared benchmark ("Your own benchmark"): the very block the
docs/benchmarks.md shows is valid params and builds its sets from the mirror."""
from __future__ import annotations

import copy

import numpy as np
import yaml

from conftest import ROOT
from fsood.config import num_classes, validate_params
from fsood.datasets import BenchmarkData, materialize
from fsood.datasets.declared import class_names


def readme_block() -> dict:
    text = (ROOT / "docs/benchmarks.md").read_text()
    block = text.split("<!-- vehicles: begin -->", 1)[1].split("<!-- vehicles: end -->", 1)[0]
    return yaml.safe_load(block.split("```yaml", 1)[1].split("```", 1)[0])


def with_example() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    example = readme_block()
    params["benchmarks"].update(example["benchmarks"])
    params["report"]["projection_ood"].update(example["report"]["projection_ood"])
    params["grid"]["benchmarks"] = ["vehicles"]
    return params


def test_the_readme_example_is_valid_params():
    params = validate_params(with_example())
    assert num_classes("vehicles", params["benchmarks"]["vehicles"]) == 4


def test_the_readme_example_builds_from_the_mirror(mirror, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # its class list file is relative to the project root
    data_cfg = copy.deepcopy(with_example()["benchmarks"]["vehicles"]["data"])
    datasets = {"mirrors": [str(mirror)], "download_dir": str(tmp_path / "downloads")}
    manifest = materialize("vehicles", data_cfg, tmp_path / "vehicles", datasets)
    data = BenchmarkData(tmp_path / "vehicles")
    assert manifest["class_names"] == ["airplane", "automobile", "ship", "truck"]
    x, y = data.load("id_train")
    assert x.shape == (4000, 3, 32, 32) and np.bincount(y).tolist() == [1000] * 4
    assert np.bincount(data.load("id_test")[1]).tolist() == [500] * 4
    assert [len(data.load(s)[0]) for s in ("outliers", "animals", "textures", "noise")] == [20000, 2000, 1200, 1000]
    outlier_classes = manifest["sets"]["outliers"]["sources"][0]["classes"]
    overlap = class_names([{"file": "src/fsood/datasets/tinyimagenet_cifar10_overlap.tsv"}], "", ROOT)
    assert len(outlier_classes) == 170 and not set(outlier_classes) & set(overlap)
    assert {m.split("/")[1] for m in manifest["sets"]["animals"]["members"]} == {
        "bird", "cat", "deer", "dog", "frog", "horse"}
    assert manifest["normalize"]["from"].startswith("id_train") and len(data.normalize["std"]) == 3

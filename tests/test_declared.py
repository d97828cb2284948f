"""A benchmark declared in params.yaml from parts: built from a fabricated ImageFolder tree, refused
with a message naming the problem (and nothing written), and run through Snakemake to the report."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import edit_params, make_workspace
from fsood.datasets import BenchmarkData, materialize
from fsood.datasets.errors import DatasetError
from fsood.datasets.declared import channel_stats

trust = pytest.mark.trust
COLOURS = {"cat": (200, 60, 40), "dog": (40, 180, 60), "fox": (230, 140, 20), "owl": (90, 90, 200)}
TREE = {"train": {"cat": 12, "dog": 12, "fox": 12}, "test": {"cat": 6, "dog": 6, "owl": 8}}


def fabricate(root: Path, tree: dict = TREE, size: tuple[int, int] = (12, 10)) -> Path:
    """``<root>/<split>/<class>/<k>.png``: tiny PNGs, a noisy colour per class (12x10: resized and cropped)."""
    rng = np.random.default_rng(0)
    for split, classes in tree.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                pixels = np.clip(np.array(COLOURS[cls]) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{k:03d}.png")
    return root


def declaration(folder: str = "pets") -> dict:
    """ID cat vs dog, fox outliers, owls and Gaussian noise as OOD sets."""
    return {
        "image_size": 8,
        "resize": "crop",
        "id": {"folder": folder, "splits": {"train": "train", "test": "test"}, "classes": ["cat", "dog"],
               "count": {"train": None, "test": None}},
        "outliers": {"count": None, "sources": [{"folder": folder, "split": "train", "classes": ["fox"]}]},
        "ood_sets": {"owls": {"folder": folder, "split": "test", "classes": ["owl"], "count": None},
                     "noise": {"synthetic": "gaussian", "count": 16}},
        "split_seed": 0,
    }


@pytest.fixture
def pets(tmp_path, monkeypatch) -> Path:
    """A project folder holding ``pets/`` (the fabricated tree); the working directory, as for a stage."""
    fabricate(tmp_path / "pets")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_declared_benchmark_builds_from_a_user_folder(pets):
    man = materialize("pets", declaration(), pets / "data", {"mirrors": [], "download_dir": "dl"})
    data = BenchmarkData(pets / "data")
    x, y = data.load("id_train")
    assert x.shape == (24, 3, 8, 8) and np.bincount(y).tolist() == [12, 12]  # cat = 0, dog = 1: the order given
    assert man["class_names"] == ["cat", "dog"] and man["num_classes"] == 2 and man["ood_sets"] == ["owls", "noise"]
    assert x[y == 0, 0].mean() > x[y == 0, 1].mean() + 60  # cats are red: the right folder behind each label
    assert data.load("outliers")[0].shape[0] == 12 and data.load("owls")[0].shape[0] == 8
    assert (data.load("owls")[1] == -1).all() and data.load("noise")[0].shape == (16, 3, 8, 8)
    assert man["sets"]["outliers"]["sources"][0]["classes"] == ["fox"]
    # no normalize in the declaration: the ID train statistics, recorded in the manifest
    assert man["normalize"]["from"].startswith("id_train") and data.normalize["mean"] == channel_stats(x)["mean"]
    assert abs(data.normalize["mean"][0] - x[:, 0].mean() / 255) < 1e-5
    again = materialize("pets", declaration(), pets / "again", {"mirrors": [], "download_dir": "dl"})
    assert {k: v["sha256"] for k, v in again["sets"].items()} == {k: v["sha256"] for k, v in man["sets"].items()}


def test_caps_are_class_balanced_and_each_set_draws_its_own_stream(pets):
    cfg = declaration()
    cfg["id"]["count"] = {"train": 10, "test": None}
    cfg["outliers"]["count"] = 5
    first = materialize("pets", cfg, pets / "a", {"mirrors": [], "download_dir": "dl"})
    assert np.bincount(BenchmarkData(pets / "a").load("id_train")[1]).tolist() == [5, 5]
    assert len(first["sets"]["outliers"]["sources"][0]["members"]) == 5
    cfg["ood_sets"]["owls"]["count"] = 3  # another set's cap: the outliers stay the same images
    second = materialize("pets", cfg, pets / "b", {"mirrors": [], "download_dir": "dl"})
    assert second["sets"]["outliers"]["sha256"] == first["sets"]["outliers"]["sha256"]
    cfg["split_seed"] = 1
    third = materialize("pets", cfg, pets / "c", {"mirrors": [], "download_dir": "dl"})
    assert third["sets"]["outliers"]["sha256"] != first["sets"]["outliers"]["sha256"]


def _broken_png(root: Path) -> None:
    (root / "pets/train/dog/zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def _loose_images(root: Path) -> None:
    fabricate(root / "flat", {"train": {"cat": 2}})
    for p in (root / "flat/train/cat").iterdir():
        p.rename(root / "flat/train" / p.name)
    (root / "flat/train/cat").rmdir()


def _names_file(root: Path) -> None:
    (root / "pets_classes.txt").write_text("# ID classes\ncat\ndgo\n")


# name -> (change to the declaration, what the tree gets, fragments of the message)
BAD = {
    "unknown_source": ({"id.source": "cifar11-jpg", "id.folder": None}, None,
                       ["unknown image source 'cifar11-jpg'", "'cifar10-jpg'", "'sklearn-digits'"]),
    "class_absent": ({"id.classes": ["cat", "dgo"]}, None,
                     ["benchmarks.pets.data.id.classes: kept class 'dgo' is not a class of the source",
                      "close: ['dog']"]),
    "class_absent_in_a_file": ({"id.classes": [{"file": "pets_classes.txt"}]}, _names_file,
                               ["kept class 'dgo'", "close: ['dog']"]),
    "empty_after_filtering": ({"outliers.sources": [{"folder": "pets", "split": "train", "classes": ["fox"],
                                                     "drop_classes": ["fox"]}]}, None,
                              ["benchmarks.pets.data.outliers.sources[0]: no image left in split 'train'"]),
    "id_outlier_overlap": ({"outliers.sources": [{"folder": "pets", "split": "train", "drop_classes": ["fox"]}]},
                           None, ["benchmarks.pets.data.outliers.sources[0]: classes ['cat', 'dog'] are ID classes"]),
    "folder_missing": ({"id.folder": "pest"}, None, ["benchmarks.pets.data.id: folder", "pest' does not exist"]),
    "not_imagefolder": ({"ood_sets.owls": {"folder": "flat", "split": "train", "count": None}}, _loose_images,
                        ["not in ImageFolder layout (<root>/<split>/<class>/<image>)",
                         "images directly in the split folder"]),
    "unknown_split": ({"id.splits": {"train": "train", "test": "val"}}, None,
                      ["has no split 'val' (its splits: ['test', 'train'])"]),
    "undecodable": ({}, _broken_png, ["pets/train/dog/zz_broken.png: image failed to decode"]),
    "class_list_file_missing": ({"id.classes": [{"file": "nowhere.txt"}]}, None,
                                ["benchmarks.pets.data.id.classes: class list file 'nowhere.txt' does not exist"]),
}


def _apply(cfg: dict, changes: dict) -> dict:
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(leaf)
        else:
            node[leaf] = value
    return cfg


@trust(kind="bad_declaration")
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_declaration_is_refused_naming_the_problem_and_nothing_is_written(pets, case):
    changes, prepare, fragments = BAD[case]
    if prepare:
        prepare(pets)
    out = pets / "data" / "pets"
    out.parent.mkdir()
    with pytest.raises(DatasetError) as err:
        materialize("pets", _apply(copy.deepcopy(declaration()), changes), out, {"mirrors": [], "download_dir": "dl"})
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    assert list(out.parent.iterdir()) == [] and not (pets / "dl").exists()  # no data folder, no temp folder


# --- the whole pipeline on a declared benchmark --------------------------------------------------

def pets_benchmark(params: dict) -> dict:
    """The pets declaration with the digits analog's model and training settings, scaled down."""
    bench = copy.deepcopy(params["benchmarks"]["digits"])
    bench["notes"] = "`pets` is a fabricated test benchmark: coloured noise, not photographs."
    bench["data"] = declaration("mydata/pets")
    bench["model"] = {"arch": "small_cnn", "width": 8, "feature_dim": 16, "dropout": 0.0}
    bench["pretrain"].update(epochs=2, batch_size=8)
    bench["finetune"].update(epochs=2, stage2_epoch=1, id_batch_size=8, outlier_batch_size=8)
    bench["score"] = {"synthetic_sets": ["noise"]}  # its generated set is a sanity set, named so here
    return bench


@pytest.mark.slow
def test_a_declared_benchmark_runs_through_snakemake_to_the_report(tmp_path):
    ws = make_workspace(tmp_path / "ws", git=False)
    fabricate(ws / "mydata" / "pets")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    edit_params(ws, **{"benchmarks.pets": pets_benchmark(params), "grid.benchmarks": ["pets"],
                       "grid.pretrain_seeds": [0],
                       "grid.methods": ["sep"], "grid.seeds": [0], "report.projection_seed": 0,
                       "report.projection_ood.pets": "owls", "report.max_points": 50})
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "all"], cwd=ws,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((ws / "results/pets/model0/sep/seed0/metrics.json").read_text())
    assert set(metrics["scores"]["fs"]) == {"owls", "noise", "mean"}
    manifest = json.loads((ws / "data/pets/manifest.json").read_text())
    assert manifest["num_classes"] == 2 and manifest["normalize"]["from"].startswith("id_train")
    summary = (ws / "reports/pets/summary.md").read_text()
    assert "`pets` is a fabricated test benchmark" in summary  # benchmarks.pets.notes
    assert "owls FPR95" in summary and "noise FPR95" not in summary  # the headline averages the natural set
    assert "## Synthetic sanity sets" in summary and "| noise |" in summary.split("## Synthetic sanity sets")[1]
    assert json.loads((ws / "reports/pets/verdict.json").read_text())["outcome"] == "not computed"  # no oe
    assert (ws / "reports/pets/projection.png").stat().st_size > 1000

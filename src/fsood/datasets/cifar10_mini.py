"""The `cifar10-mini` benchmark: real images at a scale a 2-core CPU can train on.

* ID: CIFAR-10 (JPEG copy); ``subset`` caps train and test, class-balanced.
* Auxiliary outliers: Tiny ImageNet (32x32) train images of classes that are neither
  CIFAR-10 classes under another name (``tinyimagenet_cifar10_overlap.tsv``) nor held out.
* Test OOD: ``textures`` (DTD-10, resized to 32 and centre-cropped as in the paper),
  ``tin_holdout`` (Tiny ImageNet val images of ``holdout_classes`` classes the outliers never
  contain), ``digits`` (scikit-learn digits upsampled to 32x32x3: an SVHN/MNIST analog), and
  the OE paper's ``gaussian``, ``rademacher``, ``blobs``.

Every random choice draws from its own stream, seeded by ``split_seed`` and the choice's
name, so changing one cap never reshuffles another set. The chosen member names are saved
in the manifest.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from .images import decode_all
from .registry import DatasetError, get_source, iter_members
from .synthetic import SYNTHETIC_SETS, synthetic

SIZE = 32
OOD_SETS = ("textures", "tin_holdout", "digits", *SYNTHETIC_SETS)
Fetch = Callable[[str], Path]  # source name -> verified local archive


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _pick(names: list[str], cap: int | None, rng: np.random.Generator) -> list[str]:
    """At most ``cap`` of ``names`` (sorted), chosen uniformly; all when cap is None."""
    names = sorted(names)
    if cap is None or cap >= len(names):
        return names
    return sorted(np.asarray(names)[rng.choice(len(names), cap, replace=False)].tolist())


def _read(fetch: Fetch, source: str, wanted=None) -> dict[str, bytes]:
    return dict(iter_members(get_source(source), fetch(source), wanted))


def overlap_wnids() -> set[str]:
    """Tiny ImageNet classes that are CIFAR-10 classes under another name (never outliers)."""
    text = resources.files("fsood.datasets").joinpath("tinyimagenet_cifar10_overlap.tsv").read_text()
    return {line.split("\t")[0] for line in text.splitlines() if line.strip()}


def _cifar(fetch: Fetch, cfg: dict) -> tuple[dict, dict, list[str]]:
    files = _read(fetch, "cifar10-jpg")
    classes = sorted({rel.split("/")[1] for rel in files})  # alphabetical = CIFAR-10's label order
    if len(classes) != 10:
        raise DatasetError(f"cifar10-jpg: expected 10 class folders, found {classes}")
    sets, prov = {}, {}
    for split, key in (("train", "id_train"), ("test", "id_test")):
        cap = cfg["subset"][key]
        per_class = None if cap is None else cap // len(classes)
        if per_class == 0:
            raise DatasetError(f"subset.{key}={cap} is below one image per class ({len(classes)} classes)")
        chosen, labels = [], []
        for label, cls in enumerate(classes):
            names = [rel for rel in files if rel.startswith(f"{split}/{cls}/")]
            picked = _pick(names, per_class, _rng(cfg["split_seed"], f"{key}/{cls}"))
            chosen += picked
            labels += [label] * len(picked)
        x = decode_all([(n, files[n]) for n in chosen], SIZE, desc=f"decode {key}")
        sets[key] = {"x": x, "y": np.asarray(labels, dtype=np.int64)}
        prov[key] = {"source": "cifar10-jpg", "members": chosen}
    return sets, prov, classes


def _tinyimagenet(fetch: Fetch, cfg: dict) -> tuple[dict, dict]:
    files = _read(fetch, "tinyimagenet32", wanted=lambda rel: not rel.startswith("test/"))
    wnids = sorted(files["wnids.txt"].decode().split())
    candidates = sorted(set(wnids) - overlap_wnids())
    if cfg["holdout_classes"] >= len(candidates):
        raise DatasetError(
            f"holdout_classes={cfg['holdout_classes']} leaves no outlier classes "
            f"({len(candidates)} Tiny ImageNet classes are not CIFAR-10 classes)"
        )
    holdout = _pick(candidates, cfg["holdout_classes"], _rng(cfg["split_seed"], "holdout_classes"))
    outlier_classes = sorted(set(candidates) - set(holdout))
    keep = set(outlier_classes)
    train = [rel for rel in files  # train/<wnid>/images/<wnid>_<k>.JPEG (beside a boxes .txt)
             if rel.startswith("train/") and rel.split("/")[1] in keep and rel.endswith(".JPEG")]
    outliers = _pick(train, cfg["subset"]["outliers"], _rng(cfg["split_seed"], "outliers"))
    annotations = dict(line.split("\t")[:2] for line in files["val/val_annotations.txt"].decode().splitlines() if line)
    val = [f"val/images/{name}" for name, wnid in annotations.items() if wnid in set(holdout)]
    val = _pick(val, cfg["subset"]["ood"], _rng(cfg["split_seed"], "tin_holdout"))
    sets = {
        "outliers": {"x": decode_all([(n, files[n]) for n in outliers], SIZE, desc="decode outliers")},
        "tin_holdout": {"x": decode_all([(n, files[n]) for n in val], SIZE, desc="decode tin_holdout")},
    }
    prov = {
        "outliers": {"source": "tinyimagenet32", "classes": outlier_classes, "members": outliers},
        "tin_holdout": {"source": "tinyimagenet32", "classes": holdout, "members": val},
    }
    return sets, prov


def _textures(fetch: Fetch, cfg: dict) -> tuple[dict, dict]:
    files = _read(fetch, "dtd10")
    chosen = _pick(list(files), cfg["subset"]["ood"], _rng(cfg["split_seed"], "textures"))
    x = decode_all([(n, files[n]) for n in chosen], SIZE, resize=True, desc="decode textures")
    return {"x": x}, {"source": "dtd10 (Resize(32) + CenterCrop(32))", "members": chosen}


def _digits(cfg: dict) -> tuple[dict, dict]:
    from sklearn.datasets import load_digits

    images = load_digits().images  # (1797, 8, 8), 0..16
    idx = np.asarray(sorted(_pick(list(range(len(images))), cfg["subset"]["ood"], _rng(cfg["split_seed"], "digits"))))
    grey = np.clip(np.rint(images[idx] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    up = np.stack([np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.BILINEAR)) for g in grey])
    return {"x": np.repeat(up[:, None], 3, axis=1)}, {"source": "sklearn.datasets.load_digits, bilinear 8->32, grey->RGB",
                                                      "indices": idx.tolist()}


def build(cfg: dict, fetch: Fetch) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Return ``{set name: {"x": uint8 (N, 3, 32, 32), "y": int64}}`` and the manifest."""
    sets, prov, classes = _cifar(fetch, cfg)
    tin_sets, tin_prov = _tinyimagenet(fetch, cfg)
    sets["outliers"], prov["outliers"] = tin_sets["outliers"], tin_prov["outliers"]
    for name in cfg["ood_sets"]:
        if name == "tin_holdout":
            sets[name], prov[name] = tin_sets[name], tin_prov[name]
        elif name == "textures":
            sets[name], prov[name] = _textures(fetch, cfg)
        elif name == "digits":
            sets[name], prov[name] = _digits(cfg)
        elif name in SYNTHETIC_SETS:
            sets[name] = {"x": synthetic(name, cfg["subset"]["ood"], (3, SIZE, SIZE), _rng(cfg["split_seed"], name))}
            prov[name] = {"source": f"synthetic {name} (OE paper), numpy seed [{cfg['split_seed']}, crc32({name!r})]"}
        else:
            raise DatasetError(f"unknown OOD set {name!r} for cifar10-mini; valid: {list(OOD_SETS)}")
    for arrays in sets.values():
        arrays.setdefault("y", np.full(len(arrays["x"]), -1, dtype=np.int64))
    manifest = {
        "benchmark": "cifar10-mini",
        "num_classes": len(classes),
        "in_channels": 3,
        "class_names": classes,
        "ood_sets": list(cfg["ood_sets"]),
        "sources": {name: {"archive_sha256": get_source(name).archive_sha256,
                           "tree_sha256": get_source(name).tree_sha256,
                           "origin": list(get_source(name).urls)}
                    for name in ("cifar10-jpg", "tinyimagenet32", "dtd10")},
        "sets": prov,
    }
    return sets, manifest

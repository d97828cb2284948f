"""The paper's ImageNet benchmark, `imagenet` (Table 1, last column).

* ID: ImageNet-1k (ILSVRC-2012) from a folder the user provides (licence: no download), in
  torchvision's ImageFolder layout ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.
* Auxiliary outliers: ImageNet-21k-P (the user's folder of ``<wnid>/*`` class folders) minus
  every class of ImageNet-1k; ``subset.outliers`` images, chosen by name rank. The release
  unpacks to ``imagenet21k_resized/{imagenet21k_train, imagenet21k_val}/<wnid>/`` and the
  authors read ``imagenet21k_train``: a root holding it is read there (:func:`outlier_root`),
  and a root in which no ImageNet-1k class is found is refused, since removing none would be silent.
* Test OOD: the MOS sets ``inaturalist``, ``sun``, ``places`` and ``textures`` (DTD),
  ``ood_count`` each (the paper: 10,000; DTD has 5,640).
* Transform: ``Resize(resize)`` + ``CenterCrop(crop)`` (256 / 224), no augmentation (paper).

ID and outlier sets are file lists decoded lazily (``ImageFiles``: 1.28M images do not fit in
memory); the OOD sets are decoded once into uint8 arrays. The folders are found from
``data.roots`` in params.yaml, else ``$FSOOD_IMAGENET_ROOT`` / ``$FSOOD_IMAGENET21K_ROOT``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .cifar_paper import IMAGE_SUFFIXES, smallest_by_name
from .errors import DatasetError
from .image_files import list_images
from .images import decode_all
from .readers import iter_members
from .sources import get_source

log = logging.getLogger(__name__)

Fetch = Callable[[str], Path]
ROOT_ENV = {"imagenet": "FSOOD_IMAGENET_ROOT", "imagenet21k": "FSOOD_IMAGENET21K_ROOT"}
OOD_SOURCES = {"inaturalist": "mos-inaturalist", "sun": "mos-sun", "places": "mos-places", "textures": "dtd"}
RELEASE_TRAIN = "imagenet21k_train"  # the imagenet21k_resized release's training folder, which the authors read


def resolve_root(cfg: dict, key: str) -> Path:
    """A user-provided dataset folder: params' ``data.roots.<key>``, else its environment variable."""
    given = cfg["roots"].get(key) or os.environ.get(ROOT_ENV[key])
    what = {"imagenet": "ImageNet-1k (train/<wnid>/, val/<wnid>/)",
            "imagenet21k": f"ImageNet-21k-P (imagenet21k_resized/, or its {RELEASE_TRAIN}/ of <wnid>/ folders)"}[key]
    if not given:
        raise DatasetError(
            f"{what} cannot be downloaded (licence): set benchmarks.imagenet.data.roots.{key} in "
            f"params.yaml or the environment variable {ROOT_ENV[key]} to the folder that holds it"
        )
    root = Path(given).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{what}: {root} (from data.roots.{key} / {ROOT_ENV[key]}) is not a folder")
    return root.resolve()


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (expected one sub-folder per class)")
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def outlier_root(root: Path, imagenet1k: set[str]) -> Path:
    """The folder of ImageNet-21K-P's class folders: ``root``, or its ``imagenet21k_train`` (the release's layout).

    Refused: a root whose release folder lies deeper (the message names it), and a root where no
    ImageNet-1k class is found, from which no class would be removed.
    """
    where = f"benchmarks.imagenet.data.roots.imagenet21k in params.yaml (or {ROOT_ENV['imagenet21k']})"
    if (root / RELEASE_TRAIN).is_dir():
        log.info("%s holds the imagenet21k_resized release: reading its %s/, as the authors do", root, RELEASE_TRAIN)
        root = root / RELEASE_TRAIN
    else:
        deeper = sorted(p for p in root.glob(f"*/{RELEASE_TRAIN}") if p.is_dir())
        if deeper:
            raise DatasetError(f"{root}: no ImageNet-21K-P class folders here, but {deeper[0]} is the release's "
                               f"training folder: set {where} to it")
    classes = _class_folders(root)
    if not imagenet1k & set(classes):
        shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
        raise DatasetError(
            f"{root}: none of its {len(classes)} class folders ({shown or 'none'}) is an ImageNet-1k class, so no "
            f"ImageNet-1k class would be removed from the outliers. Set {where} to the folder of ImageNet-21K-P's "
            f"<wnid>/ class folders: imagenet21k_resized/{RELEASE_TRAIN} in the release")
    return root


def _id_split(root: Path, split: str, classes: list[str], cap: int | None, seed: int) -> dict:
    relpaths, labels = [], []
    for label, wnid in enumerate(classes):
        files = [f"{split}/{wnid}/{rel}" for rel in list_images(root / split / wnid)]
        if cap is not None:
            per_class = max(cap // len(classes), 1)
            files = [n for n, _ in smallest_by_name(((f, b"") for f in files), per_class, seed, f"id_{split}")]
        relpaths += files
        labels += [label] * len(files)
    if not relpaths:
        raise DatasetError(f"{root / split}: no images")
    return {"files": relpaths, "root": str(root), "y": np.asarray(labels, dtype=np.int64)}


def _outliers(root: Path, exclude: set[str], cap: int | None, seed: int) -> tuple[dict, dict]:
    classes = [c for c in _class_folders(root) if c not in exclude]
    if not classes:
        raise DatasetError(f"{root}: no ImageNet-21k-P class left after removing the ImageNet-1k classes")
    names = (f"{wnid}/{rel}" for wnid in classes for rel in list_images(root / wnid))
    if cap is None:
        files = sorted(names)
    else:
        files = [n for n, _ in smallest_by_name(((n, b"") for n in names), cap, seed, "outliers")]
    arrays = {"files": files, "root": str(root), "y": np.full(len(files), -1, dtype=np.int64)}
    return arrays, {"classes": len(classes), "removed_imagenet1k_classes": len(exclude & set(_class_folders(root)))}


def _ood(fetch: Fetch, name: str, cfg: dict) -> tuple[dict, dict]:
    source = get_source(OOD_SOURCES[name])
    members = iter_members(source, fetch(source.name), lambda rel: rel.lower().endswith(IMAGE_SUFFIXES))
    chosen = smallest_by_name(members, cfg["ood_count"], cfg["split_seed"], name)
    if not chosen:
        raise DatasetError(f"{source.filename}: no images for OOD set {name!r}")
    x = decode_all(chosen, cfg["crop"], resize=cfg["resize"], desc=f"decode {name}")
    return {"x": x}, {"source": source.name, "members": [n for n, _ in chosen],
                      "transform": f"Resize({cfg['resize']}) + CenterCrop({cfg['crop']})"}


def build(cfg: dict, fetch: Fetch) -> tuple[dict, dict]:
    """File lists for id_train / id_test / outliers, uint8 arrays for the OOD sets, and the manifest."""
    seed = cfg["split_seed"]
    root = resolve_root(cfg, "imagenet")
    classes = _class_folders(root / "train")
    if _class_folders(root / "val") != classes:
        raise DatasetError(f"{root}: train/ and val/ hold different class folders (val must be sorted into "
                           f"<wnid>/ folders, as torchvision's ImageFolder expects)")
    sets = {"id_train": _id_split(root, "train", classes, cfg["subset"]["id_train"], seed),
            "id_test": _id_split(root, "val", classes, cfg["subset"]["id_test"], seed)}
    prov = {"id_train": {"source": "imagenet-1k (user path)", "split": "train"},
            "id_test": {"source": "imagenet-1k (user path)", "split": "val"}}
    outliers = outlier_root(resolve_root(cfg, "imagenet21k"), set(classes))
    sets["outliers"], prov["outliers"] = _outliers(outliers, set(classes), cfg["subset"]["outliers"], seed)
    prov["outliers"]["source"] = "imagenet-21k-p (user path)"
    for name in [*cfg["ood_sets"], *cfg["hard_ood_sets"]]:
        if name not in OOD_SOURCES:
            raise DatasetError(f"unknown OOD set {name!r} for imagenet; valid: {sorted(OOD_SOURCES)}")
        sets[name], prov[name] = _ood(fetch, name, cfg)
        sets[name]["y"] = np.full(len(sets[name]["x"]), -1, dtype=np.int64)
    for key in ("id_train", "id_test", "outliers"):
        prov[key]["transform"] = f"Resize({cfg['resize']}) + CenterCrop({cfg['crop']}), decoded per batch"
    manifest = {
        "benchmark": "imagenet",
        "num_classes": len(classes),
        "in_channels": 3,
        "class_names": classes,
        "image_size": cfg["crop"],
        "resize": cfg["resize"],
        "ood_sets": list(cfg["ood_sets"]),
        "hard_ood_sets": list(cfg["hard_ood_sets"]),
        "sets": prov,
    }
    return sets, manifest

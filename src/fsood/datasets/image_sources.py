"""Labelled image collections a declared benchmark reads its sets from.

Three kinds, all answering ``splits()``, ``members(split) -> [(name, class)]`` and
``load(names, size, resize)``:

* a registry source (``sources.yaml``) with an image ``layout``, read from its verified archive:
  ``imagefolder`` (``<split>/<class>/**/<image>``, torchvision's ImageFolder below each split) or
  ``tinyimagenet`` (ImageFolder, except that a split folder holding ``<split>_annotations.txt``
  takes its labels from that file's first two columns, file name and class, for the images in
  ``<split>/images/``);
* a user folder in ImageFolder layout, ``<root>/<split>/<class>/**/<image>``;
* ``sklearn-digits``: scikit-learn's 1,797 handwritten digits (classes ``"0"``..``"9"``, one
  split ``all``), 0..16 scaled to 0..255, grey copied to RGB.

Member names are sorted bytewise; a member's class is a folder name (or annotation).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DatasetError
from .image_files import IMAGE_SUFFIXES
from .images import decode, decode_all, resize_center_crop
from .readers import iter_members
from .sources import LAYOUTS, get_source, sources

Fetch = Callable[[str], Path]  # source name -> verified local archive


def _is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_SUFFIXES)


def _unknown_split(what: str, split: str, found) -> DatasetError:
    return DatasetError(f"{what} has no split {split!r} (its splits: {sorted(found)})")


class ArchiveImages:
    """A registry source's images, read in one pass over its archive (only the splits asked for)."""

    def __init__(self, name: str, fetch: Fetch, splits: set[str]):
        self.name, self.source = name, get_source(name)
        if self.source.layout not in LAYOUTS:
            raise DatasetError(
                f"source {name!r} is not an image collection (no layout in the registry); "
                f"image sources: {sorted(n for n, s in sources().items() if s.layout)}")
        self.found: set[str] = set()  # the archive's top folders under the data members: its splits

        def wanted(rel: str) -> bool:
            top = rel.split("/")[0]
            if "/" in rel:
                self.found.add(top)
            return top in splits

        self.files = dict(iter_members(self.source, fetch(name), wanted))

    def splits(self) -> list[str]:
        return sorted(self.found)

    def members(self, split: str) -> list[tuple[str, str]]:
        prefix = f"{split}/"
        if split not in self.found:
            raise _unknown_split(f"source {self.name!r}", split, self.found)
        labels = f"{split}/{split}_annotations.txt"
        if self.source.layout == "tinyimagenet" and labels in self.files:
            rows = (line.split("\t")[:2] for line in self.files[labels].decode().splitlines() if line)
            members = sorted((f"{split}/images/{file}", cls) for file, cls in rows)
            absent = [m for m, _ in members if m not in self.files]
            if absent:
                raise DatasetError(f"source {self.name!r}: {labels} names {len(absent)} image(s) the archive "
                                   f"lacks, e.g. {absent[:3]}")
            return members
        names = sorted(rel for rel in self.files if rel.startswith(prefix))
        return [(rel, rel.split("/")[1]) for rel in names if rel.count("/") >= 2 and _is_image(rel)]

    def load(self, names: list[str], size: int, resize, desc: str) -> np.ndarray:
        return decode_all([(n, self.files[n]) for n in names], size, resize, desc=desc)


class FolderImages:
    """A user folder in ImageFolder layout: ``<root>/<split>/<class>/**/<image>``."""

    def __init__(self, root: Path, where: str):
        self.root, self.where = root, where
        if not root.is_dir():
            raise DatasetError(f"{where}: folder {str(root)!r} does not exist")
        self.found = sorted(p.name for p in root.iterdir() if p.is_dir())

    def splits(self) -> list[str]:
        return self.found

    def members(self, split: str) -> list[tuple[str, str]]:
        folder = self.root / split
        if not folder.is_dir():
            raise _unknown_split(f"{self.where}: folder {str(self.root)!r}", split, self.found)
        loose = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_image(p.name))
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if loose or not classes:
            raise DatasetError(
                f"{self.where}: {folder} is not in ImageFolder layout (<root>/<split>/<class>/<image>): "
                + (f"images directly in the split folder, e.g. {loose[:3]}" if loose else "no class folders"))
        out = []
        for cls in classes:
            for dirpath, dirnames, filenames in os.walk(folder / cls):
                dirnames.sort()
                rel_dir = Path(dirpath).relative_to(self.root).as_posix()
                out += [(f"{rel_dir}/{f}", cls) for f in filenames if _is_image(f)]
        return sorted(out)

    def load(self, names: list[str], size: int, resize, desc: str) -> np.ndarray:
        out = np.empty((len(names), 3, size, size), dtype=np.uint8)
        for i, name in enumerate(names):
            path = self.root / name
            out[i] = decode(path.read_bytes(), str(path), size, resize)
        return out


class SklearnDigits:
    """scikit-learn's handwritten digits (8x8 grey), members ``"0000"``..``"1796"``."""

    name = "sklearn-digits"

    def __init__(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images, self.targets = digits.images, digits.target  # (1797, 8, 8) in 0..16

    def splits(self) -> list[str]:
        return ["all"]

    def members(self, split: str) -> list[tuple[str, str]]:
        if split != "all":
            raise _unknown_split(f"source {self.name!r}", split, ["all"])
        return [(f"{i:04d}", str(t)) for i, t in enumerate(self.targets)]

    def load(self, names: list[str], size: int, resize, desc: str) -> np.ndarray:
        idx = np.asarray([int(n) for n in names], dtype=np.int64)
        grey = np.clip(np.rint(self.images[idx] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        out = np.empty((len(idx), 3, size, size), dtype=np.uint8)
        for i, g in enumerate(grey):
            img = Image.fromarray(g)
            img = img if resize is False else resize_center_crop(img, size, None if resize is True else resize)
            if img.size != (size, size):
                raise DatasetError(f"{self.name}/{names[i]}: image is {img.size[0]}x{img.size[1]}, "
                                   f"expected {size}x{size} (resize: none)")
            out[i] = np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
        return out


BUILTIN = {"sklearn-digits": SklearnDigits}


def open_source(name: str, fetch: Fetch, splits: set[str]):
    """A registry image source or a built-in one, by name; ``DatasetError`` listing both when unknown."""
    if name in BUILTIN:
        return BUILTIN[name]()
    registry = sources()
    if name not in registry:
        images = sorted(n for n, s in registry.items() if s.layout)
        raise DatasetError(f"unknown image source {name!r}; registry image sources: {images}, "
                           f"built in: {sorted(BUILTIN)} (or give a folder: in ImageFolder layout)")
    return ArchiveImages(name, fetch, splits)

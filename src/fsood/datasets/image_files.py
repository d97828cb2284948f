"""Image sets too large to hold in memory (ImageNet): a file list decoded batch by batch.

``ImageFiles(root, relpaths, size, resize)[indices]`` decodes the chosen files into a uint8
(n, 3, size, size) array with torchvision's ``Resize(resize)`` + ``CenterCrop(size)`` (the
paper's ImageNet transform, 256 / 224, no augmentation). ``fsood.train`` takes such an object
wherever it takes an array: it indexes a batch on the host and copies it to the device.
Decoding runs on a thread pool (PIL releases the GIL while it decodes and resizes).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .images import decode
from .errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted POSIX paths relative to it."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(folder)
        found += [(rel_dir / f).as_posix() for f in filenames if f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def list_sha256(relpaths: list[str], labels: np.ndarray) -> str:
    """Hash of a file list with its labels (what the manifest records for a lazy set)."""
    digest = hashlib.sha256()
    for rel, label in zip(relpaths, labels.tolist()):
        digest.update(f"{rel}\t{label}\n".encode())
    return digest.hexdigest()


class ImageFiles:
    """A lazily decoded image set: ``len()``, ``shape``, and ``x[indices] -> uint8 (n, 3, size, size)``."""

    def __init__(self, root: str | Path, relpaths: list[str], size: int, resize: int | None = None,
                 workers: int | None = None):
        self.root = Path(root)
        self.relpaths = list(relpaths)
        self.size, self.resize = size, resize
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.shape = (len(self.relpaths), 3, size, size)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.relpaths)

    def _one(self, i: int) -> np.ndarray:
        path = self.root / self.relpaths[i]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DatasetError(f"{path}: cannot read ({err}); is the dataset root still where the data stage "
                               f"found it?") from err
        return decode(data, str(path), self.size, self.resize or True)

    def __getitem__(self, indices) -> np.ndarray:
        if isinstance(indices, slice):
            indices = np.arange(len(self))[indices]
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), 3, self.size, self.size), dtype=np.uint8)
        if len(indices) <= 1 or self.workers == 1:
            for j, i in enumerate(indices.tolist()):
                out[j] = self._one(i)
            return out
        with ThreadPoolExecutor(self.workers) as pool:
            for j, img in enumerate(pool.map(self._one, indices.tolist())):
                out[j] = img
        return out

"""The paper's CIFAR benchmarks, `cifar10` and `cifar100` (Table 1, Table 2, Table 5).

* ID: CIFAR-10 / CIFAR-100 from the original *binary* tarballs (plain records, no pickle),
  train and test in full unless ``subset`` caps them (class-balanced).
* Auxiliary outliers: the OE paper's ``300K_random_images.npy`` (Tiny Images), all of it unless
  ``subset.outliers`` caps it.
* Test OOD (the mean of Table 1): ``svhn`` (test split), ``lsun_crop``, ``isun``, ``textures``
  (DTD, all 47 classes), ``places365`` (a fixed pool of ``places365_pool`` images first, as the
  paper's 10,000-image subset); each evaluated on ``ood_count`` images (the paper: 2,000 =
  len(test) // 5 of the OE code, which redraws them every evaluation; here they are fixed).
* Hard OOD (the paper's Table 11, CIFAR-10 only): ``lsun_fix`` and ``imagenet_resize`` (as in
  CSI, Tack et al. 2020), the other CIFAR (``cifar100`` for cifar10, ``cifar10`` for cifar100,
  test split) and ``tin`` (Tiny ImageNet val). ``lsun_resize`` (ODIN's) is available as well.

Images that are not 32x32 go through torchvision's ``Resize(32)`` + ``CenterCrop(32)``.
Which images a set holds is decided by name, not by archive order: each set keeps the
``k`` members whose sha256(seed/set/name) is smallest (one streaming pass, any archive order),
and the chosen names are saved in the manifest, so the selection is the saved index list.
"""
from __future__ import annotations

import hashlib
import heapq
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import registry
from .errors import DatasetError
from .images import decode_all
from .readers import iter_members
from .sources import get_source

SIZE = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
Fetch = Callable[[str], Path]

# CIFAR binary layout: per record, label byte(s) then 3072 pixel bytes (R, G, B planes of 32x32).
CIFAR = {
    "cifar10": {"source": "cifar10-binary", "label_bytes": 1, "label_at": 0, "classes": 10,
                "train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
    "cifar100": {"source": "cifar100-binary", "label_bytes": 2, "label_at": 1, "classes": 100,  # (coarse, fine)
                 "train": ["train.bin"], "test": ["test.bin"]},
}
# OOD sets read from image archives: set -> (registry source, member prefix under the data members)
IMAGE_SETS = {
    "lsun_crop": ("lsun-crop", ""),
    "isun": ("isun", ""),
    "textures": ("dtd", ""),
    "places365": ("places365", ""),
    "lsun_resize": ("lsun-resize", ""),
    "lsun_fix": ("lsun-fix", ""),
    "imagenet_resize": ("imagenet-resize", ""),
    "tin": ("tiny-imagenet-200", "val/images/"),
}
MAIN_OOD = ("svhn", "lsun_crop", "isun", "textures", "places365")
HARD_OOD = ("lsun_fix", "imagenet_resize", "cifar10", "cifar100", "tin", "lsun_resize")


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _choose(n: int, count: int | None, seed: int, purpose: str) -> np.ndarray:
    """Sorted indices of ``count`` of ``n`` items (all when count is None or >= n)."""
    if count is None or count >= n:
        return np.arange(n)
    return np.sort(_rng(seed, purpose).choice(n, count, replace=False))


def _rank(seed: int, purpose: str, name: str) -> bytes:
    return hashlib.sha256(f"{seed}/{purpose}/{name}".encode()).digest()


def smallest_by_name(items, k: int, seed: int, purpose: str) -> list[tuple[str, bytes]]:
    """The ``k`` (name, data) pairs whose name ranks first, sorted by name; one pass, O(k) memory."""
    heap: list[tuple[bytes, str, bytes]] = []  # max-heap on rank via negated bytes
    for name, data in items:
        key = bytes(255 - b for b in _rank(seed, purpose, name))
        if len(heap) < k:
            heapq.heappush(heap, (key, name, data))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, name, data))
    return sorted((name, data) for _, name, data in heap)


# --- readers -----------------------------------------------------------------------------

def read_cifar(fetch: Fetch, which: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (x, y), "test": (x, y)} from the binary tarball: uint8 (N, 3, 32, 32), int64."""
    spec = CIFAR[which]
    source = get_source(spec["source"])
    files = dict(iter_members(source, fetch(spec["source"]), wanted=lambda rel: rel.endswith(".bin")))
    record = spec["label_bytes"] + 3 * SIZE * SIZE
    out = {}
    for split in ("train", "test"):
        parts = []
        for name in spec[split]:
            if name not in files:
                raise DatasetError(f"{source.filename}: member {name!r} missing (found {sorted(files)})")
            raw = np.frombuffer(files[name], dtype=np.uint8)
            if raw.size % record:
                raise DatasetError(f"{source.filename}: {name} is {raw.size} bytes, not a multiple of {record}")
            parts.append(raw.reshape(-1, record))
        rows = np.concatenate(parts)
        y = rows[:, spec["label_at"]].astype(np.int64)
        if y.max() >= spec["classes"]:
            raise DatasetError(f"{source.filename}: label {y.max()} out of range for {spec['classes']} classes")
        out[split] = (rows[:, spec["label_bytes"]:].reshape(-1, 3, SIZE, SIZE).copy(), y)
    return out


def _balanced(y: np.ndarray, cap: int | None, classes: int, seed: int, purpose: str) -> np.ndarray:
    if cap is None:
        return np.arange(len(y))
    per_class = cap // classes
    if per_class == 0:
        raise DatasetError(f"subset.{purpose}={cap} is below one image per class ({classes} classes)")
    picks = [np.flatnonzero(y == c)[_choose(int((y == c).sum()), per_class, seed, f"{purpose}/{c}")]
             for c in range(classes)]
    return np.sort(np.concatenate(picks))


def _image_set(fetch: Fetch, name: str, count: int, seed: int, pool: int | None = None) -> tuple[dict, dict]:
    source_name, prefix = IMAGE_SETS[name]
    source = get_source(source_name)

    def wanted(rel: str) -> bool:
        return rel.startswith(prefix) and rel.lower().endswith(IMAGE_SUFFIXES)

    members = iter_members(source, fetch(source_name), wanted)
    prov = {"source": source_name}
    if pool is not None:  # the paper's fixed subset first, then the evaluated images from it
        members = smallest_by_name(members, pool, seed, f"{name}/pool")
        prov["pool"] = [n for n, _ in members]
    chosen = smallest_by_name(members, count, seed, name)
    if not chosen:
        raise DatasetError(f"{source.filename}: no images under {prefix or 'the data members'} for set {name!r}")
    x = decode_all(chosen, SIZE, resize=True, desc=f"decode {name}")
    prov.update(members=[n for n, _ in chosen], transform="Resize(32) + CenterCrop(32) where not 32x32")
    return {"x": x}, prov


def _svhn(fetch: Fetch, count: int, seed: int) -> tuple[dict, dict]:
    mat = registry.load_mat(fetch("svhn-test"))
    x = np.asarray(mat["X"])  # (32, 32, 3, N): H, W, C, N
    if x.ndim != 4 or x.shape[:3] != (SIZE, SIZE, 3):
        raise DatasetError(f"svhn-test: X has shape {x.shape}, expected (32, 32, 3, N)")
    idx = _choose(x.shape[3], count, seed, "svhn")
    return {"x": np.ascontiguousarray(x[..., idx].transpose(3, 2, 0, 1)).astype(np.uint8)}, {
        "source": "svhn-test", "indices": idx.tolist()}


def _outliers(fetch: Fetch, count: int | None, seed: int) -> tuple[dict, dict]:
    arr = registry.load_npy(fetch("tiny-images-300k"))  # (N, 32, 32, 3) uint8, memory-mapped
    if arr.ndim != 4 or arr.shape[1:] != (SIZE, SIZE, 3) or arr.dtype != np.uint8:
        raise DatasetError(f"tiny-images-300k: array {arr.shape} {arr.dtype}, expected (N, 32, 32, 3) uint8")
    idx = _choose(len(arr), count, seed, "outliers")
    prov = {"source": "tiny-images-300k", "count": int(len(idx))}
    if len(idx) < len(arr):
        prov["indices"] = idx.tolist()
    return {"x": np.ascontiguousarray(arr[idx].transpose(0, 3, 1, 2))}, prov


def build(benchmark: str, cfg: dict, fetch: Fetch) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """``cifar10`` or ``cifar100``: every set as uint8 (N, 3, 32, 32) and the manifest."""
    if benchmark not in CIFAR:
        raise DatasetError(f"unknown CIFAR benchmark {benchmark!r}; valid: {sorted(CIFAR)}")
    seed, count, classes = cfg["split_seed"], cfg["ood_count"], CIFAR[benchmark]["classes"]
    own = read_cifar(fetch, benchmark)
    sets, prov = {}, {}
    for split, key in (("train", "id_train"), ("test", "id_test")):
        x, y = own[split]
        idx = _balanced(y, cfg["subset"][key], classes, seed, key)
        sets[key] = {"x": x[idx], "y": y[idx]}
        prov[key] = {"source": CIFAR[benchmark]["source"], "split": split}
        if len(idx) < len(y):
            prov[key]["indices"] = idx.tolist()
    sets["outliers"], prov["outliers"] = _outliers(fetch, cfg["subset"]["outliers"], seed)
    for name in [*cfg["ood_sets"], *cfg["hard_ood_sets"]]:
        if name == benchmark:
            raise DatasetError(f"{name!r} is the in-distribution set of benchmark {benchmark!r}, not an OOD set")
        if name == "svhn":
            sets[name], prov[name] = _svhn(fetch, count, seed)
        elif name in CIFAR:
            x, _ = read_cifar(fetch, name)["test"]
            idx = _choose(len(x), count, seed, name)
            sets[name], prov[name] = {"x": x[idx]}, {"source": CIFAR[name]["source"], "split": "test",
                                                    "indices": idx.tolist()}
        elif name in IMAGE_SETS:
            pool = cfg["places365_pool"] if name == "places365" else None
            sets[name], prov[name] = _image_set(fetch, name, count, seed, pool)
        else:
            raise DatasetError(f"unknown OOD set {name!r}; valid: {sorted({*MAIN_OOD, *HARD_OOD})}")
    for arrays in sets.values():
        arrays.setdefault("y", np.full(len(arrays["x"]), -1, dtype=np.int64))
    manifest = {
        "benchmark": benchmark,
        "num_classes": classes,
        "in_channels": 3,
        "ood_sets": list(cfg["ood_sets"]),
        "hard_ood_sets": list(cfg["hard_ood_sets"]),
        "sets": prov,
    }
    return sets, manifest

"""The `digits` benchmark: every set built from data that ships inside scikit-learn.

* ID: handwritten digits of ``id_classes`` (0-4), a fixed stratified train/test split.
* Test OOD: ``digits_5_9`` (the held-out digit classes, near-OOD), ``photo_china``
  (patches of scikit-learn's china.jpg), and the OE paper's synthetic sets
  ``gaussian``, ``rademacher`` and ``blobs`` (far-OOD).
* Auxiliary outliers: patches of flower.jpg, a source disjoint from every test set.

Images are stored as uint8 (N, 1, 8, 8); digit intensities 0..16 map to 0..255.
A smoke-scale analog: its numbers say nothing about CIFAR.
"""
from __future__ import annotations

import numpy as np

from .synthetic import synthetic

SIDE = 8
DIGIT_BLOBS = {"sigma": (0.0, 0.7, 0.7), "mode": "reflect"}  # 2-D smoothing at 8x8


def _to_uint8(x: np.ndarray, vmax: float) -> np.ndarray:
    return np.clip(np.rint(x * (255.0 / vmax)), 0, 255).astype(np.uint8)


def _photo_patches(photo: np.ndarray, n: int, patch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n grey patches (patch x patch, area-averaged to 8x8, contrast-stretched) and their corners."""
    patch -= patch % SIDE
    grey = photo.astype(np.float64).mean(axis=2)
    rows = rng.integers(0, grey.shape[0] - patch + 1, size=n)
    cols = rng.integers(0, grey.shape[1] - patch + 1, size=n)
    idx_r = rows[:, None] + np.arange(patch)
    idx_c = cols[:, None] + np.arange(patch)
    crops = grey[idx_r[:, :, None], idx_c[:, None, :]]  # (n, patch, patch)
    k = patch // SIDE
    small = crops.reshape(n, SIDE, k, SIDE, k).mean(axis=(2, 4))
    lo = small.min(axis=(1, 2), keepdims=True)
    hi = small.max(axis=(1, 2), keepdims=True)
    stretched = (small - lo) / np.maximum(hi - lo, 1e-9)
    return _to_uint8(stretched, 1.0)[:, None], np.stack([rows, cols], axis=1)


def build(cfg: dict) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Return ``{set name: {"x": uint8 array, "y": int64 labels}}`` and the manifest."""
    from sklearn.datasets import load_digits, load_sample_images
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(cfg["split_seed"])
    digits = load_digits()
    images, targets = digits.images, digits.target
    id_classes = list(cfg["id_classes"])
    remap = {c: i for i, c in enumerate(id_classes)}
    id_idx = np.flatnonzero(np.isin(targets, id_classes))
    train_idx, test_idx = train_test_split(
        id_idx, test_size=cfg["test_fraction"], stratify=targets[id_idx], random_state=cfg["split_seed"]
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    ood_digit_idx = np.flatnonzero(~np.isin(targets, id_classes))

    def digit_set(idx: np.ndarray, labelled: bool) -> dict[str, np.ndarray]:
        y = np.array([remap[t] for t in targets[idx]]) if labelled else np.full(idx.size, -1)
        return {"x": _to_uint8(images[idx], 16.0)[:, None], "y": y.astype(np.int64)}

    photos = dict(zip(("china", "flower"), load_sample_images().images))
    sets: dict[str, dict[str, np.ndarray]] = {
        "id_train": digit_set(train_idx, True),
        "id_test": digit_set(test_idx, True),
    }
    provenance: dict[str, dict] = {
        "id_train": {"source": "sklearn.datasets.load_digits", "indices": train_idx.tolist()},
        "id_test": {"source": "sklearn.datasets.load_digits", "indices": test_idx.tolist()},
    }
    x_out, corners = _photo_patches(photos["flower"], cfg["n_outliers"], cfg["patch_size"], rng)
    sets["outliers"] = {"x": x_out, "y": np.full(len(x_out), -1, dtype=np.int64)}
    provenance["outliers"] = {"source": "sklearn sample image flower.jpg", "patch_corners": corners.tolist()}

    for name in cfg["ood_sets"]:
        if name == "digits_5_9":
            sets[name] = digit_set(ood_digit_idx, False)
            provenance[name] = {"source": "sklearn.datasets.load_digits", "indices": ood_digit_idx.tolist()}
        elif name == "photo_china":
            x, corners = _photo_patches(photos["china"], cfg["n_ood"], cfg["patch_size"], rng)
            sets[name] = {"x": x, "y": np.full(len(x), -1, dtype=np.int64)}
            provenance[name] = {"source": "sklearn sample image china.jpg", "patch_corners": corners.tolist()}
        else:
            x = synthetic(name, cfg["n_ood"], (1, SIDE, SIDE), rng, blobs=DIGIT_BLOBS)
            sets[name] = {"x": x, "y": np.full(len(x), -1, dtype=np.int64)}
            provenance[name] = {"source": f"synthetic {name} (OE paper), numpy PCG64 seed {cfg['split_seed']}"}

    manifest = {
        "benchmark": "digits",
        "num_classes": len(id_classes),
        "in_channels": 1,
        "class_names": [str(c) for c in id_classes],
        "ood_sets": list(cfg["ood_sets"]),
        "sets": provenance,
    }
    return sets, manifest

"""Benchmark datasets: every set of a benchmark materialised as uint8 arrays.

A benchmark is either declared in params.yaml from parts (``declared``: any name) or, where a
format needs code of its own (the paper's CIFAR binaries, ImageNet's file lists, the digits
analog), made by a builder chosen by name (``BUILDERS``).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from fsood.io import atomic_path, load_npz, read_json, save_npz, write_json, write_text
from fsood.records import BENCHMARK_RECORDS

from . import cifar_paper, declared, digits, imagenet, registry
from .image_files import ImageFiles, list_sha256

# name -> build(data cfg, fetch) -> (sets, manifest); fetch(source name) -> verified archive.
# A set is {"x": uint8 (N, C, H, W), "y": int64} or, too large for memory (ImageNet),
# {"files": [relative paths], "root": folder, "y": int64}: a list decoded lazily (ImageFiles).
_BUILD = {  # fsood.records' builder name -> build(benchmark, cfg, fetch)
    "digits": lambda benchmark, cfg, fetch: digits.build(cfg),
    "cifar_paper": cifar_paper.build,
    "imagenet": lambda benchmark, cfg, fetch: imagenet.build(cfg, fetch),
}
BUILDERS = {b.name: functools.partial(_BUILD[b.builder], b.name) for b in BENCHMARK_RECORDS}


def _array_sha256(arrays: dict) -> str:
    """sha256 of x's bytes then y's (what the manifest records), without a copy of either: every job that
    reads a set verifies it, and cifar10-mini's ID-train and outlier arrays hold 350 MB."""
    digest = hashlib.sha256()
    for key in ("x", "y"):
        digest.update(memoryview(np.ascontiguousarray(arrays[key])).cast("B"))
    return digest.hexdigest()


def materialize(benchmark: str, cfg: dict, out_dir: str | Path, datasets_cfg: dict | None = None) -> dict:
    """Build the benchmark's sets and write ``<set>.npz`` + ``manifest.json`` atomically.

    ``datasets_cfg`` ({mirrors, download_dir}) says where archives are looked up and saved.
    """
    if not declared.is_declared(cfg) and benchmark not in BUILDERS:
        raise ValueError(f"benchmark {benchmark!r} has no builder (builders: {sorted(BUILDERS)}) and its data "
                         f"section declares no sets (no 'id' key)")
    datasets_cfg = datasets_cfg or {"mirrors": [], "download_dir": "data/downloads"}

    fetched: dict[str, dict] = {}

    def fetch(source: str) -> Path:
        src = registry.get_source(source)
        path = registry.fetch(src, datasets_cfg["mirrors"], datasets_cfg["download_dir"])
        if source not in fetched:  # what was read, with the hash of the very bytes (DVC records it)
            fetched[source] = {"file": src.filename, "origin": list(src.urls),
                               "sha256": registry.recorded_sha256(src, path)}
        return path

    if declared.is_declared(cfg):
        sets, manifest = declared.build(benchmark, cfg, fetch)
    else:
        sets, manifest = BUILDERS[benchmark](cfg, fetch)
    if fetched:
        manifest.setdefault("sources", fetched)
    for name, arrays in sets.items():
        if "files" in arrays:
            manifest["sets"][name].update(
                kind="files", count=len(arrays["files"]), root=arrays["root"],
                shape=[3, manifest["image_size"], manifest["image_size"]], resize=manifest["resize"],
                sha256=list_sha256(arrays["files"], arrays["y"]),
            )
        else:
            manifest["sets"][name].update(count=len(arrays["x"]), shape=list(arrays["x"].shape[1:]),
                                          sha256=_array_sha256(arrays))
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, arrays in sets.items():
            if "files" in arrays:
                write_text(tmp / f"{name}.tsv", "".join(
                    f"{rel}\t{label}\n" for rel, label in zip(arrays["files"], arrays["y"].tolist())))
            else:
                save_npz(tmp / f"{name}.npz", arrays)
        write_json(tmp / "manifest.json", manifest)
    return manifest


class BenchmarkData:
    """Read access to a materialised benchmark folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.folder}: no manifest.json; run the data stage first")
        self.manifest = read_json(manifest_path)
        self.num_classes = self.manifest["num_classes"]
        self.in_channels = self.manifest["in_channels"]
        self.ood_sets = self.manifest["ood_sets"]
        self.normalize = self.manifest.get("normalize")  # declared benchmarks record it, given or computed

    def load(self, name: str) -> tuple[np.ndarray | ImageFiles, np.ndarray]:
        """``(x, y)``: x a uint8 array, or an ``ImageFiles`` list for a set decoded lazily."""
        info = self.manifest["sets"][name]
        if info.get("kind") == "files":
            path = self.folder / f"{name}.tsv"
            rows = [line.split("\t") for line in path.read_text().splitlines()]
            files, y = [r[0] for r in rows], np.asarray([int(r[1]) for r in rows], dtype=np.int64)
            digest = list_sha256(files, y)
            x = ImageFiles(info["root"], files, info["shape"][-1], info["resize"])
        else:
            path = self.folder / f"{name}.npz"
            arrays = load_npz(path)
            x, y, digest = arrays["x"], arrays["y"], _array_sha256(arrays)
        if digest != info["sha256"]:
            raise ValueError(
                f"{path}: content hash {digest} does not match the manifest ({info['sha256']}); rerun the data stage"
            )
        return x, y

"""Benchmark datasets: builders that materialise every set of a benchmark as uint8 arrays."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fsood.io import atomic_path, load_npz, read_json, save_npz, write_json

from . import cifar10_mini, digits, registry

# name -> build(data cfg, fetch) -> (sets, manifest); fetch(source name) -> verified archive
BUILDERS = {
    "digits": lambda cfg, fetch: digits.build(cfg),
    "cifar10-mini": cifar10_mini.build,
}


def materialize(benchmark: str, cfg: dict, out_dir: str | Path, datasets_cfg: dict | None = None) -> dict:
    """Build the benchmark's sets and write ``<set>.npz`` + ``manifest.json`` atomically.

    ``datasets_cfg`` ({mirrors, download_dir}) says where archives are looked up and saved.
    """
    if benchmark not in BUILDERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {sorted(BUILDERS)}")
    datasets_cfg = datasets_cfg or {"mirrors": [], "download_dir": "data/downloads"}

    def fetch(source: str) -> Path:
        return registry.fetch(registry.get_source(source), datasets_cfg["mirrors"], datasets_cfg["download_dir"])

    sets, manifest = BUILDERS[benchmark](cfg, fetch)
    for name, arrays in sets.items():
        manifest["sets"][name].update(
            count=len(arrays["x"]),
            shape=list(arrays["x"].shape[1:]),
            sha256=hashlib.sha256(arrays["x"].tobytes() + arrays["y"].tobytes()).hexdigest(),
        )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, arrays in sets.items():
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

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = load_npz(self.folder / f"{name}.npz")
        digest = hashlib.sha256(arrays["x"].tobytes() + arrays["y"].tobytes()).hexdigest()
        if digest != self.manifest["sets"][name]["sha256"]:
            raise ValueError(
                f"{self.folder / (name + '.npz')}: content hash {digest} does not match the manifest "
                f"({self.manifest['sets'][name]['sha256']}); rerun the data stage"
            )
        return arrays["x"], arrays["y"]

"""Per-cell provenance: what a benchmark cell was built from and with, next to its metrics.

The score stage writes ``results/<b>/<m>/seed<s>/provenance.json``: library versions, git commit,
device, threads, precision and determinism flags, seeds, the params that define the cell, and the
sha256 of every input file the cell read and of every file it produced. ``fsood rebuild``
(fsood.rebuild) reruns the cell from it and compares the hashes.

The bytes are deterministic (sorted keys, no timestamps, relative paths only), so a rerun on the
same machine and commit writes the same file and ``dvc.lock`` stays clean.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from fsood import paths
from fsood.io import file_sha256
from fsood.config import method_params, score_params
from fsood.evaluation import FIT_SET

FORMAT = 1
# Distributions whose versions can change a cell's numbers (None where not installed).
LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "pillow", "pyyaml", "jsonschema")
BENCHMARK_SECTIONS = ("data", "model", "pretrain", "finetune")


sha256_file = file_sha256  # the name rebuild.py and the tests use


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """fsood, the Python interpreter and LIBRARIES."""
    import fsood

    versions = {"fsood": fsood.__version__, "python": platform.python_version()}
    versions.update({dist: _version(dist) for dist in LIBRARIES})
    return versions


def git_commit(folder: str | Path | None = None) -> str | None:
    """The last commit that touched ``folder`` (default: the running fsood package's source); None
    without git or outside a repository (an installed wheel): never an error.

    Not HEAD: committing dvc.lock and results after a run must not change the record of a rerun
    (``dvc repro -f`` would then leave dvc.lock dirty); code changes do change it."""
    if folder is None:
        folder = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "log", "-1", "--format=%H", "--", "."], cwd=folder, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def cell_params(params: dict, benchmark: str, method: str) -> dict:
    """The params that define one cell: the benchmark's data/model/pretrain/finetune sections, the
    method's and the score's merged params (global values with the benchmark's overrides), runtime."""
    bench = params["benchmarks"][benchmark]
    return {
        "benchmark": {section: bench[section] for section in BENCHMARK_SECTIONS},
        "method": method_params(params, benchmark, method),
        "score": score_params(params, benchmark),
        "runtime": params["runtime"],
    }


def diff_keys(recorded, current, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (a key missing on one side counts)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        keys = sorted(set(recorded) | set(current))
        out = []
        for key in keys:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in recorded or key not in current:
                out.append(where)
            else:
                out.extend(diff_keys(recorded[key], current[key], where))
        return out
    return [] if recorded == current else [prefix or "<root>"]


def _posix(path: Path) -> str:
    return path.as_posix()


def input_files(params: dict, benchmark: str, method: str, seed: int) -> list[Path]:
    """Files the cell's finetune and score stages read (relative to the workspace): the data manifest
    and the set files, the pretrained model and history, and the subspace basis when the method uses
    the pretrained weights."""
    from fsood.datasets import BenchmarkData

    data_dir = Path(paths.DATA_DIR.format(benchmark=benchmark))
    manifest = BenchmarkData(data_dir).manifest
    names = ["id_train", "outliers", "id_test", *manifest["ood_sets"], *manifest.get("hard_ood_sets", []), FIT_SET]
    files = [data_dir / "manifest.json"]
    for name in dict.fromkeys(names):
        kind = manifest["sets"][name].get("kind")
        files.append(data_dir / (f"{name}.tsv" if kind == "files" else f"{name}.npz"))
    pre = paths.files(paths.PRETRAIN_DIR, paths.PRETRAIN_FILES, benchmark=benchmark, seed=seed)
    files += [pre["model"], pre["history"]]
    if method != "none" and method_params(params, benchmark, method).get("weight_source") == "pretrained":
        files.append(paths.files(paths.SUBSPACE_DIR, paths.SUBSPACE_FILES, benchmark=benchmark, seed=seed)["basis"])
    return files


def output_files(benchmark: str, method: str, seed: int) -> list[Path]:
    """The cell's own files: the fine-tuned model and history (finetune) and the cache and metrics (score)."""
    cell = dict(benchmark=benchmark, method=method, seed=seed)
    return [*paths.files(paths.CELL_DIR, paths.FINETUNE_FILES, **cell).values(),
            *(f for key, f in paths.files(paths.CELL_DIR, paths.SCORE_FILES, **cell).items() if key != "provenance")]


def runtime_state(runtime: dict) -> dict:
    """Device, threads and determinism flags as the process has them now (call after runtime.configure)."""
    import torch

    from fsood.runtime import device_type

    device = device_type(runtime["device"])
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
        "cuda": torch.version.cuda if device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "precision": runtime["precision"],
        "channels_last": runtime["channels_last"],
        "determinism": {
            "runtime.deterministic": runtime["deterministic"],
            "torch.are_deterministic_algorithms_enabled": torch.are_deterministic_algorithms_enabled(),
            "cudnn.deterministic": torch.backends.cudnn.deterministic,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.enabled": torch.backends.cudnn.enabled,
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        },
    }


def hashes(files: list[Path]) -> dict[str, str]:
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"provenance: missing file(s) {missing}; run the stages that make them first")
    return {_posix(f): sha256_file(f) for f in files}


def build(params: dict, benchmark: str, method: str, seed: int, fit_subset_seed: int) -> dict:
    """The provenance record of one finished cell (its outputs must exist)."""
    return {
        "format": FORMAT,
        "cell": f"{benchmark}-{method}-{seed}",
        "benchmark": benchmark,
        "method": method,
        "seed": seed,
        "seeds": {"cell": seed, "fit_subset": fit_subset_seed},
        "versions": library_versions(),
        "git_commit": git_commit(),
        "runtime": runtime_state(params["runtime"]),
        "params": cell_params(params, benchmark, method),
        "inputs": hashes(input_files(params, benchmark, method, seed)),
        "outputs": hashes(output_files(benchmark, method, seed)),
    }

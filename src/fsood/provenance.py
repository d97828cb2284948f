"""Per-cell provenance: what a benchmark cell was built from and with, next to its metrics.

The score stage writes ``results/<b>/model<k>/<m>/seed<s>/provenance.json`` (the pretrained model's own cell,
``results/<b>/model<k>/none/``, is written by score_pretrained): library versions, git commit,
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

from fsood import contract
from fsood.io import file_sha256

FORMAT = 3  # 3: cells of benchmark x pretrained model x method x seed; 2: params as {dotted key: value}
# Distributions whose versions can change a cell's numbers (None where not installed).
LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "pillow", "pyyaml", "jsonschema")


def cell_stages(cell: dict) -> tuple[str, ...]:
    """The stages of one cell, which ``fsood rebuild`` reruns: fine-tuning and scoring, or for the pretrained
    model as it is (method ``none``, no seed) its scoring."""
    return ("score_pretrained",) if cell["method"] == contract.NONE else ("finetune", "score")


def cell_of(benchmark: str, pretrain_seed: int, method: str, seed: int | None = None) -> dict:
    """A cell's wildcards as its stages name them (the pretrained model's cell has no fine-tuning seed)."""
    cell = {"benchmark": benchmark, "pretrain_seed": pretrain_seed, "method": method}
    return cell if method == contract.NONE else {**cell, "seed": seed}


def _wildcards(stage: str, cell: dict) -> dict:
    return {w: cell[w] for w in contract.stage(stage).wildcards}


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


def cell_params(params: dict, cell: dict) -> dict:
    """The params that define one cell: ``{dotted key: value}`` of every key the cell's stages declare
    in their contract (fsood.contract)."""
    out: dict = {}
    for name in cell_stages(cell):  # their keys name no seed: every seed of a cell shares its params
        out.update(contract.stage(name).param_values(params, **_wildcards(name, cell)))
    return out


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


def _files(path: Path) -> list[Path]:
    """A file, or every file of a folder output (the data folder), sorted."""
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def input_files(params: dict, cell: dict) -> list[Path]:
    """Files the cell's stages read that no cell stage writes (relative to the workspace), from their
    declared inputs: the data folder's files, the pretrained model, the subspace outputs."""
    own = set(output_files(cell))
    declared = [Path(p) for name in cell_stages(cell)
                for paths in contract.input_paths(contract.stage(name), params, **_wildcards(name, cell)).values()
                for p in paths]
    return [f for p in dict.fromkeys(declared) if p not in own for f in _files(p)]


def output_files(cell: dict) -> list[Path]:
    """The cell's own files (a fine-tuned model and history, the cache and metrics), provenance.json aside."""
    return [f for name in cell_stages(cell) for key, f in contract.outs(name, **_wildcards(name, cell)).items()
            if key != "provenance"]


def runtime_state(runtime: dict) -> dict:
    """Device, threads and determinism flags as the process has them now (call after runtime.configure)."""
    import torch

    from fsood.runtime import auto_choice, channels_last, device_type, precision

    device = device_type(runtime["device"])
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
        "cuda": torch.version.cuda if device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "precision": precision(runtime, torch.device(device)),  # 'auto' resolved on this machine
        "channels_last": channels_last(runtime),
        # runtime 'auto' (fsood.autotune): what was measured on this machine for this model, and chosen
        "auto": auto_choice() or None,
        "cpu_model": _cpu_model() if device == "cpu" else None,
        "determinism": {
            "runtime.deterministic": runtime["deterministic"],
            "torch.are_deterministic_algorithms_enabled": torch.are_deterministic_algorithms_enabled(),
            "cudnn.deterministic": torch.backends.cudnn.deterministic,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.enabled": torch.backends.cudnn.enabled,
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        },
    }


def _cpu_model() -> str:
    from fsood.runtime import cpu_model

    return cpu_model()


def hashes(files: list[Path]) -> dict[str, str]:
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"provenance: missing file(s) {missing}; run the stages that make them first")
    return {_posix(f): sha256_file(f) for f in files}


def build(params: dict, cell: dict, fit_subset_seed: int) -> dict:
    """The provenance record of one finished cell (its outputs must exist)."""
    return {
        "format": FORMAT,
        "cell": contract.cell_name(*cell.values()),
        **cell,
        "seeds": {"pretrain": cell["pretrain_seed"], "cell": cell.get("seed"), "fit_subset": fit_subset_seed},
        "versions": library_versions(),
        "git_commit": git_commit(),
        "runtime": runtime_state(params["runtime"]),
        "params": cell_params(params, cell),
        "inputs": hashes(input_files(params, cell)),
        "outputs": hashes(output_files(cell)),
    }

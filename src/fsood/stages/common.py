"""Helpers shared by the stage modules."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from fsood import contract
from fsood.datasets import BenchmarkData
from fsood.io import write_text
from fsood.models import build_model, load_state


def benchmark_data(benchmark: str) -> BenchmarkData:
    return BenchmarkData(contract.out("data", "data", benchmark=benchmark))


def normalization(params: dict, benchmark: str, data: BenchmarkData) -> dict:
    """``data.normalize`` of params, or, where a declared benchmark leaves it out, the statistics the
    data stage computed from its ID train set and recorded in the manifest."""
    return params["benchmarks"][benchmark]["data"].get("normalize") or data.normalize


def model_for(params: dict, benchmark: str, data: BenchmarkData):
    return build_model(params["benchmarks"][benchmark]["model"], data.in_channels, data.num_classes)


def load_model(params: dict, benchmark: str, data: BenchmarkData, checkpoint: Path):
    arch = params["benchmarks"][benchmark]["model"]["arch"]
    return load_state(model_for(params, benchmark, data), checkpoint,
                      expect=f"({arch}, {data.num_classes} classes)")


def input_shape(data: BenchmarkData) -> tuple[int, ...]:
    """(C, H, W) of the benchmark's images, as the data stage recorded them."""
    return tuple(data.manifest["sets"]["id_test"]["shape"])


def prepared(model, params: dict, data: BenchmarkData, device):
    """``model`` on ``device``, in the precision and memory format of the run (measured where 'auto')."""
    from fsood import runtime as rt

    return rt.prepare_model(model, params["runtime"], device, input_shape(data))


def load_pretrained(params: dict, benchmark: str, pretrain_seed: int, data: BenchmarkData, device):
    """The pretrained model ``pretrain_seed`` of a benchmark, on ``device`` in the run's memory format."""
    checkpoint = contract.out("pretrain", "model", benchmark=benchmark, pretrain_seed=pretrain_seed)
    return prepared(load_model(params, benchmark, data, checkpoint), params, data, device)


def published_checkpoint(params: dict, benchmark: str, data: BenchmarkData):
    """The model of ``pretrain.checkpoint`` (a registry source, e.g. energy_ood's WRN-40-2), verified
    and renamed to fsood's keys, with what was loaded (name, file, sha256); ``None`` when the
    benchmark pretrains by itself."""
    name = params["benchmarks"][benchmark]["pretrain"]["checkpoint"]
    if name is None:
        return None
    from fsood.datasets import registry

    cfg = params["datasets"]
    source = registry.get_source(name)
    path = registry.fetch(source, cfg["mirrors"], cfg["download_dir"])
    arch = params["benchmarks"][benchmark]["model"]["arch"]
    model = load_state(model_for(params, benchmark, data), path, arch=arch,
                       expect=f"({arch}, {data.num_classes} classes, from registry source {name!r})")
    return model, {"checkpoint": name, "file": source.filename, "sha256": registry.recorded_sha256(source, path)}


def write_history(path: str | Path, rows: list[dict]) -> None:
    """Per-epoch CSV for ``dvc plots``; columns are the union of the rows' keys."""
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["epoch"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())

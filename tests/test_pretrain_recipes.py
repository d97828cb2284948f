"""benchmarks/pretrain_recipes.py: its data workspace is runnable, and a candidate trains and reports a row an epoch."""
from __future__ import annotations

import sys

import numpy as np

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import pretrain_recipes  # noqa: E402


def test_the_data_workspace_accepts_the_data_stage(tmp_path, monkeypatch):
    """The data stage is called for a benchmark the workspace's grid holds, with all ID images."""
    from fsood.config import check_cell, load_params

    calls = []
    monkeypatch.setattr(pretrain_recipes.subprocess, "run", lambda cmd, cwd, **kw: calls.append((cmd, cwd)))
    folder = pretrain_recipes.build_data(tmp_path)
    (cmd, cwd), = calls
    assert cmd[-3:] == ["data", "--benchmark", "cifar10-mini"] and folder == cwd / "data" / "cifar10-mini"
    params = load_params(cwd / "params.yaml")
    check_cell(params, benchmark="cifar10-mini")  # what the CLI checks first (raised here before the fix)
    assert params["benchmarks"]["cifar10-mini"]["data"]["id"]["count"] == {"train": None, "test": None}


class _FakeCifar:
    """CIFAR-shaped random images: what run_candidate reads of BenchmarkData."""

    def __init__(self, n_train: int, n_test: int):
        rng = np.random.default_rng(0)
        self.sets = {"id_train": (rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8), np.arange(n_train) % 10),
                     "id_test": (rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8), np.arange(n_test) % 10)}
        self.in_channels, self.num_classes = 3, 10

    def load(self, name: str):
        return self.sets[name]


def test_a_candidate_reports_accuracy_and_nc1_after_every_epoch(monkeypatch):
    monkeypatch.setattr(pretrain_recipes, "NC1_SAMPLES", 200)
    runtime = {"device": "cpu", "threads": 1, "precision": "fp32", "channels_last": True, "eval_batch_size": 256,
               "deterministic": True, "ddp_backend": "auto"}
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    rows = pretrain_recipes.run_candidate("compact-64-128-128-fast", _FakeCifar(520, 200), norm, 2, runtime, 0)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["of"] == 2 for r in rows)
    assert rows[1]["train_wall_s"] > rows[0]["train_wall_s"] > 0
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0 and np.isfinite(r["nc1"]) and r["nc1"] > 0

"""Data-parallel fine-tuning (fsood.distributed): two CPU processes over gloo.

Both ranks end with the same weights, training moved them, a rerun gives the same bytes, and
without BatchNorm two ranks reach the single-process weights (the global batch is sharded, not
duplicated). Then the CLI path: ``python -m fsood finetune`` with ``processes: 2`` spawns its own
workers, and ``torchrun`` starting the same command gives the same checkpoint.
"""
from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY
from upstream import clone_upstream
from fsood import distributed as dist
from fsood import runtime as rt
from fsood.io import read_json, save_state_dict, write_json
from fsood.methods import make_objective
from fsood.models import FeatureClassifier, SmallCNN
from fsood.train import check_shards, train

CPU = torch.device("cpu")
NORM = {"mean": [0.5], "std": [0.25]}
RUNTIME = {"channels_last": False, "precision": "fp32"}
# 40 ID images in batches of 8 (4 per rank) and 12 outliers a step (6 per rank): every part splits evenly
CFG = {"epochs": 2, "stage2_epoch": 1, "id_batch_size": 8, "outlier_batch_size": 12, "lr": 0.05, "lr_min": 0.0,
       "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "augment": {"crop_padding": 1, "hflip": True}}
SEP = {"oe_weight": 0.5, "alpha": 1.0, "beta": 1.0, "detach_weight": True, "mean_over_classes": False}


def _data():
    rng = np.random.default_rng(7)
    return (rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, 40),
            rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8))


class NoBatchNorm(FeatureClassifier):
    """No per-batch statistics, no dropout: data parallelism must reproduce the single process."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 3)


MODELS = {"bn": lambda: SmallCNN(1, 3, 8, 16), "plain": NoBatchNorm}


class Recorded:
    """A lazily read set (len, [int64 indices] -> uint8 rows) that records which rows it was asked for."""

    def __init__(self, x: np.ndarray):
        self.x, self.requests = x, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, indices):
        self.requests.append(indices.tolist())
        return self.x[indices]


def _fit(name: str, seed: int, ctx: dist.Context, lazy: bool = False):
    torch.manual_seed(0)  # the same start on every rank (DDP would broadcast rank 0's anyway)
    model = MODELS[name]()
    objective = make_objective("sep", SEP, CFG["stage2_epoch"], lambda: model.fc.weight)
    x, y, xo = _data()
    if lazy:
        x, xo = Recorded(x), Recorded(xo)
    history = train(model, x, y, CFG, RUNTIME, CPU, NORM, objective, seed, outlier_x=xo, desc=name, ctx=ctx)
    return model, history, ({"id": x.requests, "outliers": xo.requests} if lazy else None)


def _rank_worker(ctx: dist.Context, out_dir: str, seed: int) -> None:
    """Runs in each spawned process: train both models (the one without BatchNorm from lazily read
    sets), each rank saves what it ends with and which rows it read."""
    rt.configure({**RUNTIME, "device": "cpu", "deterministic": True, "threads": 2}, seed, ctx.world_size, ctx.rank)
    with dist.process_group(ctx, "gloo", CPU):
        for name in MODELS:
            model, history, requests = _fit(name, seed, ctx, lazy=name == "plain")
            save_state_dict(f"{out_dir}/{name}-rank{ctx.rank}.pt", model.state_dict())
            write_json(f"{out_dir}/{name}-rank{ctx.rank}.json", history)
            if requests:
                write_json(f"{out_dir}/{name}-rank{ctx.rank}-rows.json", requests)


def _load(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    dist.launch(_rank_worker, (str(out), 3), processes=2)
    return out


@pytest.mark.slow
def test_ranks_end_identical_and_trained(two_ranks):
    for name, make in MODELS.items():
        a, b = _load(two_ranks / f"{name}-rank0.pt"), _load(two_ranks / f"{name}-rank1.pt")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs between rank 0 and rank 1"
        assert read_json(two_ranks / f"{name}-rank0.json") == read_json(two_ranks / f"{name}-rank1.json")
        torch.manual_seed(0)
        start = make().state_dict()
        for key in (k for k in start if k.endswith("weight")):
            assert not torch.equal(start[key], a[key]), f"{name}: {key} did not train"
    bn = _load(two_ranks / "bn-rank0.pt")
    assert int(bn["backbone.1.num_batches_tracked"]) == CFG["epochs"] * 40 // CFG["id_batch_size"]


@pytest.mark.slow
def test_rerun_gives_the_same_bytes(two_ranks, tmp_path):
    dist.launch(_rank_worker, (str(tmp_path), 3), processes=2)
    for path in sorted(two_ranks.iterdir()):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs on a rerun"


@pytest.mark.slow
def test_two_ranks_reach_the_single_process_weights_without_batchnorm(two_ranks):
    """Each rank trains on half of every global batch with the global draws: the averaged gradient is the
    single-process one, so only float rounding separates the weights (BatchNorm would not: per-rank stats)."""
    torch.set_num_threads(1)
    single, history, _ = _fit("plain", 3, dist.SINGLE)
    ddp = _load(two_ranks / "plain-rank0.pt")
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=f"plain: {key}")
    ddp_history = read_json(two_ranks / "plain-rank0.json")
    assert [row["epoch"] for row in ddp_history] == [row["epoch"] for row in history]
    for got, want in zip(ddp_history, history):
        assert got["id_train_acc"] == pytest.approx(want["id_train_acc"])
        assert got["ce"] == pytest.approx(want["ce"], rel=1e-4)
    # and the BatchNorm model is not the single-process one (batch statistics are per rank)
    single_bn, _, _ = _fit("bn", 3, dist.SINGLE)
    bn = _load(two_ranks / "bn-rank0.pt")
    assert not torch.allclose(bn["fc.weight"], single_bn.state_dict()["fc.weight"], atol=1e-5)


@pytest.mark.slow
def test_each_rank_reads_only_its_shard_of_every_global_batch(two_ranks):
    rows = [read_json(two_ranks / f"plain-rank{r}-rows.json") for r in (0, 1)]
    steps = CFG["epochs"] * 40 // CFG["id_batch_size"]
    for part, size in (("id", CFG["id_batch_size"]), ("outliers", CFG["outlier_batch_size"])):
        assert len(rows[0][part]) == len(rows[1][part]) == steps
        for step in range(steps):
            mine, theirs = rows[0][part][step], rows[1][part][step]
            assert len(mine) == len(theirs) == size // 2
            assert not set(mine) & set(theirs)  # 12 consecutive places of a permutation of 30: no repeats
        if part == "id":  # each epoch's ID batches, both ranks together, cover the set once
            per_epoch = steps // CFG["epochs"]
            for epoch in range(CFG["epochs"]):
                seen = [i for r in (0, 1) for batch in rows[r][part][epoch * per_epoch:(epoch + 1) * per_epoch]
                        for i in batch]
                assert sorted(seen) == list(range(40))


def _failing_worker(ctx: dist.Context) -> None:
    if ctx.rank == 1:
        raise ValueError("rank one refuses")


@pytest.mark.slow
def test_a_worker_error_names_its_rank():
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 failed: ValueError: rank one refuses"):
        dist.launch(_failing_worker, (), processes=2)


# --- fast checks, no processes started --------------------------------------------------------------


def test_shard_is_strided_and_covers_the_batch_once():
    rows = torch.arange(11)
    parts = [dist.shard(rows, dist.Context(r, 3)) for r in range(3)]
    assert parts[0].tolist() == [0, 3, 6, 9]
    assert sorted(torch.cat(parts).tolist()) == rows.tolist()
    assert dist.shard(rows, dist.SINGLE).tolist() == rows.tolist()


def test_backend_auto_and_refusals():
    assert dist.resolve_backend("auto", CPU) == "gloo"
    assert dist.resolve_backend("gloo", CPU) == "gloo"
    with pytest.raises(ValueError, match="'nccl' needs CUDA"):
        dist.resolve_backend("nccl", CPU)
    with pytest.raises(ValueError, match=r"'mpi' is not known; valid: \['nccl', 'gloo', 'auto'\]"):
        dist.resolve_backend("mpi", CPU)


def test_context_from_the_launchers_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert dist.from_environment() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.from_environment() == dist.Context(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match=r"RANK=4 is not in \[0, WORLD_SIZE=4\)"):
        dist.from_environment()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        dist.from_environment()


def test_batches_too_small_for_the_ranks_are_refused():
    check_shards(CFG, 8)
    with pytest.raises(ValueError, match="id_batch_size=8 is smaller than processes=9"):
        check_shards(CFG, 9)


def test_threads_are_shared_between_ranks(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    try:
        cfg = {"device": "cpu", "precision": "fp32", "deterministic": True, "threads": 1}
        rt.configure(cfg, 0, processes=2)
        assert torch.get_num_threads() == 2
        rt.configure(cfg, 0, processes=8)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_auto_falls_back_to_cpu_with_a_warning_explicit_cuda_is_an_error(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = {"device": "auto", "precision": "fp32", "deterministic": True, "threads": 1}
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.WARNING, logger="fsood.runtime"):
            assert rt.configure(cfg, 0) == CPU
        assert "no CUDA device is available: running on the CPU" in caplog.text
        with pytest.raises(RuntimeError, match="runtime.device is 'cuda' but no CUDA device is available"):
            rt.configure({**cfg, "device": "cuda"}, 0)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fsood.runtime"):
            rt.configure({**cfg, "device": "cpu"}, 0)
        assert not caplog.records  # asking for the CPU is not worth a warning
    finally:
        torch.set_num_threads(before)


def test_other_ranks_seed_dropout_differently():
    cfg = {"device": "cpu", "precision": "fp32", "deterministic": True, "threads": 1}
    before = torch.get_num_threads()
    draws = []
    try:
        for rank in (0, 1, 0):
            rt.configure(cfg, 5, processes=2, rank=rank)
            draws.append(torch.rand(4))
    finally:
        torch.set_num_threads(before)
    torch.manual_seed(5)
    assert torch.equal(draws[0], torch.rand(4))  # rank 0 keeps the seed: one process is unchanged
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])


# --- the CLI: the same command Snakemake and DVC run ------------------------------------------------


def _fsood(ws, *args, launcher=(sys.executable, "-m"), env=None):
    proc = subprocess.run([*launcher, "fsood", *args, "--benchmark", "digits"], cwd=ws, capture_output=True,
                          text=True, env=env, check=False)
    assert proc.returncode == 0, f"fsood {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def spawned_cell(tmp_path_factory, recorded_digits):
    """A tiny workspace (the session's upstream, hard-linked: tests/upstream.py), then
    ``python -m fsood finetune`` with ``processes: 2``, as Snakemake and DVC start it."""
    ws = clone_upstream(recorded_digits, tmp_path_factory.mktemp("cli") / "ws",
                        **{"benchmarks.digits.finetune.processes": 2, "runtime.threads": 2})
    _fsood(ws, "finetune", "--pretrain-seed", "0", "--method", "sep", "--seed", "0", "--log", "logs/ddp.log")
    return ws, ws / "results/digits/model0/sep/seed0"


@pytest.mark.slow
def test_cli_spawns_two_workers_rank0_logs_and_writes(spawned_cell):
    ws, cell = spawned_cell
    log = (ws / "logs/ddp.log").read_text()
    assert "launching 2 workers" in log and "finetune done" in log
    for epoch in range(TINY["benchmarks.digits.finetune.epochs"]):  # rank 0 alone logs progress
        assert log.count(f"digits-0-sep-0 epoch {epoch}:") == 1, log
    assert "rank=0/2" in log and "rank=1/2" not in log
    assert log.index("rank=0/2") < log.index("finetune done")  # the launcher's file kept rank 0's lines
    rows = list(csv.DictReader((cell / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(TINY["benchmarks.digits.finetune.epochs"]))
    assert sorted(p.name for p in cell.iterdir()) == ["history.csv", "model.pt"]  # no stray temp files


@pytest.mark.slow
def test_torchrun_starting_the_same_command_gives_the_same_checkpoint(spawned_cell, tmp_path):
    ws, cell = spawned_cell
    spawned = (cell / "model.pt").read_bytes()
    (cell / "model.pt").rename(tmp_path / "spawned.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "2"  # as runtime.threads: one thread a rank, as the spawned run had
    try:
        _fsood(ws, "finetune", "--pretrain-seed", "0", "--method", "sep", "--seed", "0", env=env,
               launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"))
        assert (cell / "model.pt").read_bytes() == spawned
    finally:
        (tmp_path / "spawned.pt").replace(cell / "model.pt")

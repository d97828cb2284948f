"""Per-cell provenance (fsood.provenance) and ``fsood rebuild`` (fsood.rebuild) on one tiny digits cell."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, edit_params, make_workspace
from fsood.provenance import diff_keys, git_commit

CELL = ("--benchmark", "digits", "--pretrain-seed", "0", "--method", "sep", "--seed", "0")
MODEL = ("--benchmark", "digits", "--pretrain-seed", "0")
CELL_DIR = "results/digits/model0/sep/seed0"
OUTPUTS = ("model.pt", "history.csv", "cache.npz", "scores.npz", "metrics.json", "roc.csv")
# Tests that use the built cell: ~20-50 s of shared setup on 2 cores, then ~20 s per rebuild.
SLOW = pytest.mark.slow
# TINY, cut further: every rebuild reruns finetune and score, so each second counts.
SMALLER = {
    "grid.methods": ["sep"],
    "benchmarks.digits.model.width": 8,
    "benchmarks.digits.data.n_outliers": 128,
    "benchmarks.digits.data.n_ood": 64,
    "benchmarks.digits.pretrain.epochs": 1,
    "benchmarks.digits.finetune.epochs": 2,
    "benchmarks.digits.finetune.stage2_epoch": 1,
    "score.scores": ["fs", "msp"],
}


def fsood(ws, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "fsood", *args], cwd=ws, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A git workspace with one finished cell: data, pretrain, subspace, finetune and score of digits-0-sep-0,
    and the pretrained model's own cell (score_pretrained of digits-0)."""
    ws = make_workspace(tmp_path_factory.mktemp("prov") / "ws")
    edit_params(ws, **{**TINY, **SMALLER})
    subprocess.run(["git", "commit", "-qam", "tiny grid"], cwd=ws, check=True, capture_output=True)
    fsood(ws, "data", "--benchmark", "digits")
    fsood(ws, "pretrain", *MODEL)
    fsood(ws, "subspace", *MODEL)
    fsood(ws, "finetune", *CELL)
    fsood(ws, "score", *CELL)
    fsood(ws, "score_pretrained", *MODEL)
    return ws


@SLOW
def test_provenance_records_versions_runtime_params_and_hashes(cell):
    import numpy
    import torch

    import fsood

    from fsood.config import load_params

    text = (cell / CELL_DIR / "provenance.json").read_text()
    record = json.loads(text)
    assert text == json.dumps(record, indent=2, sort_keys=True) + "\n"  # sorted keys: stable bytes
    assert str(cell) not in text and str(cell.resolve()) not in text  # no absolute paths
    assert record["versions"]["torch"] == torch.__version__.split("+")[0] or \
        record["versions"]["torch"] == torch.__version__
    assert record["versions"]["numpy"] == numpy.__version__
    assert record["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    package = Path(fsood.__file__).parent  # the code that ran: the installed package's repository
    last = subprocess.run(["git", "log", "-1", "--format=%H", "--", "."], cwd=package, capture_output=True,
                          text=True).stdout.strip()
    assert record["git_commit"] == (last or None)
    assert record["runtime"]["device"] == "cpu"
    assert record["runtime"]["threads"] == 1  # runtime.threads of params.yaml
    assert set(record["runtime"]["determinism"]) >= {"runtime.deterministic", "cudnn.benchmark",
                                                      "torch.are_deterministic_algorithms_enabled"}
    assert record["seeds"]["cell"] == 0 and record["seeds"]["pretrain"] == 0
    params = load_params(cell / "params.yaml")
    # {dotted key: value} of every key the cell's stages declare (fsood.contract), as params.yaml holds it
    from fsood import contract

    declared = [k.format(benchmark="digits", pretrain_seed=0, method="sep") for name in ("finetune", "score")
                for k in contract.stage(name).params]
    assert sorted(record["params"]) == sorted(set(declared))
    assert record["params"]["methods.sep"] == params["methods"]["sep"]
    assert record["params"]["score"] == params["score"]
    assert record["params"]["benchmarks.digits.finetune"]["epochs"] == TINY["benchmarks.digits.finetune.epochs"]
    assert record["params"]["runtime"] == params["runtime"]
    inputs = record["inputs"]
    assert {"data/digits/manifest.json", "data/digits/id_train.npz", "data/digits/outliers.npz",
            "data/digits/id_test.npz", "results/digits/model0/pretrain/model.pt"} <= set(inputs)
    manifest = json.loads((cell / "data/digits/manifest.json").read_text())
    for name in manifest["ood_sets"]:
        assert f"data/digits/{name}.npz" in inputs
    for name, digest in inputs.items():
        assert digest == sha256(cell / name), name
    assert set(record["outputs"]) == {f"{CELL_DIR}/{name}" for name in OUTPUTS}
    for name, digest in record["outputs"].items():
        assert digest == sha256(cell / name), name


@SLOW
def test_score_rerun_writes_the_same_bytes(cell):
    before = {name: (cell / CELL_DIR / name).read_bytes() for name in ("provenance.json", "metrics.json", "cache.npz")}
    fsood(cell, "score", *CELL)
    for name, data in before.items():
        assert (cell / CELL_DIR / name).read_bytes() == data, f"{name} changed when the score stage reran"


@pytest.mark.trust(kind="rebuild_cell")
@SLOW
def test_rebuild_reports_a_match_and_leaves_the_record_alone(cell):
    before = {name: ((cell / CELL_DIR / name).read_bytes(), (cell / CELL_DIR / name).stat().st_mtime_ns)
              for name in (*OUTPUTS, "provenance.json")}
    proc = fsood(cell, "rebuild", *CELL, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(CELL_DIR)]
    assert sorted(row[0] for row in rows) == sorted(f"{CELL_DIR}/{name}" for name in OUTPUTS)
    assert all(row[-1] == "yes" for row in rows), proc.stdout
    for name, (data, mtime) in before.items():
        path = cell / CELL_DIR / name
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, f"rebuild touched {name}"


@pytest.mark.trust(kind="rebuild_cell")
@SLOW
def test_rebuild_of_the_pretrained_models_own_cell(cell):
    """Method none has one cell a pretrained model and no seed: its record names the pretraining params, and
    `fsood rebuild --method none` reruns its scoring alone and matches."""
    folder = "results/digits/model0/none"
    record = json.loads((cell / folder / "provenance.json").read_text())
    assert record["cell"] == "digits-0-none" and "seed" not in record and record["seeds"]["cell"] is None
    assert "benchmarks.digits.pretrain" in record["params"] and "benchmarks.digits.finetune" not in record["params"]
    assert "results/digits/model0/subspace/features.npz" in record["inputs"]
    proc = fsood(cell, "rebuild", *MODEL, "--method", "none", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(folder)]
    assert {row[0] for row in rows} == {f"{folder}/{n}" for n in ("cache.npz", "scores.npz", "metrics.json", "roc.csv")}
    assert all(row[-1] == "yes" for row in rows), proc.stdout


@pytest.mark.trust(kind="rebuild_cell")
@SLOW
def test_rebuild_finds_tampered_outputs_and_keeps_them(cell):
    targets = ("model.pt", "metrics.json")
    originals = {name: (cell / CELL_DIR / name).read_bytes() for name in targets}
    tampered = {}
    for name, data in originals.items():
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        tampered[name] = bytes(flipped)
        (cell / CELL_DIR / name).write_bytes(tampered[name])
    try:
        proc = fsood(cell, "rebuild", *CELL, check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
        rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith(CELL_DIR)}
        for name in OUTPUTS:
            file, recorded, rebuilt, match = rows[f"{CELL_DIR}/{name}"]
            assert match == ("NO" if name in targets else "yes"), proc.stdout
            assert (recorded == rebuilt) == (name not in targets)  # the recorded column is the file on disk
        for name in targets:
            assert (cell / CELL_DIR / name).read_bytes() == tampered[name], f"rebuild overwrote {name}"
    finally:
        for name, data in originals.items():
            (cell / CELL_DIR / name).write_bytes(data)


@pytest.mark.trust(kind="rebuild_cell")
@SLOW
def test_rebuild_refuses_changed_params_naming_the_key(cell):
    original = (cell / "params.yaml").read_text()
    edit_params(cell, **{"benchmarks.digits.finetune.lr": 0.123})
    try:
        proc = fsood(cell, "rebuild", *CELL, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "differing keys: benchmarks.digits.finetune.lr." in proc.stderr  # the params.yaml key itself
        assert "--use-current-params" in proc.stderr
        assert "rebuilt" not in proc.stdout  # refused before any work
    finally:
        (cell / "params.yaml").write_text(original)


@pytest.mark.trust(kind="rebuild_cell")
@SLOW
def test_rebuild_without_record_names_the_missing_file(cell):
    record = cell / CELL_DIR / "provenance.json"
    aside = record.with_name("provenance.aside")
    record.rename(aside)
    try:
        proc = fsood(cell, "rebuild", *CELL, check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"{CELL_DIR}/provenance.json" in proc.stderr and "score stage" in proc.stderr
        assert not record.exists()
    finally:
        aside.rename(record)


def test_diff_keys_names_every_changed_leaf():
    recorded = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    assert diff_keys(recorded, recorded) == []
    assert diff_keys(recorded, {"a": {"b": 2, "c": [1, 2]}, "d": 0}) == ["a.b"]
    assert diff_keys(recorded, {"a": {"b": 1, "c": [1, 3], "e": 5}}) == ["a.c", "a.e", "d"]


def test_git_commit_is_none_outside_a_repository(tmp_path):
    assert git_commit(tmp_path) is None

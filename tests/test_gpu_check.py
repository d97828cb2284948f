"""benchmarks/gpu_check.py, the prepared GPU check of `cifar10-tin`, on the CPU at tiny size: the same
script, through Snakemake, from archives copied out of the mirror (skipped where no mirror is reachable,
except in CI), plus its refusals and the GPU sharing resource it asks Snakemake for."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, edit_params, make_workspace, require_mirror

from fsood import contract
from fsood.config import validate_params

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)
# the smallest schedule and data the script's scaling parameters give: 2 pretraining epochs of a 4-epoch
# schedule, 1 fine-tuning epoch, 200 images a set, WRN-10-1
TINY = ["--device", "cpu", "--precision", "fp32", "--epoch-scale", "0.02", "--cap", "200",
        "--depth", "10", "--widen", "1", "--cells-per-gpu", "2", "--cores", "2", "--budget-s", "400"]


def test_epoch_scale_keeps_the_papers_proportions():
    assert gpu_check.scaled_schedule(1) == {"pretrain": 100, "schedule": 200, "finetune": 50, "stage2": 25}
    assert gpu_check.scaled_schedule(0.1) == {"pretrain": 10, "schedule": 20, "finetune": 5, "stage2": 2}
    assert gpu_check.scaled_schedule(0.02) == {"pretrain": 2, "schedule": 4, "finetune": 1, "stage2": 0}
    with pytest.raises(SystemExit, match="--epoch-scale must be in"):
        gpu_check.scaled_schedule(0)


def test_check_params_are_valid_and_drop_textures(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "cifar10-tin" not in params["grid"]["benchmarks"]  # a GPU benchmark: never in the default grid
    edited = gpu_check.check_params(params, gpu_check.parse_args(TINY), tmp_path)
    validate_params(edited)
    bench = edited["benchmarks"]["cifar10-tin"]
    assert "textures" not in bench["data"]["ood_sets"] and edited["grid"]["methods"] == ["oe", "sep"]
    assert bench["finetune"]["lr"] == 0.07 and bench["finetune"]["id_batch_size"] == 128  # the paper's, unchanged
    assert bench["resources"]["cells_per_gpu"] == 2


def test_an_altered_archive_is_refused_naming_it(tmp_path):
    for name in gpu_check.SOURCES:
        (tmp_path / contract_source_file(name)).write_bytes(b"not the archive")
    with pytest.raises(SystemExit, match=r"cifar10-jpg\.tar\.gz.*sha256"):
        gpu_check.verify(tmp_path)
    (tmp_path / "cifar10-jpg.tar.gz").unlink()
    with pytest.raises(SystemExit, match=r"cifar10-jpg\.tar\.gz: missing; run .*--prepare"):
        gpu_check.verify(tmp_path)


def contract_source_file(name: str) -> str:
    from fsood.datasets import registry
    return registry.get_source(name).filename


def test_cells_per_gpu_sets_the_gpu_slots_snakemake_schedules_by(tmp_path):
    assert [contract.gpu_slots(n) for n in (1, 2, 3, 4)] == [12, 6, 4, 3]
    with pytest.raises(ValueError, match="cells_per_gpu: 5 is not one of"):
        contract.gpu_slots(5)
    ws = make_workspace(tmp_path / "ws", git=False)
    edit_params(ws, **{"runtime.device": "cuda", "grid.methods": ["oe", "sep"], "grid.seeds": [0],
                       "benchmarks.digits.resources": {"cells_per_gpu": 2}})
    # a dry run prints every job's resources: oe and sep fine-tuning take half a GPU each
    proc = subprocess.run([sys.executable, "-m", "snakemake", "all", "-n", "--cores", "4", "--resources",
                           "gpu_slots=12"], cwd=ws, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = [block for block in proc.stdout.split("\n\n") if "rule finetune:" in block]
    slots = {next(w.split("=")[1].strip(",") for w in b.split() if w.startswith("method=")):
             next((w.split("=")[1].strip(",") for w in b.split() if w.startswith("gpu_slots=")), "absent")
             for b in jobs}
    assert slots == {"oe": "6", "sep": "6"}


def test_direct_runner_runs_the_commands_snakemake_runs(tmp_path):
    """Without Snakemake (the GPU machine) the check runs the contract's commands stage by stage: the
    very commands of Snakemake's dry run, each stage after the ones it reads."""
    params = gpu_check.check_params(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                    gpu_check.parse_args(TINY), tmp_path)
    ws = tmp_path / "ws"
    gpu_check.make_workspace(ws, params)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "all", "-n", "--cores", "2"], cwd=ws,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    planned = [cmd for wave in gpu_check.direct_plan(params) for _, cmd in wave]
    shell = "Shell command: "
    assert sorted(planned) == sorted(line.split(shell, 1)[1].strip() for line in proc.stdout.splitlines()
                                     if shell in line and "python -m fsood" in line)
    stages = [cmd.split()[3] for cmd in planned]
    # data; pretrain, subspace, the pretrained model's cell; 2 cells fine-tuned and scored; verdict; report
    assert stages == sorted(stages, key=list(contract.STAGES).index) and len(planned) == 1 + 3 + 2 + 2 + 1 + 1


@pytest.mark.slow
def test_the_check_runs_through_snakemake_at_tiny_size(tmp_path):
    mirror = require_mirror()
    copy = tmp_path / "gpu-mirror"
    run = lambda *a: subprocess.run([sys.executable, str(SCRIPT), *a], capture_output=True, text=True)  # noqa: E731
    prep = run("--prepare", "--source-mirror", str(mirror), "--mirror", str(copy))
    assert prep.returncode == 0, prep.stderr
    assert sorted(p.name for p in copy.iterdir()) == ["cifar10-jpg.tar.gz", "tinyimagenet32.tar.gz"]
    out = tmp_path / "out"
    proc = run(*TINY, "--mirror", str(copy), "--workspace", str(tmp_path / "ws"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "EPOCHS SCALED by --epoch-scale 0.02" in proc.stdout and "DATA CAPPED" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"none", "oe", "sep"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sep"]["scores"]["fs"]) == {"tin_holdout", "digits", "gaussian", "rademacher", "blobs", "mean"}
    timing = json.loads((out / "timings.json").read_text())
    assert timing["wall_s"] > 0 and timing["schedule"]["finetune"] == 1 and timing["jobs_s"]["finetune/cifar10-tin-0-sep-0"]
    text = (out / "check.txt").read_text()
    assert "NC1 of the pretrained model" in text and all(f"| {m} |" in text for m in ("none", "oe", "sep"))
    assert sorted(p.name for p in out.iterdir()) == ["check.txt", "metrics.json", "nc.json", "summary.json",
                                                     "summary.md", "timings.json"]

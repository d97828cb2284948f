"""Snakemake and DVC describe the same pipeline: the same commands writing the same files."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT, edit_params, make_workspace


def snakemake_jobs(cwd) -> set[tuple[str, frozenset[str]]]:
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--printshellcmds", "--cores", "1", "all"],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout
    jobs = set()
    for block in out.split("\nrule ")[1:]:
        outputs = re.search(r"^\s+output: (.+)$", block, re.M)
        command = re.search(r"^Shell command: (.+)$", block, re.M)
        if outputs and command and command.group(1) != "None":
            jobs.add((command.group(1).strip(), frozenset(outputs.group(1).split(", "))))
    return jobs


def dvc_jobs(cwd) -> set[tuple[str, frozenset[str]]]:
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        return {(stage.cmd.strip(), frozenset(out.def_path for out in stage.outs)) for stage in repo.index.stages}


def test_default_grid_same_commands_and_outputs():
    sm, dvc = snakemake_jobs(ROOT), dvc_jobs(ROOT)
    assert len(sm) == 1 + 3 + 3 + 12 + 12 + 1  # data, pretrain, subspace, finetune, score, report
    assert sm == dvc, f"only Snakemake: {sorted(sm - dvc)[:3]}; only DVC: {sorted(dvc - sm)[:3]}"


def test_changed_grid_still_agrees(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **{"grid.benchmarks": ["digits", "cifar10-mini"], "grid.methods": ["oe", "sep"],
                       "grid.seeds": [3, 7], "report.projection_seed": 3})
    sm, dvc = snakemake_jobs(ws), dvc_jobs(ws)
    assert len(sm) == 2 * (1 + 2 + 2 + 4 + 4 + 1)
    assert sm == dvc
    assert any("--benchmark cifar10-mini --method sep --seed 7" in cmd for cmd, _ in sm)
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:  # DVC resolves the params of a hyphenated benchmark name
        status = repo.status()
    stages = {key.rsplit(":", 1)[-1] for key in status}  # keys read "<path>/dvc.yaml:<stage>"
    assert {"data@cifar10-mini", "finetune@cifar10-mini-sep-7"} <= stages


def test_lint_finds_nothing_but_missing_conda_environments():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    findings = set(re.findall(r"^\s+\* (.+?):?$", proc.stdout + proc.stderr, re.M))
    assert findings <= {"Specify a conda environment or container for each rule.:",
                        "Specify a conda environment or container for each rule."}, findings


def test_slurm_profile_dry_run_fans_out_one_job_per_cell():
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="install fsood[dev] for the SLURM plugin")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm", "-n", "-F", "all"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "slurm_account=my_account" in proc.stdout
    assert len(re.findall(r"^rule finetune:", proc.stdout, re.M)) == 12

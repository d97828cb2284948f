"""Snakemake and DVC describe the same pipeline: the same commands writing the same files."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, edit_params, make_workspace


def snakemake_jobs(cwd) -> set[tuple[str, frozenset[str]]]:
    """(command, outputs) of every job of a forced dry run; a folder output is named by its folder (Snakemake
    tracks its key file, e.g. the data manifest, in its place)."""
    from fsood import contract

    key_files = {f"/{o.key_file}" for s in contract.STAGES.values() for o in s.outputs.values() if o.key_file}
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--printshellcmds", "--cores", "1", "all"],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout
    jobs = set()
    for block in out.split("\nrule ")[1:]:
        outputs = re.search(r"^\s+output: (.+)$", block, re.M)
        command = re.search(r"^Shell command: (.+)$", block, re.M)
        if outputs and command and command.group(1) != "None":
            files = outputs.group(1).split(", ")
            files = [next((f.removesuffix(k) for k in key_files if f.endswith(k)), f) for f in files]
            jobs.add((command.group(1).strip(), frozenset(files)))
    return jobs


def dvc_jobs(cwd) -> set[tuple[str, frozenset[str]]]:
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        return {(stage.cmd.strip(), frozenset(out.def_path for out in stage.outs)) for stage in repo.index.stages}


def test_default_grid_same_commands_and_outputs():
    sm, dvc = snakemake_jobs(ROOT), dvc_jobs(ROOT)
    # data; pretrain, subspace and the pretrained model's scoring, one a pretrained model (3); 3 pretrained models x
    # 3 methods x 1 seed fine-tuned and scored; verdict; report
    assert len(sm) == 1 + 3 * 3 + 9 + 9 + 1 + 1
    assert sm == dvc, f"only Snakemake: {sorted(sm - dvc)[:3]}; only DVC: {sorted(dvc - sm)[:3]}"


def test_every_fine_tuning_cell_starts_from_its_own_pretrained_model(tmp_path):
    """The paper's protocol, for each pretrained model: the grid's seeds vary fine-tuning only; both tools give
    every finetune job of pretrained model k (every method and seed) model k's checkpoint and basis as inputs,
    and score the pretrained model once (method none), not once a seed."""
    from dvc.repo import Repo

    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **{"grid.pretrain_seeds": [0, 1], "grid.seeds": [0, 1]})
    out = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--cores", "1", "all"],
                         cwd=ws, check=True, capture_output=True, text=True).stdout
    blocks = out.split("\nrule finetune:")[1:]
    assert len(blocks) == 2 * 3 * 2 and len(re.findall(r"^rule score_pretrained:", out, re.M)) == 2
    for block in blocks:
        k = re.search(r"pretrain_seed=(\d+)", block).group(1)
        shared = {f"results/digits/model{k}/pretrain/model.pt", f"results/digits/model{k}/subspace/basis.npz"}
        inputs = set(re.search(r"^\s+input: (.+)$", block, re.M).group(1).split(", "))
        assert shared <= inputs and not any(f"model{1 - int(k)}/" in i for i in inputs)
    with Repo(str(ws)) as repo:
        finetune = [s for s in repo.index.stages if s.name.startswith("finetune@")]
        assert len(finetune) == 12
        for stage in finetune:  # finetune@digits-<k>-<method>-<seed>
            k = stage.name.split("@")[1].split("-")[1]
            assert {f"results/digits/model{k}/pretrain/model.pt",
                    f"results/digits/model{k}/subspace/basis.npz"} <= {d.def_path for d in stage.deps}
        assert [s.name for s in repo.index.stages if s.name.startswith(("pretrain@", "subspace@",
                                                                        "score_pretrained@"))] == [
            "pretrain@digits-0", "pretrain@digits-1", "subspace@digits-0", "subspace@digits-1",
            "score_pretrained@digits-0", "score_pretrained@digits-1"]
    assert snakemake_jobs(ws) == dvc_jobs(ws)


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
    assert len(re.findall(r"^rule finetune:", proc.stdout, re.M)) == 9


PAPER_GRID = {
    "grid.benchmarks": ["cifar10", "cifar100", "imagenet"],
    "grid.pretrain_seeds": [0],  # the paper benchmarks start from one published checkpoint
    "grid.methods": ["oe", "energy_oe", "dal", "sep", "oe_clu", "oe_sep", "sep_energy"],
    "grid.seeds": [0, 1, 2],
}


def test_paper_grid_lists_every_published_cell_and_both_tools_agree(tmp_path):
    from fsood import paper

    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **PAPER_GRID)
    sm, dvc = snakemake_jobs(ws), dvc_jobs(ws)
    assert sm == dvc, f"only Snakemake: {sorted(sm - dvc)[:3]}; only DVC: {sorted(dvc - sm)[:3]}"
    outputs = {out for _, outs in sm for out in outs}
    published = paper.load()
    for benchmark in PAPER_GRID["grid.benchmarks"]:
        methods = {e["method"] for e in paper.entries(published, benchmark)}
        assert methods, benchmark
        for method in methods:  # Tables 1, 2, 5 (and 11, 16): every published cell is a job, per seed
            if method == "none":  # the pretrained model, scored once
                assert f"results/{benchmark}/model0/none/metrics.json" in outputs
                continue
            for seed in PAPER_GRID["grid.seeds"]:
                assert f"results/{benchmark}/model0/{method}/seed{seed}/metrics.json" in outputs
        assert f"reports/{benchmark}/paper_comparison.md" in outputs


def test_slurm_dry_run_of_the_paper_grid_requests_gpus_per_ddp_process(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="install fsood[dev] for the SLURM plugin")
    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **PAPER_GRID, **{"runtime.device": "cuda", "benchmarks.imagenet.finetune.processes": 4})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm", "-n", "-F", "all"],
                          cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = {}
    for block in proc.stdout.split("\nrule finetune:")[1:]:
        wildcards = re.search(r"wildcards: benchmark=(\S+), pretrain_seed=0, method=(\S+), seed=(\d+)", block).groups()
        jobs[wildcards] = int(re.search(r"gpu=(\d+)", block).group(1))
    assert len(jobs) == 3 * 7 * 3
    assert jobs[("imagenet", "sep", "0")] == 4 and jobs[("cifar10", "sep", "0")] == 1


def test_a_benchmarks_runtime_threads_reach_its_training_jobs(tmp_path):
    """`benchmarks.<b>.runtime.threads` is the `threads:` of that benchmark's pretrain and finetune jobs
    (Snakemake exports it as OMP_NUM_THREADS, which fsood.runtime.configure passes to torch)."""
    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **{"benchmarks.digits.runtime": {"threads": 2}, "grid.methods": ["oe"], "grid.seeds": [0]})
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-F", "--cores", "2", "all"], cwd=ws,
                         check=True, capture_output=True, text=True).stdout
    threads = {block.split(":", 1)[0]: re.search(r"^\s+threads: (\d+)$", block, re.M) for block in out.split("\nrule ")[1:]}
    assert {rule: m and int(m.group(1)) for rule, m in threads.items()} == {
        "data": None, "pretrain": 2, "subspace": 2, "score_pretrained": None, "finetune": 2, "score": None,
        "verdict": None, "report": None, "all": None}

"""Every edit reruns exactly what it changes, in Snakemake and in DVC alike.

After a recorded run of the tiny digits grid, each edit below (one leaf of every params section, one
source file of every stage, an input's content) is checked three ways: the jobs Snakemake reruns for
a reason of their own (params, code, input content) and the stages `dvc status` lists are the same,
and equal the jobs whose contract declares the edited key or file (fsood.contract); every job
`snakemake -n` plans is downstream of those. Two edits are then run for real, one by each tool, and
no output whose bytes changed was outside the planned set.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys

import pytest
import yaml

from conftest import apply_changes
from upstream import copy_recorded, sh as run
from fsood import contract, dag

pytestmark = pytest.mark.slow

PARAM_EDITS = {  # one leaf of every params section (grid aside: it changes the jobs themselves)
    "benchmarks.digits.data.n_ood": 100,
    "benchmarks.digits.data.normalize.mean": [0.25],  # the reported case: DVC kept stale models
    "benchmarks.digits.model.width": 16,
    "benchmarks.digits.pretrain.lr": 0.03,  # the reported case: Snakemake said "Nothing to be done"
    "benchmarks.digits.finetune.lr": 0.02,
    "benchmarks.digits.methods": {"sep": {"beta": 2.0}},
    "benchmarks.digits.score": {"tpr": 0.9},
    "benchmarks.digits.notes": "edited",
    "methods.sep.beta": 2.0,
    "methods.oe.oe_weight": 0.25,
    "score.tpr": 0.9,
    # another headline mean (photo_china a sanity set): the scores, the verdict and the report
    "score.synthetic_sets": ["gaussian", "rademacher", "blobs", "photo_china"],
    "verdict.margin": 2.0,
    "report.max_points": 50,
    "runtime.eval_batch_size": 256,
    "datasets.download_dir": "data/elsewhere",  # where archives are looked up: reruns nothing
}
CODE_EDITS = ["stages/data.py", "datasets/synthetic.py", "stages/pretrain.py", "nc.py", "losses.py", "margins.py",
              "stages/finetune.py", "detectors/basic.py", "stages/score_pretrained.py", "verdict.py", "plots.py",
              "paper_results.yaml"]


def sh(ws, *cmd, check=True):
    return run(ws, *cmd, check=check, env={"PYTHONPATH": str(ws / "src")})  # the workspace's (edited) code runs


def snakemake_plan(ws) -> tuple[set[str], set[str]]:
    """(jobs rerun for a reason of their own, every job) of `snakemake -n`, as DVC names them."""
    out = sh(ws, sys.executable, "-m", "snakemake", "-n", "--cores", "1", "all").stdout
    own, planned = set(), set()
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        if rule == "all":
            continue
        found = re.search(r"^\s+wildcards: (.+)$", block, re.M)
        wildcards = dict(kv.split("=") for kv in found.group(1).split(", "))
        name = contract.job_name(contract.stage(rule), **wildcards)
        planned.add(name)
        reason = re.search(r"^\s+reason: (.+)$", block, re.M).group(1)
        if not reason.startswith("Input files updated by another job"):
            own.add(name)
    return own, planned


def dvc_stale(ws) -> set[str]:
    status = json.loads(sh(ws, "dvc", "status", "--json").stdout or "{}")
    return {key.rsplit(":", 1)[-1] for key in status}


def output_hashes(ws) -> dict[str, str]:
    return {p.relative_to(ws).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("data", "results", "reports") for p in sorted((ws / top).rglob("*")) if p.is_file()}


def producer(params: dict, path: str) -> str:
    """The job whose contract writes ``path``."""
    for s, cell in contract.jobs(params):
        for key in s.outputs:
            if path == (t := s.template(key).format(**cell)) or path.startswith(t + "/"):
                return contract.job_name(s, **cell)
    raise AssertionError(f"no stage writes {path}")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, recorded_digits):
    """The tiny grid run by Snakemake and recorded by DVC (`dvc commit`) and git: both tools clean (a copy
    of the session's run, tests/upstream.py)."""
    ws = copy_recorded(recorded_digits, tmp_path_factory.mktemp("edits") / "ws")
    assert snakemake_plan(ws) == (set(), set()) and dvc_stale(ws) == set()
    return ws, yaml.safe_load((ws / "params.yaml").read_text())


def _check(ws, params, expected_direct: set[str]):
    own, planned = snakemake_plan(ws)
    stale = dvc_stale(ws)
    # Snakemake names a job's own reason only where no upstream job reruns ("Input files updated by another
    # job" masks the rest); DVC lists every stage whose declared params or deps changed.
    roots = {j for j in expected_direct if not any(j in dag.downstream(params, {k}) for k in expected_direct - {j})}
    assert own == roots, f"Snakemake reruns {sorted(own)}, the contract says {sorted(roots)}"
    assert stale == expected_direct, f"dvc status lists {sorted(stale)}, the contract says {sorted(expected_direct)}"
    assert planned == dag.downstream(params, expected_direct)


@pytest.mark.parametrize("key", list(PARAM_EDITS))
def test_a_params_edit_reruns_exactly_its_declared_dependents(recorded, key):
    ws, params = recorded
    original = (ws / "params.yaml").read_text()
    edited = apply_changes(yaml.safe_load(original), **{key: PARAM_EDITS[key]})
    try:
        (ws / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        expected = dag.direct_dependents(edited, key)
        if key == "benchmarks.digits.pretrain.lr":  # and the pretrained model's cell, whose provenance records it
            models = params["grid"]["pretrain_seeds"]
            assert expected == {f"{stage}@digits-{k}" for stage in ("pretrain", "score_pretrained") for k in models}
            assert {f"finetune@digits-{k}-{m}-{s}" for k in models for m in params["grid"]["methods"]
                    for s in params["grid"]["seeds"]} <= dag.downstream(edited, expected)
        if key.endswith("normalize.mean"):
            assert {"pretrain@digits-0", "subspace@digits-0", "finetune@digits-0-sep-0"} <= expected
        if key == "verdict.margin":
            assert expected == {"verdict@digits"}
        if key.startswith("datasets."):
            assert expected == set()
        _check(ws, edited, expected)
    finally:
        (ws / "params.yaml").write_text(original)


@pytest.mark.parametrize("file", CODE_EDITS)
def test_a_code_edit_reruns_exactly_the_stages_that_run_it(recorded, file):
    ws, params = recorded
    path = ws / "src/fsood" / file
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited\n")
        expected = dag.direct_dependents(params, file, kind="code")
        assert expected, f"no stage runs {file}?"
        _check(ws, params, expected)
    finally:
        path.write_bytes(original)


@pytest.mark.trust(kind="input_changed_outside")
def test_an_input_touched_with_the_same_content_reruns_nothing(recorded):
    """What `dvc checkout` does to a file it restores: new mtime, same bytes."""
    ws, _ = recorded
    model = ws / "results/digits/model0/pretrain/model.pt"
    data = model.read_bytes()
    model.unlink()
    model.write_bytes(data)
    os.utime(model, None)
    assert snakemake_plan(ws) == (set(), set())
    assert dvc_stale(ws) == set()


@pytest.mark.trust(kind="input_changed_outside")
def test_an_input_with_other_content_reruns_what_reads_it(recorded):
    """A pretrained model replaced by hand (or by `dvc checkout` of another version): the jobs that read it
    rerun in both tools; Snakemake compares its recorded sha256, not the mtime alone."""
    ws, params = recorded
    model = ws / "results/digits/model0/pretrain/model.pt"
    original = model.read_bytes()
    try:
        model.write_bytes((ws / "results/digits/model0/oe/seed0/model.pt").read_bytes())  # another model
        own, planned = snakemake_plan(ws)
        readers = {"subspace@digits-0", "score_pretrained@digits-0",
                   *(f"finetune@digits-0-{m}-0" for m in params["grid"]["methods"])}
        assert own == {"subspace@digits-0"}  # the others read the model too, but also the subspace's outputs: masked
        assert planned == dag.downstream(params, readers)
        assert readers <= dvc_stale(ws)
    finally:
        model.write_bytes(original)
    assert snakemake_plan(ws) == (set(), set())


def _rerun_changes_only_planned_outputs(ws, params, edit: dict, tool: list[str]) -> set[str]:
    before = output_hashes(ws)
    (ws / "params.yaml").write_text(yaml.safe_dump(apply_changes(yaml.safe_load((ws / "params.yaml").read_text()),
                                                                 **edit), sort_keys=False))
    edited = yaml.safe_load((ws / "params.yaml").read_text())
    _, planned = snakemake_plan(ws)
    sh(ws, *tool)
    after = output_hashes(ws)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    stale = {producer(edited, p) for p in changed} - planned
    assert not stale, f"outputs changed by jobs outside the plan: {sorted(stale)}"
    return {producer(edited, p) for p in changed}


def test_a_rerun_by_either_tool_changes_only_planned_outputs(recorded):
    ws, params = recorded
    # DVC executes the pretrain.lr edit (the case Snakemake used to miss) ...
    changed = _rerun_changes_only_planned_outputs(ws, params, {"benchmarks.digits.pretrain.lr": 0.03},
                                                  ["dvc", "repro"])
    assert "pretrain@digits-0" in changed and "finetune@digits-0-sep-0" in changed
    assert dvc_stale(ws) == set()
    # ... Snakemake, whose records are now stale, realigns without recomputing (README) ...
    sh(ws, sys.executable, "-m", "snakemake", "--touch", "--cores", "1", "all")
    assert snakemake_plan(ws) == (set(), set())
    # ... and executes a method's edit: only that method's cells and the report change.
    changed = _rerun_changes_only_planned_outputs(ws, params, {"methods.sep.beta": 2.0},
                                                  [sys.executable, "-m", "snakemake", "--cores", "2", "all"])
    assert changed == {"finetune@digits-0-sep-0", "score@digits-0-sep-0", "verdict@digits", "report@digits"}
    assert snakemake_plan(ws) == (set(), set())
    sh(ws, "dvc", "commit", "-f", "-q")
    assert dvc_stale(ws) == set()


def test_a_new_pretrained_model_runs_only_its_own_jobs(recorded):
    """grid.pretrain_seeds gains a seed: both tools plan the new model's jobs (its pretraining, subspace, its
    `none` cell and every cell fine-tuned from it) and the aggregates (verdict, report), nothing of model 0."""
    ws, params = recorded
    original = (ws / "params.yaml").read_text()
    edited = apply_changes(yaml.safe_load(original), **{"grid.pretrain_seeds": [0, 1]})
    try:
        (ws / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        new = {contract.job_name(s, **cell) for s, cell in contract.jobs(edited) if cell.get("pretrain_seed") == 1}
        assert {"pretrain@digits-1", "subspace@digits-1", "score_pretrained@digits-1", "finetune@digits-1-sep-0"} <= new
        _, planned = snakemake_plan(ws)
        assert planned == new | {"verdict@digits", "report@digits"}
        stale = dvc_stale(ws)
        assert new | {"verdict@digits", "report@digits"} == stale
    finally:
        (ws / "params.yaml").write_text(original)
    assert snakemake_plan(ws) == (set(), set())

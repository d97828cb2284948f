"""The stage contracts (fsood.contract) are the one description of the pipeline: dvc.yaml, the CLI and the
Snakemake rules are made from them, and no other module names a stage's files."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from fsood import closure, contract, dag, dvcyaml


def test_committed_dvc_yaml_is_what_the_command_writes():
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == dvcyaml.render(), "dvc.yaml is stale: run `python -m fsood dvc-yaml` and commit it"


def test_dvc_yaml_command_writes_the_file(tmp_path):
    out = tmp_path / "dvc.yaml"
    proc = subprocess.run([sys.executable, "-m", "fsood", "dvc-yaml", "--output", str(out)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == dvcyaml.render()


def test_dvc_stages_declare_the_contracts_params_code_and_outputs():
    stages = yaml.safe_load(dvcyaml.render())["stages"]
    assert list(stages) == list(contract.STAGES)
    for name, s in contract.STAGES.items():
        entry = stages[name]
        assert entry["params"] == [k.replace("{benchmark}", "${item.benchmark}").replace("{method}", "${item.method}")
                                   for k in s.params]
        assert [d for d in entry["deps"] if d.startswith("src/")] == [f"src/fsood/{f}".rstrip("/") for f in s.code_files()]
        outs = [next(iter(o)) if isinstance(o, dict) else o for g in ("outs", "metrics", "plots") for o in entry.get(g, [])]
        assert len(outs) == len(s.outputs)
        assert set(entry["matrix"]) == set(s.wildcards)


@pytest.mark.parametrize("name", list(contract.STAGES))
def test_cli_subcommand_takes_exactly_the_stages_wildcards(name):
    from fsood.cli import _parser

    s = contract.stage(name)
    argv = [name] + [a for w in s.wildcards for a in (contract.option(w), "0" if w in contract.INT_WILDCARDS
                                                       else "digits")]
    args = _parser().parse_args(argv)
    assert {k for k in contract.GRID_KEYS if hasattr(args, k)} == set(s.wildcards)


def test_overlaps_matches_keys_above_below_and_through_wildcards():
    assert dag.overlaps("benchmarks.{benchmark}.data", "benchmarks.digits.data.normalize.mean")
    assert dag.overlaps("benchmarks.{benchmark}.data.normalize", "benchmarks.digits.data")  # an edit above
    assert not dag.overlaps("benchmarks.{benchmark}.data.normalize", "benchmarks.digits.data.n_ood")
    assert not dag.overlaps("methods.{method}", "score.tpr")
    assert dag.overlaps("runtime", "runtime.threads")


def test_direct_dependents_of_the_two_reported_edits():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    seeds = params["grid"]["seeds"]
    # pretrain.lr: pretraining, one job a pretrained model (the rest follows through its model), and the pretrained
    # model's own cell, whose provenance records the pretraining params
    models = params["grid"]["pretrain_seeds"]
    assert dag.direct_dependents(params, "benchmarks.digits.pretrain.lr") == {
        f"{stage}@digits-{k}" for stage in ("pretrain", "score_pretrained") for k in models}
    # data.normalize: every stage that feeds images to a model declares it, not only the data stage
    hit = dag.direct_dependents(params, "benchmarks.digits.data.normalize")
    assert {"data@digits", "pretrain@digits-0", "subspace@digits-0", "score_pretrained@digits-0",
            "finetune@digits-0-sep-0", "score@digits-0-sep-0"} <= hit
    assert not any(h.startswith(("report@", "verdict@")) for h in hit)
    # one method's value: that method's cells only
    assert dag.direct_dependents(params, "methods.sep.beta") == {
        f"{stage}@digits-{k}-sep-{s}" for stage in ("finetune", "score") for k in models for s in seeds}
    # the verdict's settings: the verdict and the report that prints it (through verdict.json)
    assert dag.direct_dependents(params, "verdict.margin") == {"verdict@digits"}


def test_import_closure_follows_function_level_imports_and_leaves_out_the_harness():
    assert "datasets/registry.py" in closure.import_closure(("fsood.stages.pretrain",))  # inside a function
    pretrain = contract.stage("pretrain").code_files()
    assert "datasets/" in pretrain and contract.stage("pretrain").runs("datasets/registry.py")  # one folder
    assert "stages/pretrain.py" in pretrain and "__init__.py" in pretrain
    assert "cli.py" not in pretrain and "contract.py" not in pretrain
    assert "plots.py" not in pretrain and "scores.py" not in pretrain  # the report's and the score's code
    assert "plots.py" in contract.stage("report").code_files()
    assert "paper_results.yaml" in contract.stage("report").code_files()


def test_code_hash_changes_with_a_files_content(tmp_path, monkeypatch):
    pkg = tmp_path / "fsood"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stages/__init__.py").write_text("")
    (pkg / "stages/x.py").write_text("def run():\n    from fsood import helper\n")
    (pkg / "helper.py").write_text("A = 1\n")
    monkeypatch.setattr(closure, "SRC", pkg)
    closure.import_closure.cache_clear()
    closure.code_hash.cache_clear()
    try:
        s = contract.Stage("x", "", ("benchmark",), "out/{benchmark}", {"o": contract.Output("o")},
                           entry=("fsood.stages.x",))
        assert s.code_files() == ["__init__.py", "helper.py", "stages/__init__.py", "stages/x.py"]
        before = s.code_hash()
        (pkg / "helper.py").write_text("A = 2\n")
        closure.code_hash.cache_clear()
        after = s.code_hash()
        assert [f for f in before if before[f] != after[f]] == ["helper.py"]
        (pkg / "datasets").mkdir()  # a whole package: one entry, whose hash follows any file in it
        (pkg / "datasets/__init__.py").write_text("")
        (pkg / "datasets/a.py").write_text("B = 1\n")
        (pkg / "helper.py").write_text("from fsood.datasets import a\n")
        closure.import_closure.cache_clear()
        closure.code_hash.cache_clear()
        assert s.code_files() == ["__init__.py", "datasets/", "helper.py", "stages/__init__.py", "stages/x.py"]
        before = s.code_hash()
        (pkg / "datasets/list.txt").write_text("x\n")
        closure.code_hash.cache_clear()
        assert s.code_hash()["datasets/"] != before["datasets/"]
    finally:
        closure.import_closure.cache_clear()
        closure.code_hash.cache_clear()


def test_no_other_module_names_a_stages_files():
    """Output file names and folder templates live in fsood.contract alone."""
    names = {o.name for s in contract.STAGES.values() for o in s.outputs.values() if o.name}
    names |= {s.folder.split("/{")[0] + "/{" for s in contract.STAGES.values()}
    offenders = []
    for path in (ROOT / "src/fsood").rglob("*.py"):
        if path.name == "contract.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {n!r}" for n in names if re.search(re.escape(f'"{n}'), text)]
    assert not offenders, offenders


def test_readme_stage_table_lists_each_stages_declared_params():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| stage | CLI | params it reads |"):].split("\n\n")[0]
    rows = {r.split("|")[1].strip(): r.split("|")[3] for r in table.splitlines()[2:]}
    assert list(rows) == list(contract.STAGES)
    for name, cell in rows.items():
        listed = re.findall(r"`([^`]+)`", cell)
        declared = [k.replace("{benchmark}", "B").replace("{method}", "M") for k in contract.stage(name).params]
        assert sorted(k for k in listed if k != "provenance.json") == sorted(declared), name


def test_the_report_imports_no_torch():
    """docs/architecture.md: the report reads caches with numpy only (no torch import, seconds saved a job)."""
    code = "import sys, fsood.stages.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_report_computes_no_score_again():
    """docs/architecture.md: the report reads the score stage's scores.npz; no detector or evaluation code is
    among what it runs, so an edit of a score reruns the score jobs, and the report only through their outputs."""
    code = contract.stage("report").code_files()
    assert "stages/report.py" in code
    assert not [f for f in code if f.startswith("detectors/") or f == "evaluation.py"], code
    assert "scores" in contract.stage("report").inputs


"""Declared = used, proven by running the stages: every stage of the digits benchmark runs in a fresh
process (tests/audit_stage.py) with params that record each key read, and no stage may read a params
key, import an fsood module or open a package file that its contract (fsood.contract) does not declare.
Each declared params key must also be read (no needless reruns)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, edit_params, make_workspace
from fsood import closure, contract

pytestmark = pytest.mark.slow

# More methods and scores than TINY: the audit should walk every code path a digits run can take.
METHODS = ["oe", "sep", "dal", "sep_energy"]
SCORES = ["fs", "fs_text", "msp", "energy", "maxlogit", "abs_cos", "react", "knn", "mahalanobis", "vim", "neco", "nci"]


def _jobs() -> list[tuple[str, dict]]:
    one, model = {"benchmark": "digits"}, {"benchmark": "digits", "pretrain_seed": 0}
    out = [("data", one), ("pretrain", model), ("subspace", model), ("score_pretrained", model)]
    out += [(stage, {**model, "method": m, "seed": 0}) for m in METHODS for stage in ("finetune", "score")]
    return out + [("verdict", one), ("report", one)]


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> dict[tuple[str, str], dict]:
    ws = make_workspace(tmp_path_factory.mktemp("audit") / "ws", git=False)
    # one pretraining epoch runs the same code as three; fine-tuning keeps TINY's two (stage I, then II)
    edit_params(ws, **{**TINY, "grid.methods": METHODS, "score.scores": SCORES, "benchmarks.digits.pretrain.epochs": 1})
    records = {}
    for stage, cell in _jobs():
        out = ws / f"audit-{stage}-{'-'.join(map(str, cell.values()))}.json"
        args = [a for k, v in cell.items() for a in (contract.option(k), str(v))]
        proc = subprocess.run([sys.executable, str(ROOT / "tests/audit_stage.py"), str(out), stage, *args], cwd=ws,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{stage} {cell} failed:\n{proc.stderr[-3000:]}"
        records[(stage, contract.job_name(contract.stage(stage), **cell))] = {**json.loads(out.read_text()),
                                                                              "cell": cell}
    return records


def _within(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


@pytest.mark.parametrize("stage", list(contract.STAGES))
def test_no_stage_reads_a_params_key_it_does_not_declare(audited, stage):
    for (name, job), rec in audited.items():
        if name != stage:
            continue
        s = contract.stage(stage)
        declared = [k.format(**rec["cell"]) for k in s.params + s.untracked]
        undeclared = [k for k in rec["keys"] if not _within(k, declared)]
        assert not undeclared, f"{job} reads {undeclared}, not declared in its contract"
        unread = [d for d in s.param_keys(**rec["cell"])
                  if not any(_within(k, [d]) or d.startswith(k + ".") for k in rec["keys"])]
        assert not unread, f"{job} declares {unread} but never reads them: an edit would rerun it for nothing"


@pytest.mark.parametrize("stage", list(contract.STAGES))
def test_no_stage_imports_a_module_or_opens_a_file_it_does_not_declare(audited, stage):
    s = contract.stage(stage)
    for (name, job), rec in audited.items():
        if name != stage:
            continue
        files = [closure._module_file(m) for m in rec["modules"] if m not in closure.HARNESS]
        undeclared = sorted(f for f in files if f is not None and not s.runs(f))
        assert not undeclared, f"{job} imports {undeclared}, not in its declared code"
        assert "stages/" + stage + ".py" in files  # the audit saw the stage run
        opened = [f for f in rec["files"] if not s.runs(f)]
        assert not opened, f"{job} opens package files {opened} it does not declare"


def test_the_audit_can_fail(tmp_path):
    """The recorder sees a read through every access path the stages use."""
    sys.path.insert(0, str(ROOT / "tests"))
    from audit_stage import Tracked, leaves

    log: set[str] = set()
    p = Tracked({"a": {"b": 1, "c": {"d": 2}}, "e": 3}, "", log)
    _ = p["a"]["b"], p.get("zz"), json.dumps(p["a"]["c"]), {**p["a"]}
    assert leaves(log) == ["a.b", "a.c.d", "zz"]
    log.clear()
    _ = [v for v in p.values()]
    assert "e" in leaves(log)
    assert Path(ROOT / "tests/audit_stage.py").is_file()

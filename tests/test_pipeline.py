"""The whole pipeline on a tiny grid, run the way a user runs it: Snakemake, then DVC."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY, edit_params, make_workspace

pytestmark = pytest.mark.slow


def sh(ws, *cmd, check=True):
    proc = subprocess.run(cmd, cwd=ws, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A workspace after `snakemake --cores 2 all` on the tiny grid, committed with DVC and git."""
    ws = make_workspace(tmp_path_factory.mktemp("pipeline") / "ws")
    edit_params(ws, **TINY)
    sh(ws, "git", "commit", "-qam", "tiny grid")
    sh(ws, sys.executable, "-m", "snakemake", "--cores", "2", "all")
    return ws


def test_every_cell_has_its_folder_metrics_and_log(finished):
    for method in TINY["grid.methods"]:
        cell = finished / "results/digits" / method / "seed0"
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["cell"] == f"digits-{method}-0"
        assert metrics["convention"]["positive"] == "id"
        assert set(metrics["scores"]) == {"fs", "msp", "energy", "maxlogit", "abs_cos"}
        assert set(metrics["scores"]["fs"]) == {"digits_5_9", "photo_china", "gaussian", "rademacher", "blobs", "mean"}
        assert 0 <= metrics["scores"]["fs"]["mean"]["fpr95"] <= 100
        assert (cell / "model.pt").stat().st_size > 1000 and (cell / "cache.npz").is_file()
        for stage in ("finetune", "score"):
            log = finished / "logs" / stage / f"digits-{method}-0.log"
            assert f"{stage} done" in log.read_text()
    assert (finished / "results/digits/subspace/seed0/nc.json").is_file()
    for name in ("summary.md", "summary.csv", "summary.json", "projection.png"):
        assert (finished / "reports/digits" / name).stat().st_size > 0
    leftovers = [p for p in finished.rglob(".*tmp*") if ".git" not in p.parts]
    assert not leftovers, leftovers


def test_dvc_records_the_snakemake_run_then_follows_a_param_change(finished):
    ws = finished
    sh(ws, "dvc", "commit", "-f", "-q")
    status = sh(ws, "dvc", "status").stdout
    assert "up to date" in status, status
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "recorded run")

    edit_params(ws, **{"benchmarks.digits.finetune.lr": 0.05})
    stale = sh(ws, "dvc", "status").stdout
    assert "finetune@digits-sep-0" in stale and "pretrain@digits-0" not in stale
    repro = sh(ws, "dvc", "repro").stdout
    assert "Running stage 'finetune@digits-sep-0'" in repro
    assert "Running stage 'pretrain@digits-0'" not in repro  # untouched params: not rerun
    diff = json.loads(sh(ws, "dvc", "metrics", "diff", "--json").stdout)
    sep = diff["results/digits/sep/seed0/metrics.json"]
    changed = [k for k, v in sep.items() if v.get("diff")]
    assert any(k.startswith("scores.fs.") for k in changed), sorted(sep)[:10]
    assert "results/digits/none/seed0/metrics.json" not in diff  # the pretrained model did not move
    assert "up to date" in sh(ws, "dvc", "status").stdout


def test_one_cell_rebuilt_by_dvc_alone(finished):
    ws = finished
    metrics = ws / "results/digits/oe/seed0/metrics.json"
    before = metrics.read_bytes()
    sh(ws, "dvc", "repro", "-f", "-s", "score@digits-oe-0")
    assert metrics.read_bytes() == before


def test_snakemake_report_bundles_figures(finished):
    proc = sh(finished, sys.executable, "-m", "snakemake", "--report", "report.html")
    html = (finished / "report.html").read_text(errors="replace")
    assert "projection.png" in html and "fpr95_heatmap.png" in html
    assert "Fig. 2" in html  # a caption from workflow/report/
    # every caption renders: docutils reports a bad one (e.g. |...| read as a substitution) as (ERROR/3)
    assert "ERROR/" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    assert "ERROR/" not in html and "Undefined substitution" not in html
    assert "|cos(z_out, w_i)|" in html  # the curves caption's literal, shown as written


@pytest.mark.trust(kind="rerun_after_dvc")
def test_snakemake_realigns_after_dvc_changed_results(finished):
    """DVC reran cells with a new lr (above): Snakemake sees inputs it never made and wants to
    rerun; `snakemake --touch` records the DVC-made state without recomputing anything."""
    dry = sh(finished, sys.executable, "-m", "snakemake", "-n", "--cores", "1", "all").stdout
    assert "Nothing to be done" not in dry
    metrics = finished / "results/digits/sep/seed0/metrics.json"
    before = metrics.read_bytes()
    sh(finished, sys.executable, "-m", "snakemake", "--touch", "--cores", "1", "all")
    assert metrics.read_bytes() == before
    dry = sh(finished, sys.executable, "-m", "snakemake", "-n", "--cores", "1", "all").stdout
    assert "Nothing to be done" in dry, dry[-2000:]
    assert "up to date" in sh(finished, "dvc", "status").stdout

"""The report stage on a synthetic results tree: tables, DVC metrics, figures, failures."""
from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fsood import contract
from fsood.config import validate_params
from fsood.io import load_npz, save_npz, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
METHODS, SEEDS = ["oe", "sep"], [0, 1]
OOD_SETS = ["digits_5_9", "photo_china", "gaussian"]  # the schema allows only real set names
C, D = 3, 8
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["grid"].update(benchmarks=["digits"], methods=list(METHODS), seeds=list(SEEDS))
    params["benchmarks"] = {"digits": params["benchmarks"]["digits"]}
    params["benchmarks"]["digits"]["data"]["ood_sets"] = list(OOD_SETS)
    params["benchmarks"]["digits"]["data"]["id_classes"] = list(range(C))
    params["report"].update(projection_seed=SEEDS[0], projection_classes=[0, 1], projection_ood={"digits": "photo_china"},
                            max_points=30)
    return validate_params(params, "test params")


def fake_cache(method: str, seed: int) -> dict[str, np.ndarray]:
    """ID features cluster along their class weight; OOD sets lie nearer the origin / off span(W)."""
    rng = np.random.default_rng([seed, len(method)])
    weight = rng.normal(size=(C, D))
    labels = np.repeat(np.arange(C), 20)
    feats = 4.0 * weight[labels] + rng.normal(size=(labels.size, D))
    cache = {"fc_weight": weight.astype(np.float32), "fc_bias": np.zeros(C, np.float32)}
    sets = {"id_test": (feats, labels),
            "digits_5_9": (2.0 * weight[rng.integers(0, C, 50)] + 2.0 * rng.normal(size=(50, D)), None),
            "photo_china": (rng.normal(size=(50, D)), None),
            "gaussian": (3.0 * rng.normal(size=(50, D)), None)}
    for name, (z, y) in sets.items():
        cache[f"{name}__features"] = z.astype(np.float32)
        cache[f"{name}__logits"] = (z @ weight.T).astype(np.float32)
        cache[f"{name}__labels"] = y if y is not None else np.full(len(z), -1, np.int64)
    return cache


def build_tree(root: Path, params: dict, extra_methods=()) -> dict:
    """results/digits/<method>/seed<s>/{cache.npz,scores.npz,metrics.json} and subspace nc.json; returns metrics."""
    from fsood import nc
    from fsood.evaluation import flat_scores, metrics_from_cache, score_cache

    written = {}
    for method in [*METHODS, *extra_methods]:
        for seed in SEEDS:
            out = contract.outs("score", benchmark="digits", method=method, seed=seed)
            cache = fake_cache(method, seed)
            metrics = metrics_from_cache(cache, params["score"])
            metrics.update(cell=f"digits-{method}-{seed}", benchmark="digits", method=method, seed=seed)
            save_npz(root / out["cache"], cache)
            save_npz(root / out["scores"], flat_scores(score_cache(cache, params["score"])))
            write_json(root / out["metrics"], metrics)
            written[method, seed] = metrics
            history = contract.outs("finetune", benchmark="digits", method=method, seed=seed)
            epochs = np.arange(6)
            write_text(root / history["history"], pd.DataFrame({
                "epoch": epochs, "lr": 0.1 / (1 + epochs), "id_train_acc": 0.9 + 0.01 * epochs, "ce": 1.0 / (1 + epochs),
                "clu": -0.5 - 0.05 * epochs, "oe": 2.0 - 0.1 * epochs, "ood_abs_cos": 0.5 / (1 + epochs + seed),
                "sep": 1.5 / (1 + epochs + seed), "total": 3.0 / (1 + epochs),
                "stage": np.where(epochs >= 3, 2.0, 1.0)}).to_csv(index=False))
    cache = fake_cache("pretrained", 0)  # the one pretrained model of the benchmark
    m = nc.nc_metrics(cache["id_test__features"], cache["id_test__labels"], cache["fc_weight"])
    write_json(root / contract.outs("subspace", benchmark="digits")["nc"], {k: round(v, 6) for k, v in m.items()})
    return written


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Runs the report once in a fresh interpreter, so we can check that torch is never imported."""
    root = tmp_path_factory.mktemp("report")
    params = make_params()
    # A stale cell outside the grid: the report must not pick it up.
    written = build_tree(root, params, extra_methods=["energy_oe"])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    script = "\n".join([
        "import logging, sys, time, yaml",
        "from fsood.stages import report",
        "logging.basicConfig(level=logging.INFO)",
        "params = yaml.safe_load(open('params.yaml'))",
        "start = time.perf_counter()",
        "report.run(params, 'digits')",
        "print(f'ELAPSED {time.perf_counter() - start:.2f}')",
        "assert 'torch' not in sys.modules, 'the report imported torch'",
    ])
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    outputs = contract.outs("report", benchmark="digits")
    return {"root": root, "params": params, "metrics": written, "files": {k: root / p for k, p in outputs.items()},
            "log": proc.stderr, "elapsed": float(proc.stdout.split("ELAPSED")[1])}


def test_all_outputs_written_and_logged(reported):
    for key, path in reported["files"].items():
        assert path.is_file(), key
        assert f"wrote {path.relative_to(reported['root'])}" in reported["log"]
    assert sorted(p.name for p in reported["files"]["nc"].parent.iterdir()) == sorted(p.name for p in contract.outs("report", benchmark="digits").values())


def _values(reported, method: str, score: str, ood_set: str, metric: str) -> np.ndarray:
    return np.array([reported["metrics"][method, s]["scores"][score][ood_set][metric] for s in SEEDS])


def test_summary_csv_mean_std_match_numpy(reported):
    df = pd.read_csv(reported["files"]["table_csv"])
    assert list(df.columns) == ["method", "score", "ood_set", "metric", "mean", "std", "n_seeds"]
    assert set(df["method"]) == set(METHODS)  # not the stale energy_oe cell
    assert set(df["score"]) == set(reported["params"]["score"]["scores"])
    for method, score, ood_set, metric in [("sep", "fs", "digits_5_9", "fpr95"), ("oe", "msp", "mean", "auroc"),
                                           ("sep", "energy", "gaussian", "aupr_out")]:
        row = df[(df.method == method) & (df.score == score) & (df.ood_set == ood_set) & (df.metric == metric)]
        assert len(row) == 1
        vals = _values(reported, method, score, ood_set, metric)
        assert row["mean"].item() == pytest.approx(vals.mean(), abs=1e-4)
        assert row["std"].item() == pytest.approx(vals.std(ddof=1), abs=1e-4)
        assert row["n_seeds"].item() == len(SEEDS)
    acc = df[(df.method == "oe") & (df.metric == "id_accuracy")]
    expected = np.array([reported["metrics"]["oe", s]["id_accuracy"] for s in SEEDS])
    assert acc["mean"].iloc[0] == pytest.approx(expected.mean(), abs=1e-4)
    assert acc["std"].iloc[0] == pytest.approx(expected.std(ddof=1), abs=1e-4)


def test_summary_markdown(reported):
    text = reported["files"]["table_md"].read_text()
    convention = reported["metrics"]["oe", 0]["convention"]
    assert "benchmark `digits`" in text and "2 seed(s)" in text
    assert convention["fpr95"] in text and "Positive class: **ID**" in text
    assert "higher score = more ID" in text and "say nothing about" in text
    paired_part, all_part = text.split("## Every score")
    all_part, comparison_part = all_part.split("## Paired per-seed differences")
    # sep minus oe per seed, in the paper's pairing (fs vs msp), then on one score (fs vs fs)
    diffs = [line for line in comparison_part.splitlines() if line.startswith("| sep |") and " vs " in line]
    assert len(diffs) == 2 and "`fs` vs `msp`" in diffs[0] and "`fs` vs `fs`" in diffs[1]
    per_seed = [reported["metrics"]["sep", s]["scores"]["fs"]["mean"]["fpr95"]
                - reported["metrics"]["oe", s]["scores"]["msp"]["mean"]["fpr95"] for s in SEEDS]
    assert diffs[0].split(" | ")[2] == ", ".join(f"{d:+.1f}" for d in per_seed)
    assert "## Features: Neural Collapse and span(W)" in comparison_part
    assert [line.split(" | ")[0] for line in comparison_part.splitlines()[-len(METHODS):]] == [f"| {m}" for m in METHODS]
    table = lambda part: [line for line in part.splitlines()  # noqa: E731
                          if line.startswith("| ") and not line.startswith("| method")]
    # the paper's pairing leads: OE with MSP, the paper's method with Eq. 6
    paired = table(paired_part)
    assert [r.split(" | ")[:2] for r in paired] == [["| oe", "msp"], ["| sep", "fs"]]
    oe_msp = _values(reported, "oe", "msp", "mean", "auroc")
    assert f"{oe_msp.mean():.2f} ± {oe_msp.std(ddof=1):.2f}" in paired[0]
    rows = table(all_part)
    assert len(rows) == len(METHODS) * len(reported["params"]["score"]["scores"])
    assert [r.split(" | ")[0][2:] for r in rows[:2]] == METHODS  # grid order
    assert all("**fs**" in r for r in rows[:2])  # main score first
    assert "energy_oe" not in text
    mean = _values(reported, "sep", "fs", "digits_5_9", "fpr95")
    assert f"{mean.mean():.2f} ± {mean.std(ddof=1):.2f}" in rows[1]


def test_summary_json_is_flat_dvc_metrics(reported):
    data = json.loads(reported["files"]["summary"].read_text())
    assert set(data) == set(METHODS)
    for method in METHODS:
        assert set(data[method]) == {"id_accuracy", *reported["params"]["score"]["scores"]}
        for score in reported["params"]["score"]["scores"]:
            assert set(data[method][score]) == {"mean"}
            for metric in ("fpr95", "auroc"):
                vals = _values(reported, method, score, "mean", metric)
                entry = data[method][score]["mean"][metric]
                assert entry["mean"] == pytest.approx(vals.mean(), abs=1e-4)
                assert entry["std"] == pytest.approx(vals.std(ddof=1), abs=1e-4)


@pytest.mark.parametrize("key", ["histograms", "projection", "heatmap", "nc"])
def test_pngs_are_valid_and_non_trivial(reported, key):
    data = reported["files"][key].read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000


def test_missing_metrics_fails_before_writing(tmp_path, monkeypatch):
    from fsood.stages import report

    monkeypatch.chdir(tmp_path)
    params = make_params()
    build_tree(Path("."), params)
    missing = contract.outs("score", benchmark="digits", method="sep", seed=1)["metrics"]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="score stage") as err:
        report.run(params, "digits")
    assert str(missing) in str(err.value)
    out = contract.out("report", "nc", benchmark="digits").parent
    assert not out.exists() or not any(out.iterdir())


def test_histograms_show_the_scores_the_score_stage_wrote():
    """The report draws scores.npz as it is (no detector refitted): what a cell stored is what is plotted."""
    from fsood.stages import report

    stored = {m: {f"fs__{name}": np.full(4, i + 10.0 * j) for j, name in enumerate(["id_test", "photo_china"])}
              for i, m in enumerate(["oe", "sep"])}
    frame = report.histogram_frame(stored, ["oe", "sep"], ["photo_china"], "fs")
    got = frame.groupby(["method", "set"])["score"].agg(["mean", "size"])
    assert got.loc[("sep", "photo_china")].tolist() == [11.0, 4] and got.loc[("oe", "id_test")].tolist() == [0.0, 4]


def test_scores_lacking_the_main_score_are_stale_and_nothing_is_written(tmp_path, monkeypatch):
    from fsood.stages import report

    monkeypatch.chdir(tmp_path)
    params = make_params()
    build_tree(Path("."), params)
    path = contract.outs("score", benchmark="digits", method="sep", seed=params["report"]["projection_seed"])["scores"]
    main = params["score"]["main"]
    save_npz(path, {k: v for k, v in load_npz(path).items() if not k.startswith(f"{main}__")})
    with pytest.raises(ValueError, match=f"scores.npz lacks .*'{main}__id_test'.*rerun its score stage"):
        report.run(params, "digits")
    out = contract.out("report", "nc", benchmark="digits").parent
    assert not out.exists() or not any(out.iterdir())


def test_missing_subspace_nc_names_its_stage(tmp_path, monkeypatch):
    from fsood.stages import report

    monkeypatch.chdir(tmp_path)
    params = make_params()
    build_tree(Path("."), params)
    nc_path = contract.outs("subspace", benchmark="digits")["nc"]
    nc_path.unlink()
    with pytest.raises(FileNotFoundError, match="subspace stage") as err:
        report.run(params, "digits")
    assert str(nc_path) in str(err.value)


def test_failed_rerun_keeps_previous_outputs_and_no_temp_files(reported, tmp_path, monkeypatch):
    """A rerun that fails (stale cell lacking a score) leaves the earlier report intact, no dot files."""
    from fsood.stages import report

    root = tmp_path / "copy"
    shutil.copytree(reported["root"], root)
    monkeypatch.chdir(root)
    params = copy.deepcopy(reported["params"])
    before = {p.name: p.read_bytes() for p in Path("reports/digits").iterdir()}
    metrics_path = Path("results/digits/oe/seed0/metrics.json")
    stale = json.loads(metrics_path.read_text())
    del stale["scores"]["msp"]
    metrics_path.write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="stale"):
        report.run(params, "digits")
    after = {p.name: p.read_bytes() for p in Path("reports/digits").iterdir()}
    assert after == before
    assert not [n for n in after if n.startswith(".")]


def test_projection_methods_prefers_oe_and_sep():
    from fsood.stages.report import projection_methods

    assert projection_methods(["none", "oe", "energy_oe", "sep"]) == ["oe", "sep"]
    assert projection_methods(["none", "energy_oe", "sep"]) == ["sep", "energy_oe"]
    assert projection_methods(["none"]) == []


def test_projection_axes_orthonormal_and_third_axis_off_span():
    from fsood import nc
    from fsood.stages.report import projection_axes

    cache = fake_cache("oe", 0)
    axes = projection_axes(cache["fc_weight"], 0, 1, cache["photo_china__features"])
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-10)
    w = cache["fc_weight"].astype(np.float64)
    np.testing.assert_allclose(axes[0], w[0] / np.linalg.norm(w[0]), atol=1e-6)
    basis = nc.principal_basis(w)
    assert np.linalg.norm(basis.T @ axes[2]) < 1e-8  # u is orthogonal to span(W)


def test_projection_without_fine_tuned_methods_draws_message():
    from fsood import plots
    from fsood.stages.report import _projection_figure

    params = make_params()
    params["grid"]["methods"] = ["none"]
    fig = _projection_figure(params, "digits", caches={})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "no fine-tuned methods in the grid" in texts
    assert plots.to_png(fig)[:8] == PNG_MAGIC


def test_paper_comparison_for_a_benchmark_the_paper_does_not_cover(reported):
    from fsood import paper

    text = reported["files"]["paper_md"].read_text()
    assert "publishes no numbers for `digits`" in text and "say nothing about" in text
    assert reported["files"]["paper_csv"].read_text().strip() == ",".join(paper.COLUMNS)
    assert "paper" not in json.loads(reported["files"]["summary"].read_text())


def test_report_sets_published_numbers_beside_the_cells(reported, monkeypatch):
    """Published entries for the fixture's benchmark (built by hand: the file itself has only the
    paper's benchmarks) come out beside the seeds' mean, in the CSV, Markdown and summary.json."""
    from fsood import paper
    from fsood.stages import report

    monkeypatch.chdir(reported["root"])
    params = reported["params"]
    inputs = report.load_inputs(params, "digits")
    entry = {"table": 2, "method": "oe", "score": "fs", "set": "mean", "start": "test-start", "fpr95": 10.0,
             "auroc": 90.0, "convention": "id_positive", "source": "test"}
    inputs["paper"] = {"source": {"version": "test-version"}, "benchmarks": {"digits": {"entries": [
        entry, {**entry, "method": "dal"}, {**entry, "method": "sep", "set": "gaussian", "fpr95": None,
                                            "note": "not published: test"}]}}}
    outputs = report.build_outputs(params, "digits", inputs)
    assert set(outputs) == set(contract.stage("report").outputs)
    df = pd.read_csv(io.StringIO(outputs["paper_csv"]))
    assert list(df.columns) == paper.COLUMNS and len(df) == 6
    oe = df[(df.method == "oe") & (df.metric == "fpr95")].iloc[0]
    vals = _values(reported, "oe", "fs", "mean", "fpr95")
    assert oe.status == "measured" and oe.n_seeds == len(SEEDS)
    assert oe.measured_mean == pytest.approx(vals.mean(), abs=1e-4)
    assert oe.measured_std == pytest.approx(vals.std(ddof=1), abs=1e-4)
    assert oe.difference == pytest.approx(vals.mean() - 10.0, abs=1e-4)
    assert set(df[df.method == "dal"].status) == {"not run"}
    sep = df[(df.method == "sep") & (df.metric == "fpr95")].iloc[0]
    assert sep.status == "not published"
    assert sep.measured_mean == pytest.approx(_values(reported, "sep", "fs", "gaussian", "fpr95").mean(), abs=1e-4)
    assert "test-version" in outputs["paper_md"] and "not run: method 'dal'" in outputs["paper_md"]
    pre = params["benchmarks"]["digits"]["pretrain"]
    assert (f"- Measured cells start from: a CE model trained here, stopped after epoch {pre['epochs']} of a "
            f"{pre['schedule_epochs']}-epoch cosine schedule.") in outputs["paper_md"]
    assert "| 2 | oe | fs | test-start |" in outputs["paper_md"]  # each entry names its start
    assert outputs["summary"]["paper"]["oe"]["fs"]["published"] == {"fpr95": 10.0, "auroc": 90.0}
    assert set(outputs["summary"]) == {*METHODS, "paper"}


def test_malformed_published_numbers_stop_the_report_before_writing(tmp_path, monkeypatch):
    from fsood import paper
    from fsood.stages import report

    monkeypatch.chdir(tmp_path)
    params = make_params()
    build_tree(Path("."), params)
    bad = tmp_path / "paper_results.yaml"
    bad.write_text(yaml.safe_dump({"source": {"version": "v2"}, "benchmarks": {"cifar10": {"entries": [
        {"table": 2, "method": "oe", "score": "msp", "set": "svhn", "fpr95": 140.0, "auroc": 99.0,
         "convention": "id_positive", "source": "v2"}]}}}))
    monkeypatch.setattr(paper, "PAPER_RESULTS", bad)
    with pytest.raises(paper.PaperResultsError, match=r"entries\[0\] \(oe/msp/svhn\): fpr95 140.0"):
        report.run(params, "digits")
    out = contract.out("report", "nc", benchmark="digits").parent
    assert not out.exists() or not any(out.iterdir())


def _headline_expected(reported, method: str, score: str) -> dict:
    cells = [reported["metrics"][method, s] for s in SEEDS]
    cos = lambda c, name: c["separation"][name]["cos_to_span"]  # noqa: E731
    return {"fpr95": _values(reported, method, score, "mean", "fpr95"),
            "auroc": _values(reported, method, score, "mean", "auroc"),
            "id_acc": np.array([c["id_accuracy"] for c in cells]),
            "cos_span_id": np.array([cos(c, "id_test") for c in cells]),
            "cos_span_ood": np.array([np.mean([cos(c, o) for o in OOD_SETS]) for c in cells])}


def test_headline_holds_each_methods_paired_numbers(reported):
    path = reported["files"]["headline"]
    data = json.loads(path.read_text())
    assert path.stat().st_size < 1500  # a dozen numbers, not every score x set
    assert set(data) == {"nc1_pretrained", *METHODS}  # not the stale energy_oe cell
    assert set(data["oe"]) == {"msp"} and set(data["sep"]) == {"fs"}  # the paper's pairing (A.8)
    for method, score in (("oe", "msp"), ("sep", "fs")):
        entry, expected = data[method][score], _headline_expected(reported, method, score)
        assert set(entry) == {"fpr95", "fpr95_std", "auroc", "auroc_std", "id_acc", "cos_span_id", "cos_span_ood"}
        for key, values in expected.items():
            assert entry[key] == pytest.approx(values.mean(), abs=1e-4), key
        for key in ("fpr95", "auroc"):
            assert entry[f"{key}_std"] == pytest.approx(expected[key].std(ddof=1), abs=1e-4)
    nc1 = json.loads((reported["root"] / contract.out("subspace", "nc", benchmark="digits")).read_text())["nc1"]
    assert data["nc1_pretrained"] == pytest.approx(nc1, abs=1e-4)


def test_headline_follows_the_configured_pairing(reported):
    from fsood.stages.report import headline_json

    params = copy.deepcopy(reported["params"])
    params["score"]["pairing"] = {"default": "energy", "methods": {"oe": "maxlogit"}}
    data = headline_json(reported["metrics"], {"nc1": 1.5}, params, "digits")
    assert set(data["oe"]) == {"maxlogit"} and set(data["sep"]) == {"energy"}
    assert data["sep"]["energy"]["auroc"] == pytest.approx(_values(reported, "sep", "energy", "mean", "auroc").mean(),
                                                           abs=1e-4)
    assert data["nc1_pretrained"] == pytest.approx(1.5)


def test_pairing_with_an_unscored_score_is_refused():
    params = make_params()
    params["score"]["pairing"]["methods"]["sep"] = "knn"  # a valid score, but not in score.scores
    with pytest.raises(Exception, match=r"score.pairing pairs method 'sep' with score 'knn', which is not in score.scores"):
        validate_params(params, "test params")


def test_the_default_grid_has_few_default_metric_columns():
    """`dvc exp show` / `dvc metrics diff` print every leaf of the `kind="metrics"` outputs: for the default
    grid that is headline.json alone, a few dozen columns at most, not every score x set x cell."""
    from fsood.stages.report import headline_json

    declared = [(s.name, k) for s in contract.STAGES.values() for k, o in s.outputs.items() if o.kind == "metrics"]
    assert declared == [("report", "headline")]
    params = validate_params(yaml.safe_load((ROOT / "params.yaml").read_text()), "params.yaml")
    grid, sets = params["grid"], params["benchmarks"]["digits"]["data"]["ood_sets"]
    cell = {"scores": {s: {"mean": {"fpr95": 50.0, "auroc": 90.0}} for s in params["score"]["scores"]},
            "id_accuracy": 99.0, "separation": {n: {"cos_to_span": 0.5} for n in ["id_test", *sets]}}
    metrics = {(m, s): cell for m in grid["methods"] for s in grid["seeds"]}
    data = headline_json(metrics, {"nc1": 0.1}, params, "digits")
    leaves = [v for method in grid["methods"] for entry in data[method].values() for v in entry.values()]
    assert len(leaves) + 1 == 1 + 7 * len(grid["methods"]) <= 30  # + nc1_pretrained

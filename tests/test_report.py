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
METHODS, MODELS, SEEDS = ["oe", "sep"], [0, 1], [0, 1]
CELLS = [(m, k, s) for m in METHODS for k in MODELS for s in SEEDS]
OOD_SETS = ["digits_5_9", "photo_china", "gaussian"]  # the schema allows only real set names
NATURAL = ["digits_5_9", "photo_china"]  # gaussian is a synthetic sanity set (score.synthetic_sets)
C, D = 3, 8
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["grid"].update(benchmarks=["digits"], pretrain_seeds=list(MODELS), methods=list(METHODS), seeds=list(SEEDS))
    params["benchmarks"] = {"digits": params["benchmarks"]["digits"]}
    params["benchmarks"]["digits"]["data"]["ood_sets"] = list(OOD_SETS)
    params["benchmarks"]["digits"]["data"]["id_classes"] = list(range(C))
    params["report"].update(projection_seed=SEEDS[0], projection_classes=[0, 1], projection_ood={"digits": "photo_china"},
                            max_points=30)
    params["verdict"]["bootstrap"]["resamples"] = 20
    return validate_params(params, "test params")


def fake_cache(method: str, seed: int, model: int = 0) -> dict[str, np.ndarray]:
    """ID features cluster along their class weight; OOD sets lie nearer the origin / off span(W)."""
    rng = np.random.default_rng([seed, len(method), model])
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


def _score_cell(root: Path, params: dict, out: dict, cache: dict, cell: dict) -> dict:
    from fsood.evaluation import flat_scores, metrics_from_cache, score_cache

    metrics = metrics_from_cache(cache, params["score"], {"mean": NATURAL})
    metrics.update(cell=contract.cell_name(*cell.values()), **cell)
    save_npz(root / out["cache"], cache)
    save_npz(root / out["scores"], flat_scores(score_cache(cache, params["score"])))
    write_json(root / out["metrics"], metrics)
    return metrics


def build_tree(root: Path, params: dict, extra_methods=()) -> dict:
    """results/digits/model<k>/<method>/seed<s>/{cache.npz,scores.npz,metrics.json,history.csv}, each
    model's none cell and subspace nc.json, then the verdict stage's verdict.json; returns the metrics keyed
    (method, model, seed), none's with seed None."""
    import os

    from fsood import nc
    from fsood.stages import verdict

    written = {}
    for method, k, seed in CELLS + [(m, k, s) for m in extra_methods for k in MODELS for s in SEEDS]:
        cell = {"benchmark": "digits", "pretrain_seed": k, "method": method, "seed": seed}
        out = contract.outs("score", **cell)
        written[method, k, seed] = _score_cell(root, params, out, fake_cache(method, seed, k), cell)
        history = contract.outs("finetune", **cell)
        epochs = np.arange(6)
        write_text(root / history["history"], pd.DataFrame({
            "epoch": epochs, "lr": 0.1 / (1 + epochs), "id_train_acc": 0.9 + 0.01 * epochs, "ce": 1.0 / (1 + epochs),
            "clu": -0.5 - 0.05 * epochs, "oe": 2.0 - 0.1 * epochs, "ood_abs_cos": 0.5 / (1 + epochs + seed),
            "sep": 1.5 / (1 + epochs + seed), "total": 3.0 / (1 + epochs),
            "stage": np.where(epochs >= 3, 2.0, 1.0)}).to_csv(index=False))
    for k in MODELS:  # each pretrained model: its own cell (method none) and its NC metrics
        cache = fake_cache("pretrained", 0, k)
        model = {"benchmark": "digits", "pretrain_seed": k}
        written["none", k, None] = _score_cell(root, params, contract.outs("score_pretrained", **model), cache,
                                               {**model, "method": "none"})
        m = nc.nc_metrics(cache["id_test__features"], cache["id_test__labels"], cache["fc_weight"])
        write_json(root / contract.outs("subspace", **model)["nc"], {k: round(v, 6) for k, v in m.items()})
    here = os.getcwd()
    os.chdir(root)
    try:
        verdict.run(params, "digits")
    finally:
        os.chdir(here)
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
    written = [p.name for stage in ("verdict", "report") for p in contract.outs(stage, benchmark="digits").values()]
    assert sorted(p.name for p in reported["files"]["nc"].parent.iterdir()) == sorted(written)


def _cells(reported, method: str) -> list[dict]:
    return [m for (who, k, s), m in sorted(reported["metrics"].items(), key=str) if who == method]


def _values(reported, method: str, score: str, ood_set: str, metric: str) -> np.ndarray:
    """The method's cells' values (every pretrained model and seed; none: one a model)."""
    return np.array([m["scores"][score][ood_set][metric] for m in _cells(reported, method)])


def test_summary_csv_mean_std_match_numpy(reported):
    df = pd.read_csv(reported["files"]["table_csv"])
    assert list(df.columns) == ["method", "score", "ood_set", "metric", "mean", "std", "n_cells"]
    assert set(df["method"]) == {"none", *METHODS}  # not the stale energy_oe cell
    assert set(df["ood_set"]) == {*OOD_SETS, "mean", "id_test"}  # every set; "mean" the natural ones
    assert set(df["score"]) == set(reported["params"]["score"]["scores"])
    for method, score, ood_set, metric in [("sep", "fs", "digits_5_9", "fpr95"), ("oe", "msp", "mean", "auroc"),
                                           ("sep", "energy", "gaussian", "aupr_out")]:
        row = df[(df.method == method) & (df.score == score) & (df.ood_set == ood_set) & (df.metric == metric)]
        assert len(row) == 1
        vals = _values(reported, method, score, ood_set, metric)
        assert row["mean"].item() == pytest.approx(vals.mean(), abs=1e-4)
        assert row["std"].item() == pytest.approx(vals.std(ddof=1), abs=1e-4)
        assert row["n_cells"].item() == len(MODELS) * len(SEEDS)
    none = df[(df.method == "none") & (df.score == "msp") & (df.ood_set == "mean") & (df.metric == "fpr95")]
    assert none["n_cells"].item() == len(MODELS)  # one cell a pretrained model
    acc = df[(df.method == "oe") & (df.metric == "id_accuracy")]
    expected = np.array([m["id_accuracy"] for m in _cells(reported, "oe")])
    assert acc["mean"].iloc[0] == pytest.approx(expected.mean(), abs=1e-4)
    assert acc["std"].iloc[0] == pytest.approx(expected.std(ddof=1), abs=1e-4)


def test_summary_markdown(reported):
    text = reported["files"]["table_md"].read_text()
    convention = reported["metrics"]["oe", 0, 0]["convention"]
    assert "benchmark `digits`" in text and "2 pretrained model(s) [0, 1] x 2 fine-tuning seed(s) [0, 1]" in text
    assert convention["fpr95"] in text and "Positive class: **ID**" in text
    assert "higher score = more ID" in text and "say nothing about" in text
    verdict_part, rest = text.split("## The paper's pairing")
    assert "## Verdict" in verdict_part and json.loads(reported["files"]["summary"].parent.joinpath(
        "verdict.json").read_text())["outcome"] in verdict_part  # the verdict leads the summary
    paired_part, all_part = rest.split("## Every score")
    all_part, sanity_part = all_part.split("## Synthetic sanity sets")
    sanity_part, comparison_part = sanity_part.split("## Paired differences")
    # sep minus oe per pair of cells (model-seed), in the paper's pairing (fs vs msp), then on one score (fs vs fs)
    diffs = [line for line in comparison_part.splitlines() if line.startswith("| sep |") and " vs " in line]
    assert len(diffs) == 2 and "`fs` vs `msp`" in diffs[0] and "`fs` vs `fs`" in diffs[1]
    per_pair = [reported["metrics"]["sep", k, s]["scores"]["fs"]["mean"]["fpr95"]
                - reported["metrics"]["oe", k, s]["scores"]["msp"]["mean"]["fpr95"] for k in MODELS for s in SEEDS]
    assert diffs[0].split(" | ")[2] == ", ".join(f"{d:+.1f}" for d in per_pair)
    assert "## Features: Neural Collapse and span(W)" in comparison_part
    assert [line.split(" | ")[0] for line in comparison_part.splitlines()[-3:]] == ["| none", "| oe", "| sep"]
    table = lambda part: [line for line in part.splitlines()  # noqa: E731
                          if line.startswith("| ") and not line.startswith("| method")]
    # the paper's pairing leads: the pretrained model and OE with MSP, the paper's method with Eq. 6
    paired = table(paired_part)
    assert [r.split(" | ")[:2] for r in paired] == [["| none", "msp"], ["| oe", "msp"], ["| sep", "fs"]]
    oe_msp = _values(reported, "oe", "msp", "mean", "auroc")
    assert f"{oe_msp.mean():.2f} ± {oe_msp.std(ddof=1):.2f}" in paired[1]
    assert "gaussian" not in paired_part  # the synthetic set is in no mean and no headline table ...
    sanity = table(sanity_part)  # ... but in its own: cells rejecting it, k of n
    fpr = _values(reported, "sep", "fs", "gaussian", "fpr95")
    assert f"rejected in {int((fpr <= 5.0).sum())} of {len(fpr)}" in next(r for r in sanity if r.startswith("| sep"))
    rows = table(all_part)
    assert len(rows) == (1 + len(METHODS)) * len(reported["params"]["score"]["scores"])
    assert [r.split(" | ")[0][2:] for r in rows[:3]] == ["none", *METHODS]  # the pretrained model, then grid order
    assert all("**fs**" in r for r in rows[:3])  # main score first
    assert "energy_oe" not in text
    mean = _values(reported, "sep", "fs", "digits_5_9", "fpr95")
    assert f"{mean.mean():.2f} ± {mean.std(ddof=1):.2f}" in rows[2]


def test_summary_json_is_flat_dvc_metrics(reported):
    data = json.loads(reported["files"]["summary"].read_text())
    assert set(data) == {"none", *METHODS}
    for method in ["none", *METHODS]:
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
    missing = contract.outs("score", benchmark="digits", pretrain_seed=0, method="sep", seed=1)["metrics"]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="score stage") as err:
        report.run(params, "digits")
    assert str(missing) in str(err.value)
    assert not any(p.exists() for p in contract.outs("report", benchmark="digits").values())  # nothing written


def test_histograms_show_the_scores_the_score_stage_wrote():
    """The report draws scores.npz as it is (no detector refitted): what a cell stored is what is plotted."""
    from fsood import tables

    stored = {m: {f"fs__{name}": np.full(4, i + 10.0 * j) for j, name in enumerate(["id_test", "photo_china"])}
              for i, m in enumerate(["oe", "sep"])}
    frame = tables.histogram_frame(stored, ["oe", "sep"], ["photo_china"], "fs")
    got = frame.groupby(["method", "set"])["score"].agg(["mean", "size"])
    assert got.loc[("sep", "photo_china")].tolist() == [11.0, 4] and got.loc[("oe", "id_test")].tolist() == [0.0, 4]


def test_scores_lacking_the_main_score_are_stale_and_nothing_is_written(tmp_path, monkeypatch):
    from fsood.stages import report

    monkeypatch.chdir(tmp_path)
    params = make_params()
    build_tree(Path("."), params)
    path = contract.outs("score", benchmark="digits", pretrain_seed=0, method="sep", seed=params["report"]["projection_seed"])["scores"]
    main = params["score"]["main"]
    save_npz(path, {k: v for k, v in load_npz(path).items() if not k.startswith(f"{main}__")})
    with pytest.raises(ValueError, match=f"scores file of digits sep lacks .*'{main}__id_test'.*rerun its score stage"):
        report.run(params, "digits")
    assert not any(p.exists() for p in contract.outs("report", benchmark="digits").values())  # nothing written


def test_missing_subspace_nc_names_its_stage(tmp_path, monkeypatch):
    from fsood.stages import report

    monkeypatch.chdir(tmp_path)
    params = make_params()
    build_tree(Path("."), params)
    nc_path = contract.outs("subspace", benchmark="digits", pretrain_seed=0)["nc"]
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
    metrics_path = Path("results/digits/model0/oe/seed0/metrics.json")
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

    assert projection_methods(["oe", "energy_oe", "sep"]) == ["oe", "sep"]
    assert projection_methods(["energy_oe", "sep"]) == ["sep", "energy_oe"]
    assert projection_methods([]) == []


def test_projection_axes_orthonormal_and_third_axis_off_span():
    from fsood import nc
    from fsood.nc import projection_axes

    cache = fake_cache("oe", 0)
    axes = projection_axes(cache["fc_weight"], 0, 1, cache["photo_china__features"])
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-10)
    w = cache["fc_weight"].astype(np.float64)
    np.testing.assert_allclose(axes[0], w[0] / np.linalg.norm(w[0]), atol=1e-6)
    basis = nc.principal_basis(w)
    assert np.linalg.norm(basis.T @ axes[2]) < 1e-8  # u is orthogonal to span(W)


def test_projection_without_fine_tuned_methods_draws_message():
    from fsood import plots

    fig = plots.projection_figure(make_params()["report"], "digits", caches={}, pretrain_seed=0)
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
    assert oe.status == "measured" and oe.n_cells == len(MODELS) * len(SEEDS)
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
    assert set(outputs["summary"]) == {"none", *METHODS, "paper"}


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
    assert not any(p.exists() for p in contract.outs("report", benchmark="digits").values())  # nothing written


def _headline_expected(reported, method: str, score: str) -> dict:
    cells = _cells(reported, method)
    cos = lambda c, name: c["separation"][name]["cos_to_span"]  # noqa: E731
    return {"fpr95": _values(reported, method, score, "mean", "fpr95"),
            "auroc": _values(reported, method, score, "mean", "auroc"),
            "id_acc": np.array([c["id_accuracy"] for c in cells]),
            "cos_span_id": np.array([cos(c, "id_test") for c in cells]),
            "cos_span_ood": np.array([np.mean([cos(c, o) for o in NATURAL]) for c in cells])}


def test_headline_holds_each_methods_paired_numbers(reported):
    path = reported["files"]["headline"]
    data = json.loads(path.read_text())
    assert path.stat().st_size < 1500  # a dozen numbers, not every score x set
    assert set(data) == {"nc1_pretrained", "none", *METHODS, "verdict"}  # not the stale energy_oe cell
    assert set(data["none"]) == {"msp"} and set(data["oe"]) == {"msp"} and set(data["sep"]) == {"fs"}  # A.8
    for method, score in (("none", "msp"), ("oe", "msp"), ("sep", "fs")):
        entry, expected = data[method][score], _headline_expected(reported, method, score)
        assert set(entry) == {"fpr95", "fpr95_std", "auroc", "auroc_std", "id_acc", "cos_span_id", "cos_span_ood"}
        for key, values in expected.items():
            assert entry[key] == pytest.approx(values.mean(), abs=1e-4), key
        for key in ("fpr95", "auroc"):
            assert entry[f"{key}_std"] == pytest.approx(expected[key].std(ddof=1), abs=1e-4)
    nc1 = [json.loads((reported["root"] / contract.out("subspace", "nc", benchmark="digits", pretrain_seed=k))
                      .read_text())["nc1"] for k in MODELS]
    assert data["nc1_pretrained"] == pytest.approx(np.mean(nc1), abs=1e-4)
    verdict = json.loads((reported["root"] / contract.out("verdict", "verdict", benchmark="digits")).read_text())
    assert data["verdict"] == {"difference": verdict["mean"], "t_low": verdict["t_interval"][0],
                               "t_high": verdict["t_interval"][1],
                               "p_sign_flip": round(verdict["sign_flip"]["p_one_sided"], 4)}


def test_headline_follows_the_configured_pairing(reported):
    from fsood.tables import headline_json

    params = copy.deepcopy(reported["params"])
    params["score"]["pairing"] = {"default": "energy", "methods": {"oe": "maxlogit"}}
    data = headline_json(reported["metrics"], {0: {"nc1": 1.5}, 1: {"nc1": 2.5}}, params["score"], METHODS, NATURAL)
    assert set(data["oe"]) == {"maxlogit"} and set(data["sep"]) == {"energy"} and set(data["none"]) == {"energy"}
    assert data["sep"]["energy"]["auroc"] == pytest.approx(_values(reported, "sep", "energy", "mean", "auroc").mean(),
                                                           abs=1e-4)
    assert data["nc1_pretrained"] == pytest.approx(2.0)


def test_pairing_with_an_unscored_score_is_refused():
    params = make_params()
    params["score"]["pairing"]["methods"]["sep"] = "knn"  # a valid score, but not in score.scores
    with pytest.raises(Exception, match=r"score.pairing pairs method 'sep' with score 'knn', which is not in score.scores"):
        validate_params(params, "test params")


def test_the_default_grid_has_few_default_metric_columns():
    """`dvc exp show` / `dvc metrics diff` print every leaf of the `kind="metrics"` outputs: for the default
    grid that is headline.json alone, a few dozen columns at most, not every score x set x cell."""
    from fsood.config import natural_sets
    from fsood.tables import headline_json

    declared = [(s.name, k) for s in contract.STAGES.values() for k, o in s.outputs.items() if o.kind == "metrics"]
    assert declared == [("report", "headline")]
    params = validate_params(yaml.safe_load((ROOT / "params.yaml").read_text()), "params.yaml")
    grid, sets = params["grid"], params["benchmarks"]["digits"]["data"]["ood_sets"]
    cell = {"scores": {s: {"mean": {"fpr95": 50.0, "auroc": 90.0}} for s in params["score"]["scores"]},
            "id_accuracy": 99.0, "separation": {n: {"cos_to_span": 0.5} for n in ["id_test", *sets]}}
    metrics = {(m, k, s): cell for m in grid["methods"] for k in grid["pretrain_seeds"] for s in grid["seeds"]}
    metrics.update({("none", k, None): cell for k in grid["pretrain_seeds"]})
    verdict = {"outcome": "inconclusive", "mean": 1.0, "t_interval": [-1.0, 3.0], "sign_flip": {"p_one_sided": 0.5}}
    data = headline_json(metrics, {0: {"nc1": 0.1}}, params["score"], grid["methods"],
                         natural_sets(params, "digits"), verdict)
    leaves = [v for method in ["none", *grid["methods"]] for entry in data[method].values() for v in entry.values()]
    assert len(leaves) + 1 + len(data["verdict"]) == 1 + 7 * (1 + len(grid["methods"])) + 4 <= 40

"""The verdict (fsood.verdict, the verdict stage) on fabricated scores whose answer is known: the claim
supported, not supported (no effect, within the equivalence margin), and inconclusive; and its parts by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from fsood import contract, verdict
from fsood.config import validate_params
from fsood.io import save_npz, write_json
from fsood.metrics import ood_metrics

ROOT = Path(__file__).resolve().parents[1]
MODELS, SEEDS = [0, 1, 2, 3, 4], [0, 1]
NATURAL = ["digits_5_9", "photo_china"]
SETS = [*NATURAL, "gaussian"]  # gaussian: a synthetic sanity set, in no endpoint
N_ID, N_OOD = 400, 200


def _params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["grid"].update(benchmarks=["digits"], pretrain_seeds=MODELS, methods=["oe", "sep"], seeds=SEEDS)
    params["benchmarks"]["digits"]["data"]["ood_sets"] = SETS
    params["verdict"]["bootstrap"]["resamples"] = 200
    return validate_params(params, "test params")


def _cell(root: Path, method: str, k: int, s: int, score: str, ood_shift: float) -> None:
    """A cell whose ``score`` puts ID near 1 and each OOD set at ``ood_shift`` (higher: more overlap). The noise
    is the cell pair's (model, seed): the method and the baseline score the same test images."""
    rng = np.random.default_rng([k, s])
    arrays = {f"{score}__id_test": rng.normal(1.0, 0.3, N_ID)}
    arrays.update({f"{score}__{name}": rng.normal(ood_shift, 0.3, N_OOD) for name in SETS})
    metrics = {"scores": {score: {name: {k2: 100 * v for k2, v in ood_metrics(arrays[f"{score}__id_test"],
                                                                             arrays[f"{score}__{name}"]).items()}
                                  for name in SETS}}}
    out = contract.outs("score", benchmark="digits", pretrain_seed=k, method=method, seed=s)
    save_npz(root / out["scores"], arrays)
    write_json(root / out["metrics"], metrics)


def _run(tmp_path: Path, monkeypatch, shift: dict) -> dict:
    """Fabricate every cell of oe (MSP) and sep (fs) with ``shift[(method, model, seed)]``, run the stage."""
    from fsood.stages import verdict as stage

    monkeypatch.chdir(tmp_path)
    for k in MODELS:
        for s in SEEDS:
            _cell(tmp_path, "oe", k, s, "msp", shift["oe", k, s])
            _cell(tmp_path, "sep", k, s, "fs", shift["sep", k, s])
    stage.run(_params(), "digits")
    assert (tmp_path / contract.out("verdict", "forest", benchmark="digits")).read_bytes()[:4] == b"\x89PNG"
    return json.loads((tmp_path / contract.out("verdict", "verdict", benchmark="digits")).read_text())


def test_a_method_better_on_every_pretrained_model_is_supported(tmp_path, monkeypatch):
    shift = {**{("oe", k, s): 0.6 for k in MODELS for s in SEEDS}, **{("sep", k, s): 0.0 for k in MODELS for s in SEEDS}}
    result = _run(tmp_path, monkeypatch, shift)
    assert result["outcome"] == "supported", result["reason"]
    assert result["wins"] == 5 and result["t_interval"][1] < 0 and result["mean"] < -20
    assert result["sign_flip"]["p_one_sided"] == pytest.approx(1 / 32)  # every model better: the smallest p
    assert result["bootstrap"]["high"] < 0
    assert result["design"]["sets"] == NATURAL and result["design"]["method_score"] == "fs"
    assert result["design"]["baseline_score"] == "msp"  # the paper's pairing by default


def test_the_same_scores_for_both_are_not_supported_by_equivalence(tmp_path, monkeypatch):
    shift = {(m, k, s): 0.3 for m in ("oe", "sep") for k in MODELS for s in SEEDS}
    result = _run(tmp_path, monkeypatch, shift)
    assert result["outcome"] == "not supported", result["reason"]
    assert "equivalent within ±1" in result["reason"]
    low, high = result["t_interval_equivalence"]
    assert -1 < low and high < 1


def test_a_method_that_helps_some_models_and_hurts_others_is_inconclusive(tmp_path, monkeypatch):
    signs = {0: 1, 1: -1, 2: 1, 3: -1, 4: 1}
    shift = {**{("oe", k, s): 0.5 for k in MODELS for s in SEEDS},
             **{("sep", k, s): 0.5 + 0.25 * signs[k] for k in MODELS for s in SEEDS}}
    result = _run(tmp_path, monkeypatch, shift)
    assert result["outcome"] == "inconclusive", result["reason"]
    low, high = result["t_interval"]
    assert low < 0 < high and result["wins"] == 2


def test_a_method_worse_everywhere_is_not_supported(tmp_path, monkeypatch):
    shift = {**{("oe", k, s): 0.0 for k in MODELS for s in SEEDS}, **{("sep", k, s): 0.6 for k in MODELS for s in SEEDS}}
    result = _run(tmp_path, monkeypatch, shift)
    assert result["outcome"] == "not supported" and "worse" in result["reason"]


def test_a_grid_without_the_baseline_says_so(tmp_path, monkeypatch):
    from fsood.stages import verdict as stage

    monkeypatch.chdir(tmp_path)
    params = _params()
    params["grid"]["methods"] = ["sep"]
    stage.run(params, "digits")
    result = json.loads((tmp_path / contract.out("verdict", "verdict", benchmark="digits")).read_text())
    assert result == {"outcome": "not computed", "reason": "not computed: grid.methods ['sep'] lacks ['oe']"}


def test_sign_flip_test_by_hand():
    # 3 models, all negative: of the 8 sign patterns only the observed one is as far below 0
    flip = verdict.sign_flip_test(np.array([-1.0, -2.0, -3.0]), better=-1.0)
    assert flip["p_one_sided"] == pytest.approx(1 / 8) and flip["p_two_sided"] == pytest.approx(2 / 8)
    # means of the patterns of (+1, -2): (+1-2)/2=-0.5, (+1+2)/2=1.5, (-1-2)/2=-1.5, (-1+2)/2=0.5; observed -0.5
    flip = verdict.sign_flip_test(np.array([1.0, -2.0]), better=-1.0)
    assert flip["p_one_sided"] == pytest.approx(2 / 4) and flip["p_two_sided"] == pytest.approx(4 / 4)


def test_t_interval_by_hand():
    low, high = verdict.t_interval(np.array([1.0, 2.0, 3.0]), 0.95)
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2), sd 1
    assert (low, high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert verdict.t_interval(np.array([5.0]), 0.95) == (-math.inf, math.inf)


def test_decide_by_hand():
    assert verdict.decide(-3, (-5, -1), (-4.5, -1.5), 0.03, 0.05, 1.0, -1)[0] == "supported"
    assert verdict.decide(-3, (-5, -1), (-4.5, -1.5), 0.06, 0.05, 1.0, -1)[0] == "inconclusive"  # p too large
    assert verdict.decide(0.1, (-0.9, 1.1), (-0.7, 0.9), 0.4, 0.05, 1.0, -1)[0] == "not supported"
    assert verdict.decide(3, (1, 5), (1.5, 4.5), 0.97, 0.05, 1.0, -1)[0] == "not supported"
    assert verdict.decide(1, (-2, 4), (-1.5, 3.5), 0.3, 0.05, 1.0, -1)[0] == "inconclusive"
    assert verdict.decide(3, (1, 5), (1.5, 4.5), 0.03, 0.05, 1.0, +1)[0] == "supported"  # AUROC: higher is better

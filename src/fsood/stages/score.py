"""Stage 5, score: one forward pass per set into a cache, then every score from the cache (scores.npz,
which the report's histograms read) and the metrics.

The cache holds ID test, every OOD set of the manifest (main ``ood_sets`` and, where the
benchmark has them, ``hard_ood_sets``: the paper's Table 11), a capped ID-train subset for the fitted
detectors (``score.fit_samples``) and, when ``odin`` or ``mahalanobis`` with input
pre-processing (``score.options.mahalanobis.epsilon`` > 0) is scored, their scores: both need
input gradients, so each gets its own pass here.
"""
from __future__ import annotations

import logging

import numpy as np

from fsood import contract, provenance
from fsood import runtime as rt
from fsood.config import paired_score, score_params
from fsood.detectors import Mahalanobis
from fsood.detectors.gradient import mahalanobis_scores, odin_scores
from fsood.evaluation import FIT_SET, TRAIN_SIZE, fitted_detector, flat_scores, metrics_from_cache, score_cache
from fsood.inference import forward_pass, take
from fsood.io import save_npz, write_json, write_text
from fsood.metrics import roc_points
from fsood.stages.common import benchmark_data, load_model, normalization, prepared
from fsood.subsets import SUBSET_SEED, balanced_subset

log = logging.getLogger(__name__)

FIT_SUBSET_SEED = SUBSET_SEED  # the same ID-train subset for every cell of a benchmark
ROC_POINTS = 200  # points of roc.csv: enough for a smooth curve, a few kB a cell


def _gradient_passes(model, x, runtime, device, norm, score_cfg: dict, maha: Mahalanobis | None) -> dict:
    """The extra input-gradient passes of one (non-fit) set: ODIN and pre-processed Mahalanobis."""
    out = {}
    if "odin" in score_cfg["scores"]:
        odin = score_cfg["options"]["odin"]
        out["odin"] = odin_scores(model, x, runtime, device, norm, odin["temperature"], odin["epsilon"])
    if maha is not None:
        out["mahalanobis"] = mahalanobis_scores(model, x, runtime, device, norm, maha)
    return out


def build_cache(params: dict, benchmark: str, model, device, data, fit_pass=None) -> dict[str, np.ndarray]:
    """Logits and features of the ID-train subset, ID test and every OOD set, the classifier (W, b) and the
    extra input-gradient passes (ODIN; Mahalanobis with pre-processing, fitted on the ID-train subset).
    ``fit_pass``: the ID-train subset's (logits, features) when a forward pass already made them (the
    pretrained model's, from the subspace stage); otherwise this model's forward pass makes them."""
    norm = normalization(params, benchmark, data)
    score_cfg = score_params(params, benchmark)
    cache = {
        "fc_weight": model.fc.weight.detach().cpu().float().numpy(),
        "fc_bias": model.fc.bias.detach().cpu().float().numpy(),
    }
    maha = None
    for name in [FIT_SET, "id_test", *data.ood_sets, *data.manifest.get("hard_ood_sets", [])]:  # fit set first
        x, y = data.load(name)
        if name == FIT_SET:
            cache[TRAIN_SIZE] = np.int64(len(y))
            keep = balanced_subset(y, score_cfg["fit_samples"], FIT_SUBSET_SEED)
            x, y = take(x, keep), y[keep]
            logits, feats = fit_pass(keep) if fit_pass is not None else forward_pass(model, x, params["runtime"],
                                                                                     device, norm)
        else:
            logits, feats = forward_pass(model, x, params["runtime"], device, norm)
        cache[f"{name}__logits"], cache[f"{name}__features"], cache[f"{name}__labels"] = logits, feats, y
        if name == FIT_SET:
            maha = _preprocessed_mahalanobis(score_cfg, cache)
            continue
        for score, values in _gradient_passes(model, x, params["runtime"], device, norm, score_cfg, maha).items():
            cache[f"{name}__{score}"] = values
    if "odin" in score_cfg["scores"]:
        cache["odin_temperature"] = np.float64(score_cfg["options"]["odin"]["temperature"])
        cache["odin_epsilon"] = np.float64(score_cfg["options"]["odin"]["epsilon"])
    if maha is not None:
        cache["mahalanobis_epsilon"] = np.float64(maha.epsilon)
    return cache


def _preprocessed_mahalanobis(score_cfg: dict, cache: dict) -> Mahalanobis | None:
    """The fitted Mahalanobis detector when it is scored with input pre-processing (epsilon > 0), else None."""
    if "mahalanobis" not in score_cfg["scores"] or score_cfg["options"]["mahalanobis"]["epsilon"] == 0:
        return None
    return fitted_detector("mahalanobis", score_cfg, cache)


def metric_groups(manifest: dict, synthetic: list[str]) -> dict[str, list[str]]:
    """``mean`` over the natural OOD sets (every main set but the synthetic sanity sets, ``score.synthetic_sets``:
    the paper's Tables 1-2 average the real sets only); ``hard_mean`` over the hard-OOD sets (the paper's
    Table 11), if any. Every set keeps its own row."""
    groups = {"mean": [s for s in manifest["ood_sets"] if s not in synthetic]}
    if manifest.get("hard_ood_sets"):
        groups["hard_mean"] = list(manifest["hard_ood_sets"])
    return groups


def roc_csv(scores: dict, score_cfg: dict, method: str, ood_sets: list[str]) -> str:
    """The ROC curve (ID positive) of the method's paired score, ID test against the natural OOD sets pooled,
    as CSV (fpr, tpr, threshold) for ``dvc plots``. ``scores``: :func:`score_cache`'s, which holds the paired
    score (params validation refuses a pairing with a score that is not scored)."""
    per_set = scores[paired_score(score_cfg, method)]
    points = roc_points(per_set["id_test"], np.concatenate([per_set[name] for name in ood_sets]), ROC_POINTS)
    rows = [f"{f:.6f},{t:.6f},{h:.9g}" for f, t, h in zip(points["fpr"], points["tpr"], points["threshold"])]
    return "\n".join(["fpr,tpr,threshold", *rows]) + "\n"


def run(params: dict, benchmark: str, pretrain_seed: int, method: str, seed: int) -> None:
    """Score one fine-tuned cell."""
    cell = provenance.cell_of(benchmark, pretrain_seed, method, seed)
    device = rt.configure(params["runtime"], seed)
    data = benchmark_data(benchmark)
    ckpt = contract.out("finetune", "model", **cell)
    model = prepared(load_model(params, benchmark, data, ckpt), params, data, device)
    write_outputs(params, cell, build_cache(params, benchmark, model, device, data), data.manifest)


def write_outputs(params: dict, cell: dict, cache: dict, manifest: dict) -> None:
    """The cache, every score (scores.npz), the metrics, the ROC and, last, provenance.json of one cell."""
    stage = "score_pretrained" if cell["method"] == contract.NONE else "score"
    out = contract.outs(stage, **{w: cell[w] for w in contract.stage(stage).wildcards})
    save_npz(out["cache"], cache)
    benchmark, method = cell["benchmark"], cell["method"]
    score_cfg = score_params(params, benchmark)
    scores = score_cache(cache, score_cfg)  # every score of every set, once: metrics, ROC and the report read them
    save_npz(out["scores"], flat_scores(scores))
    groups = metric_groups(manifest, score_cfg["synthetic_sets"])
    result = metrics_from_cache(cache, score_cfg, groups, scores)
    result.update(cell=contract.cell_name(*cell.values()), **cell)
    write_json(out["metrics"], result)
    write_text(out["roc"], roc_csv(scores, score_cfg, method, groups["mean"]))
    # last, so an interrupted job leaves no record of outputs that were not all written
    write_json(out["provenance"], provenance.build(params, cell, FIT_SUBSET_SEED))
    main = score_cfg["main"]
    log.info("%s: mean FPR95 %.2f AUROC %.2f (score %s), ID acc %.2f", result["cell"],
             result["scores"][main]["mean"]["fpr95"], result["scores"][main]["mean"]["auroc"], main,
             result["id_accuracy"])

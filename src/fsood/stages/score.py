"""Stage 5, score: one forward pass per test set into a cache, then every score from the cache."""
from __future__ import annotations

import logging

import numpy as np

from fsood import metrics as M
from fsood import nc, paths
from fsood import runtime as rt
from fsood.io import load_npz, save_npz, write_json
from fsood.scores import build_detector
from fsood.stages.common import benchmark_data, load_model
from fsood.train import forward_pass

log = logging.getLogger(__name__)


def build_cache(params: dict, benchmark: str, method: str, seed: int) -> dict[str, np.ndarray]:
    """Logits and features of ID test and every OOD set, plus the classifier (W, b)."""
    device = rt.configure(params["runtime"], seed)
    data = benchmark_data(benchmark)
    ckpt = paths.files(paths.CELL_DIR, paths.FINETUNE_FILES, benchmark=benchmark, method=method, seed=seed)["model"]
    model = rt.prepare_model(load_model(params, benchmark, data, ckpt), params["runtime"], device)
    norm = params["benchmarks"][benchmark]["data"]["normalize"]
    cache = {
        "fc_weight": model.fc.weight.detach().cpu().float().numpy(),
        "fc_bias": model.fc.bias.detach().cpu().float().numpy(),
    }
    for name in ["id_test", *data.ood_sets]:
        x, y = data.load(name)
        cache[f"{name}__logits"], cache[f"{name}__features"] = forward_pass(model, x, params["runtime"], device, norm)
        cache[f"{name}__labels"] = y
    return cache


def cache_sets(cache: dict[str, np.ndarray]) -> list[str]:
    return sorted({k.split("__")[0] for k in cache if "__" in k} - {"id_test"})


def score_cache(cache: dict[str, np.ndarray], score_cfg: dict) -> dict[str, dict[str, np.ndarray]]:
    """{score name: {set name: scores}} for ID test and every OOD set in the cache."""
    options = {"fs": {"mean_over_classes": score_cfg["mean_over_classes"]},
               "abs_cos": {"mean_over_classes": score_cfg["mean_over_classes"]},
               "energy": {"temperature": score_cfg["energy_temperature"]}}
    out = {}
    for score in score_cfg["scores"]:
        det = build_detector(score, **options.get(score, {}))
        out[score] = {
            name: det.score(cache[f"{name}__logits"], cache[f"{name}__features"], cache["fc_weight"])
            for name in ["id_test", *cache_sets(cache)]
        }
    return out


def metrics_from_cache(cache: dict[str, np.ndarray], score_cfg: dict) -> dict:
    """Per-score, per-OOD-set metrics in percent, their mean, ID accuracy and feature separation."""
    pct = lambda v: round(100.0 * v, 4)  # noqa: E731
    ood_sets = cache_sets(cache)
    result = {"scores": {}}
    for score, per_set in score_cache(cache, score_cfg).items():
        rows = {name: M.ood_metrics(per_set["id_test"], per_set[name], score_cfg["convention"], score_cfg["tpr"])
                for name in ood_sets}
        mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in next(iter(rows.values()))}
        result["scores"][score] = {name: {k: pct(v) for k, v in r.items()} for name, r in {**rows, "mean": mean}.items()}
    labels = cache["id_test__labels"]
    result["id_accuracy"] = pct(float((cache["id_test__logits"].argmax(1) == labels).mean()))
    basis = nc.principal_basis(cache["fc_weight"])
    result["separation"] = {
        name: {k: round(v, 6) for k, v in nc.separation_degrees(cache[f"{name}__features"], basis).items()}
        for name in ["id_test", *ood_sets]
    }
    result["nc_id_test"] = {k: round(v, 6) for k, v in nc.nc_metrics(
        cache["id_test__features"], labels, cache["fc_weight"], cache["fc_bias"]).items()}
    result["convention"] = M.describe_convention(score_cfg["convention"], score_cfg["tpr"])
    return result


def run(params: dict, benchmark: str, method: str, seed: int) -> None:
    out = paths.files(paths.CELL_DIR, paths.SCORE_FILES, benchmark=benchmark, method=method, seed=seed)
    cache = build_cache(params, benchmark, method, seed)
    save_npz(out["cache"], cache)
    result = metrics_from_cache(cache, params["score"])
    result.update(cell=f"{benchmark}-{method}-{seed}", benchmark=benchmark, method=method, seed=seed)
    write_json(out["metrics"], result)
    main = params["score"]["main"]
    log.info("%s: mean FPR95 %.2f AUROC %.2f (score %s), ID acc %.2f", result["cell"],
             result["scores"][main]["mean"]["fpr95"], result["scores"][main]["mean"]["auroc"], main,
             result["id_accuracy"])

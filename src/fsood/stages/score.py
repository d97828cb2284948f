"""Stage 5, score: one forward pass per test set into a cache, then every score from the cache."""
from __future__ import annotations

import logging

import numpy as np

from fsood import paths
from fsood import runtime as rt
from fsood.evaluation import metrics_from_cache
from fsood.io import save_npz, write_json
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

"""Stage 3, subspace: ID training features of a pretrained model, NC1-NC4, span(W), and its energies."""
from __future__ import annotations

import logging

import numpy as np

from fsood import contract, nc
from fsood import runtime as rt
from fsood.inference import forward_pass, take
from fsood.io import save_npz, write_json
from fsood.margins import ENERGY_SAMPLES, energy_summary
from fsood.stages.common import benchmark_data, load_pretrained, normalization

log = logging.getLogger(__name__)

OUTLIER_SAMPLE_SEED = 0  # the same outlier sample for every pretrained model of a benchmark


def run(params: dict, benchmark: str, pretrain_seed: int) -> None:
    device = rt.configure(params["runtime"], pretrain_seed)
    data = benchmark_data(benchmark)
    model = load_pretrained(params, benchmark, pretrain_seed, data, device)
    norm = normalization(params, benchmark, data)
    x, y = data.load("id_train")
    logits, feats = forward_pass(model, x, params["runtime"], device, norm)
    weight = model.fc.weight.detach().cpu().double().numpy()
    bias = model.fc.bias.detach().cpu().double().numpy()
    out = contract.outs("subspace", benchmark=benchmark, pretrain_seed=pretrain_seed)
    save_npz(out["features"], {"logits": logits, "features": feats, "labels": y})

    metrics = nc.nc_metrics(feats, y, weight, bias)
    basis = nc.principal_basis(weight)
    metrics["train_accuracy"] = float((logits.argmax(1) == y).mean())
    metrics["rank_w"] = int(basis.shape[1])
    means = nc.class_means(feats.astype(np.float64), y, data.num_classes)
    metrics.update({f"id_train_{k}": v for k, v in nc.separation_degrees(feats, logits, weight, means).items()})
    save_npz(out["basis"], {"basis": basis, "weight": weight, "bias": bias, "class_means": means})
    write_json(out["nc"], {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()})
    log.info("NC metrics: %s", metrics)
    write_json(out["energies"], {"id_train": energy_summary(logits),
                                 "outliers": energy_summary(outlier_logits(model, data, params, device, norm))})


def outlier_logits(model, data, params: dict, device, norm: dict) -> np.ndarray:
    """The pretrained model's logits on a fixed sample of ``ENERGY_SAMPLES`` auxiliary outliers (all if fewer)."""
    xo, _ = data.load("outliers")
    rng = np.random.default_rng(OUTLIER_SAMPLE_SEED)
    keep = np.sort(rng.choice(len(xo), size=min(ENERGY_SAMPLES, len(xo)), replace=False))
    return forward_pass(model, take(xo, keep), params["runtime"], device, norm)[0]

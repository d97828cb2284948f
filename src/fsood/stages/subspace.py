"""Stage 3, subspace: ID training features of the pretrained model, NC1-NC4, span(W)."""
from __future__ import annotations

import logging

import numpy as np

from fsood import contract, nc
from fsood import runtime as rt
from fsood.io import save_npz, write_json
from fsood.stages.common import benchmark_data, load_model, normalization
from fsood.inference import forward_pass

log = logging.getLogger(__name__)


def run(params: dict, benchmark: str) -> None:
    device = rt.configure(params["runtime"], params["benchmarks"][benchmark]["pretrain"]["seed"])
    data = benchmark_data(benchmark)
    checkpoint = contract.out("pretrain", "model", benchmark=benchmark)
    model = rt.prepare_model(load_model(params, benchmark, data, checkpoint), params["runtime"], device)
    x, y = data.load("id_train")
    logits, feats = forward_pass(model, x, params["runtime"], device, normalization(params, benchmark, data))
    weight = model.fc.weight.detach().cpu().double().numpy()
    bias = model.fc.bias.detach().cpu().double().numpy()
    out = contract.outs("subspace", benchmark=benchmark)
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

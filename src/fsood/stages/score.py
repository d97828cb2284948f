"""Stage 5, score: one forward pass per set into a cache, then every score from the cache.

The cache holds ID test, every OOD set of the manifest (main ``ood_sets`` and, where the
benchmark has them, Table 2's ``hard_ood_sets``), a capped ID-train subset for the fitted
detectors (``score.fit_samples``) and, when ``odin`` is scored, ODIN's scores: ODIN needs
input gradients, so it gets its own pass here.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from fsood import contract, provenance
from fsood import runtime as rt
from fsood.config import score_params
from fsood.evaluation import FIT_SET, metrics_from_cache
from fsood.io import save_npz, write_json
from fsood.posthoc import odin_softmax
from fsood.stages.common import benchmark_data, load_model, normalization
from fsood.train import forward_pass, normalizer

log = logging.getLogger(__name__)

FIT_SUBSET_SEED = 0  # the same ID-train subset for every cell of a benchmark


def fit_subset(labels: np.ndarray, cap: int | None, seed: int = FIT_SUBSET_SEED) -> np.ndarray:
    """Sorted indices of a class-balanced, seeded subset of at most ``cap`` samples (None: all).

    Each class is shuffled with ``seed``; samples are then taken by rank within their class
    (every class's first, then every class's second, ...), so class counts differ by at most
    one unless a class runs out.
    """
    labels = np.asarray(labels)
    if cap is None or cap >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((labels, rank))  # by rank, then class
    return np.sort(order[:cap])


def odin_scores(model: torch.nn.Module, x: np.ndarray, runtime: dict, device: torch.device, norm: dict,
                temperature: float, epsilon: float) -> np.ndarray:
    """ODIN (Liang et al. 2018) on uint8 images: max softmax at T of the perturbed normalised input.

    As the authors' code: the label is the prediction, the loss is cross-entropy of f(x)/T,
    the step is ``-epsilon * s / std_c`` with s = +1 where the input gradient is >= 0, else
    -1 (``torch.ge``, so a zero gradient counts as +1, where pytorch-ood's ``sign`` gives 0),
    and std_c the normalisation's per-channel std: eps in [0, 1] pixel units. No clamping.
    """
    model.eval()
    to_input = normalizer(norm, device)
    std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    out = []
    for start in range(0, len(x), runtime["eval_batch_size"]):
        inputs = to_input(torch.from_numpy(x[start:start + runtime["eval_batch_size"]]).to(device))
        if runtime["channels_last"]:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        inputs.requires_grad_(True)
        with torch.enable_grad(), rt.autocast(runtime, device):
            logits = model(inputs).float() / temperature
            loss = F.cross_entropy(logits, logits.argmax(1), reduction="sum")  # per-sample gradients
        (grad,) = torch.autograd.grad(loss, inputs)
        step = (torch.ge(grad, 0).float() * 2 - 1) / std
        with torch.no_grad(), rt.autocast(runtime, device):
            logits = model(inputs.detach() - epsilon * step).float()
        out.append(odin_softmax(logits.cpu().numpy(), temperature))
    return np.concatenate(out)


def build_cache(params: dict, benchmark: str, method: str, seed: int) -> dict[str, np.ndarray]:
    """Logits and features of ID test, every OOD set and the ID-train subset, the classifier (W, b), ODIN."""
    device = rt.configure(params["runtime"], seed)
    data = benchmark_data(benchmark)
    ckpt = contract.out("finetune", "model", benchmark=benchmark, method=method, seed=seed)
    model = rt.prepare_model(load_model(params, benchmark, data, ckpt), params["runtime"], device)
    norm = normalization(params, benchmark, data)
    score_cfg = score_params(params, benchmark)
    cache = {
        "fc_weight": model.fc.weight.detach().cpu().float().numpy(),
        "fc_bias": model.fc.bias.detach().cpu().float().numpy(),
    }
    odin = score_cfg["options"]["odin"] if "odin" in score_cfg["scores"] else None
    for name in ["id_test", *data.ood_sets, *data.manifest.get("hard_ood_sets", []), FIT_SET]:
        x, y = data.load(name)
        if name == FIT_SET:
            keep = fit_subset(y, score_cfg["fit_samples"])
            x, y = x[keep], y[keep]
        cache[f"{name}__logits"], cache[f"{name}__features"] = forward_pass(model, x, params["runtime"], device, norm)
        cache[f"{name}__labels"] = y
        if odin is not None and name != FIT_SET:
            cache[f"{name}__odin"] = odin_scores(model, x, params["runtime"], device, norm,
                                                 odin["temperature"], odin["epsilon"])
    if odin is not None:
        cache["odin_temperature"] = np.float64(odin["temperature"])
        cache["odin_epsilon"] = np.float64(odin["epsilon"])
    return cache


def metric_groups(manifest: dict) -> dict[str, list[str]]:
    """``mean`` over the main OOD sets; ``hard_mean`` over Table 2's hard-OOD sets where there are any."""
    groups = {"mean": list(manifest["ood_sets"])}
    if manifest.get("hard_ood_sets"):
        groups["hard_mean"] = list(manifest["hard_ood_sets"])
    return groups


def run(params: dict, benchmark: str, method: str, seed: int) -> None:
    out = contract.outs("score", benchmark=benchmark, method=method, seed=seed)
    cache = build_cache(params, benchmark, method, seed)
    save_npz(out["cache"], cache)
    score_cfg = score_params(params, benchmark)
    result = metrics_from_cache(cache, score_cfg, metric_groups(benchmark_data(benchmark).manifest))
    result.update(cell=f"{benchmark}-{method}-{seed}", benchmark=benchmark, method=method, seed=seed)
    write_json(out["metrics"], result)
    # last, so an interrupted job leaves no record of outputs that were not all written
    write_json(out["provenance"], provenance.build(params, benchmark, method, seed, FIT_SUBSET_SEED))
    main = score_cfg["main"]
    log.info("%s: mean FPR95 %.2f AUROC %.2f (score %s), ID acc %.2f", result["cell"],
             result["scores"][main]["mean"]["fpr95"], result["scores"][main]["mean"]["auroc"], main,
             result["id_accuracy"])

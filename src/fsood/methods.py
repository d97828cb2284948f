"""Fine-tuning methods as objectives: ``objective(logits, z, labels, epoch) -> (loss, terms)``.

The first ``len(labels)`` rows of ``logits``/``z`` are ID samples, the rest outliers.
Every method reports the same monitoring terms (clu, sep) so their curves compare.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fsood.losses import FeatureSeparationLoss, energy_oe_loss

METHODS = ("none", "oe", "energy_oe", "sep")


def pretrain_objective():
    def objective(logits, z, labels, epoch):
        ce = F.cross_entropy(logits, labels)
        return ce, {"ce": ce}

    return objective


def make_objective(method: str, cfg: dict, stage2_epoch: int, weight_fn: Callable[[], torch.Tensor]):
    """Objective for a fine-tuning method; ``weight_fn`` gives the W the cosine terms use."""
    if method not in METHODS or method == "none":
        raise ValueError(f"no training objective for method {method!r}; valid: {list(METHODS[1:])}")
    sep_cfg = cfg if method == "sep" else {"oe_weight": 0.0, "alpha": 1.0, "beta": 1.0,
                                          "detach_weight": True, "mean_over_classes": False}
    monitor = FeatureSeparationLoss(
        sep_cfg["oe_weight"], sep_cfg["alpha"], sep_cfg["beta"],
        sep_cfg["detach_weight"], sep_cfg["mean_over_classes"],
    )

    def objective(logits, z, labels, epoch):
        n_in = len(labels)
        stage2 = epoch >= stage2_epoch
        total, terms = monitor(logits, z, labels, weight_fn(), stage2=stage2)
        if method == "oe":
            total = terms["ce"] + cfg["oe_weight"] * terms["oe"]
        elif method == "energy_oe":
            terms["energy"] = energy_oe_loss(logits[:n_in], logits[n_in:], cfg["m_in"], cfg["m_out"])
            total = terms["ce"] + cfg["weight"] * terms["energy"]
        if method != "sep":  # monitoring only: no gradient through the cosine terms
            terms = {k: v.detach() for k, v in terms.items()}
        return total, terms

    return objective


__all__ = ["METHODS", "make_objective", "pretrain_objective"]

"""The learning-rate schedule and parameter groups of a training run: the plain recipe or the fast one.

The plain recipe (every fine-tuning run; pretraining with ``fast_recipe: null``) is the OE / energy-OOD
code's: one parameter group, cosine annealing per step from ``lr`` to ``lr_min``.

The fast recipe (``benchmarks.B.pretrain.fast_recipe``) is airbench's (arXiv:2404.00498; code
https://github.com/KellerJordan/cifar10-airbench at f1c599c, ``legacy/airbench94.py``), in the terms
of a mean-reduced loss and torch's coupled weight decay:

* the LR factor rises linearly from ``lr_start_factor`` to 1 over the first ``warmup_fraction`` of
  the steps, then falls linearly to ``lr_end_factor`` at the last step;
* BatchNorm shifts (beta) train at ``bn_bias_lr_scale`` times the LR with weight decay divided by the
  same factor, so that every parameter decays by the same lr * weight_decay per step;
* label smoothing in the cross-entropy (fsood.methods.pretrain_objective).
airbench states its LR "per 1024 examples" of a summed loss: lr_sum = 11.5 / (1024 (1 + 1 / (1 -
momentum))) with momentum 0.85, i.e. lr = 1024 * lr_sum = 1.5 for a mean loss over 1024 images; its
decoupled weight decay 0.0153 * 1024 / 7851 = 0.0020 per step is weight_decay = 0.0020 / 1.5.
Parameters with ``requires_grad`` off (a frozen whitening layer, BatchNorm scales fixed at 1) are
left out of the optimizer.
"""
from __future__ import annotations

import math

from torch import nn


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine annealing per step from lr to lr_min (the OE code's LambdaLR)."""
    return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def warmup_linear_factor(step: int, total: int, fast: dict) -> float:
    """airbench's LR factor: lr_start_factor -> 1 over warmup_fraction of the steps, then -> lr_end_factor."""
    warmup = int(total * fast["warmup_fraction"])
    if step < warmup:
        frac = step / warmup
        return fast["lr_start_factor"] * (1 - frac) + frac
    frac = (step - warmup) / max(total - warmup, 1)
    return (1 - frac) + fast["lr_end_factor"] * frac


def lr_at(step: int, total: int, cfg: dict) -> float:
    """The base LR at global step ``step`` of ``total``: the fast recipe's when ``cfg`` has one, else cosine."""
    fast = cfg.get("fast_recipe")
    if fast:
        return cfg["lr"] * warmup_linear_factor(step, total, fast)
    return cosine_lr(step, total, cfg["lr"], cfg["lr_min"])


def _is_bn_shift(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and name == "bias"


def param_groups(model: nn.Module, cfg: dict) -> list[dict]:
    """Optimizer groups, each with ``lr_scale`` (its LR over the base LR) and its weight decay.

    Plain recipe: one group of every trainable parameter. Fast recipe: BatchNorm shifts apart, at
    ``bn_bias_lr_scale`` times the LR and the weight decay divided by it.
    """
    trainable = [(m, n, p) for m in model.modules() for n, p in m.named_parameters(recurse=False) if p.requires_grad]
    fast = cfg.get("fast_recipe")
    if not fast:
        return [{"params": [p for _, _, p in trainable], "lr_scale": 1.0, "weight_decay": cfg["weight_decay"]}]
    scale = fast["bn_bias_lr_scale"]
    shifts = [p for m, n, p in trainable if _is_bn_shift(m, n)]
    rest = [p for m, n, p in trainable if not _is_bn_shift(m, n)]
    groups = [{"params": rest, "lr_scale": 1.0, "weight_decay": cfg["weight_decay"]}]
    if shifts:
        groups.append({"params": shifts, "lr_scale": scale, "weight_decay": cfg["weight_decay"] / scale})
    return groups

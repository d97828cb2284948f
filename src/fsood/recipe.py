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

Two more pieces of airbench94 (measured in benchmarks/pretrain_recipes.py, docs/benchmarks.md):

* ``lookahead`` (:class:`Lookahead`): every ``every`` steps an exponential moving average of the
  weights (BatchNorm statistics included) takes a step towards the trained weights, and the trained
  weights are reset to it; the average's decay grows as ``decay * (step / total) ** power``, so it
  does nothing early and smooths the end of the schedule; after the last step the model is the average;
* ``whiten_bias_epochs``: the bias of the frozen whitening layer trains for the first epochs only.
"""
from __future__ import annotations

import math

import torch
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


class Lookahead:
    """airbench94's ``LookaheadState``: an EMA of the model's float state that the model is reset to.

    ``update(model, step)``, after every optimizer step: at multiples of ``every``, ``ema <- ema +
    (1 - d) (model - ema)`` with ``d = decay * (step / total) ** power`` and then ``model <- ema``.
    ``finish(model)``: ``model <- ema`` (airbench's final ``update(decay=1.0)``).
    """

    def __init__(self, model: nn.Module, total_steps: int, every: int, decay: float, power: float):
        self.total, self.every, self.decay, self.power = max(total_steps, 1), every, decay, power
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def update(self, model: nn.Module, step: int) -> None:
        if step % self.every:
            return
        d = self.decay * (min(step, self.total) / self.total) ** self.power
        self._pull(model, 1.0 - d)

    def finish(self, model: nn.Module) -> None:
        self._pull(model, 0.0)

    @torch.no_grad()
    def _pull(self, model: nn.Module, weight: float) -> None:
        state = model.state_dict()
        for key, ema in self.ema.items():
            ema.lerp_(state[key], weight)
            state[key].copy_(ema)

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.ema.items()}

    def load_state_dict(self, state: dict) -> None:
        for key, ema in self.ema.items():
            ema.copy_(state[key])


def lookahead_for(model: nn.Module, cfg: dict, total_steps: int) -> Lookahead | None:
    """The run's :class:`Lookahead` when its fast recipe has one, else None."""
    spec = (cfg.get("fast_recipe") or {}).get("lookahead")
    return None if not spec else Lookahead(model, total_steps, spec["every"], spec["decay"], spec["power"])


def set_epoch(model: nn.Module, cfg: dict, epoch: int) -> None:
    """What changes with the epoch beside the LR: the whitening bias trains for ``whiten_bias_epochs``."""
    limit = (cfg.get("fast_recipe") or {}).get("whiten_bias_epochs")
    whiten = getattr(getattr(model, "backbone", None), "whiten", None)
    if limit is not None and whiten is not None and whiten.bias is not None:
        whiten.bias.requires_grad_(epoch < limit)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(model: nn.Module, cfg: dict) -> None:
    """``batchnorm: frozen`` (fine-tuning): BatchNorm layers normalise with the pretrained model's running
    statistics and keep them (eval mode), while their shifts still train. Called after ``model.train()``.
    In train mode a batch of 1/3 ID and 2/3 outlier images normalises with the mixed batch's statistics,
    which the pretrained model never saw: its first steps then start from a shifted model."""
    if cfg.get("batchnorm", "train") == "frozen":
        for bn in _batchnorms(model):
            bn.eval()


def set_batchnorm_momentum(model: nn.Module, cfg: dict) -> None:
    """``bn_momentum`` (fine-tuning): the weight of each new batch in the running statistics; None keeps the
    model's own (torch's 0.1; the compact net's 0.4, which replaces the statistics within a few steps)."""
    momentum = cfg.get("bn_momentum")
    if momentum is not None:
        for bn in _batchnorms(model):
            bn.momentum = momentum


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz iteration towards the orthogonal factor of ``g`` (2-D), Muon's update (Jordan et al., 2024,
    https://github.com/KellerJordan/Muon; airbench94_muon.py in the airbench repository at f1c599c): the quintic
    with coefficients (3.4445, -4.7750, 2.0315), 3 steps, in float32 here (the reference runs bf16 on GPUs)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float() / (g.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for convolution filters (airbench94_muon.py): Nesterov momentum, then the update orthogonalised
    per filter bank (out x in*k*k) and each weight renormalised to Frobenius norm sqrt(out) before the step
    (every filter bank feeds a BatchNorm, so its scale is free). No weight decay."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool = True):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.mul_(len(p) ** 0.5 / p.norm())
                p.add_(orthogonalize(g.reshape(len(g), -1)).view_as(p), alpha=-group["lr"])


class Optimizers:
    """Several optimizers as one: the plain recipe's SGD, or the fast recipe's SGD and Muon side by side.
    ``param_groups`` lists every group (each with its ``lr_scale``), so the training loop sets every LR
    from one schedule."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)


def _is_filter(p: torch.Tensor) -> bool:
    return p.ndim == 4


def optimizer(model: nn.Module, cfg: dict) -> Optimizers:
    """SGD (Nesterov) over :func:`param_groups`; with ``fast_recipe.muon`` the convolution filters train with
    :class:`Muon` instead, at ``muon.lr`` times the schedule's factor (its group's ``lr_scale``)."""
    muon = (cfg.get("fast_recipe") or {}).get("muon")
    groups = param_groups(model, cfg)
    if not muon:
        return Optimizers([torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"])])
    filters = [p for g in groups for p in g["params"] if _is_filter(p)]
    rest = [{**g, "params": [p for p in g["params"] if not _is_filter(p)]} for g in groups]
    sgd = torch.optim.SGD([g for g in rest if g["params"]], lr=cfg["lr"], momentum=cfg["momentum"],
                          nesterov=cfg["nesterov"])
    filters_opt = Muon([{"params": filters, "lr_scale": muon["lr"] / cfg["lr"]}], lr=muon["lr"],
                       momentum=muon["momentum"])
    return Optimizers([sgd, filters_opt])

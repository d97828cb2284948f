"""Fine-tuning methods as objectives: ``objective(logits, z, labels, epoch) -> (loss, terms)``.

The first ``len(labels)`` rows of ``logits``/``z`` are ID samples, the rest outliers.
Every method reports the same monitoring terms (ce, oe, clu, sep) so their curves compare,
plus its own (energy; DAL's oe_aug, dal_gamma, dal_radius). Only the loss carries gradient:
the terms come back detached.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fsood.losses import (
    FeatureSeparationLoss,
    dal_perturbation,
    energy_oe_loss,
    oe_loss,
)
from fsood.records import METHOD_NAMES, METHOD_RECORDS

# The methods, their loss terms and the keys their objectives read: one record each in fsood.records.
METHODS = METHOD_NAMES
LOSS_TERMS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    m.name: (m.stage1, m.stage2) for m in METHOD_RECORDS if m.name != "none"}
CONFIG_KEYS: dict[str, tuple[str, ...]] = {m.name: m.config_keys for m in METHOD_RECORDS if m.name != "none"}

# How the monitored cosine terms are taken where a method's params do not say (the authors' code).
MONITOR_DEFAULTS = {"detach_weight": True, "mean_over_classes": False}

DAL_INIT_SCALE = 1e-4  # the DAL code starts the search from delta ~ U(0, 1e-4) per element


def pretrain_objective(label_smoothing: float = 0.0):
    """Cross-entropy; label smoothing (the fast recipe's, fsood.recipe) mixes the one-hot target with uniform."""
    def objective(logits, z, labels, epoch):
        ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return ce, {"ce": ce}

    return objective


class DALAugmentation:
    """DAL (Wang et al., NeurIPS 2023) as used by this paper's DAL baseline, with its state.

    Each training step: search a worst-case shift delta of the outlier embeddings inside a
    Wasserstein ball, via its Lagrangian with multiplier gamma (``losses.dal_perturbation``);
    update ``gamma <- clamp(gamma - beta * (rho - r), 0, gamma_max)``; return
    ``oe_aug = L_OE(head(z_out + delta))``, which the objective trains on instead of the
    clean OE. ``gamma`` starts at ``gamma_init`` and lives here across steps.

    Where the code (github.com/QizhouWang/DAL ``main.py``; the same loop in this paper's
    repository) is more specific than the paper's description, we follow the code:
    1. the ball's radius r is the mean absolute shift (over dimensions and samples);
    2. ascent steps are per-sample L2-normalised gradients times ``strength``;
    3. the search starts at U(0, 1e-4) per element (drawn here from a CPU generator seeded
       with ``seed``, so a run draws the same starts on any device);
    4. gamma is updated once per training step, after the search, from the r of the last
       iterate the search evaluated (before its final step); the search uses the old gamma;
    5. the loss is CE on the clean ID logits + 0.5 OE on the perturbed outliers only (no
       clean OE term); delta is detached, so gradients reach the backbone through z and the
       head through its weights; no warm-up epochs (the code's ``--warmup 0``).
    beta is per dataset: 0.01 for CIFAR-10, 0.005 for CIFAR-100. With the code's defaults
    r <= iterations * strength / sqrt(d) (< 0.9 for d = 128) stays far below rho = 10, so
    gamma reaches 0 at the first step and stays there: the shift is then bounded only by the
    iteration budget (L2 norm <= iterations * strength per sample). gamma is a Python float
    here (a float32 tensor in the code).
    """

    def __init__(
        self,
        head_fn: Callable[[], Callable[[Tensor], Tensor]],
        gamma_max: float = 10.0,
        gamma_init: float = 0.01,
        beta: float = 0.01,
        rho: float = 10.0,
        iterations: int = 10,
        strength: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= gamma_init <= gamma_max:
            raise ValueError(f"DAL gamma_init={gamma_init} must lie in [0, gamma={gamma_max}] (gamma is its maximum)")
        self.head_fn = head_fn
        self.gamma_max, self.gamma, self.beta, self.rho = float(gamma_max), float(gamma_init), beta, rho
        self.iterations, self.strength = iterations, strength
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, z_out: Tensor) -> dict[str, Tensor]:
        head = self.head_fn()
        init = (torch.rand(z_out.shape, generator=self.generator) * DAL_INIT_SCALE).to(z_out.device, z_out.dtype)
        gamma = self.gamma
        delta, radius = dal_perturbation(z_out, head, init, gamma, self.iterations, self.strength)
        self.gamma = min(max(gamma - self.beta * (self.rho - float(radius)), 0.0), self.gamma_max)
        return {"oe_aug": oe_loss(head(z_out + delta)), "dal_gamma": z_out.new_tensor(gamma),
                "dal_radius": radius}

    def state_dict(self) -> dict:
        """What changes across steps (gamma, the search-start generator): a resumed run continues it."""
        return {"gamma": self.gamma, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gamma = float(state["gamma"])
        self.generator.set_state(state["generator"])


def make_objective(
    method: str,
    cfg: dict,
    stage2_epoch: int,
    weight_fn: Callable[[], torch.Tensor],
    head_fn: Callable[[], Callable[[Tensor], Tensor]] | None = None,
    seed: int = 0,
    label_smoothing: float = 0.0,
):
    """Objective for a fine-tuning method; ``weight_fn`` gives the W the cosine terms use.

    ``cfg`` is the method's params section (``CONFIG_KEYS``). ``dal`` also needs ``head_fn``,
    giving the classifier head that maps features to logits (``lambda: model.fc``), and uses
    ``seed`` for its search starts; the other methods ignore both. ``label_smoothing``: of every method's
    ID cross-entropy (``finetune.label_smoothing``; the paper's is 0). A stateful objective (``dal``)
    carries ``state_dict()`` / ``load_state_dict()``, which fsood.train saves and restores on resume.
    """
    if method not in METHODS or method == "none":
        raise ValueError(f"no training objective for method {method!r}; valid: {list(METHODS[1:])}")
    missing = [k for k in CONFIG_KEYS[method] if k not in cfg]
    if missing:
        raise ValueError(f"methods.{method} lacks {missing}; it needs {list(CONFIG_KEYS[method])}")
    augment = None
    if method == "dal":
        if head_fn is None:
            raise ValueError("method 'dal' needs head_fn, the classifier head that recomputes logits "
                             "from perturbed features (e.g. head_fn=lambda: model.fc)")
        augment = DALAugmentation(head_fn, cfg["gamma"], cfg["gamma_init"], cfg["beta"], cfg["rho"],
                                  cfg["iterations"], cfg["strength"], seed)
    stage1_keys, stage2_keys = LOSS_TERMS[method]
    stage1 = {term: cfg[key] for term, key in stage1_keys.items()}
    stage2 = {term: cfg[key] for term, key in stage2_keys.items()}
    # the monitor's own weighted total is not used: each method sums its terms below
    monitor = FeatureSeparationLoss(**{k: cfg.get(k, v) for k, v in MONITOR_DEFAULTS.items()},
                                    label_smoothing=label_smoothing)

    def objective(logits, z, labels, epoch):
        n_in = len(labels)
        _, terms = monitor(logits, z, labels, weight_fn())
        if "energy" in stage1:
            terms["energy"] = energy_oe_loss(logits[:n_in], logits[n_in:], cfg["m_in"], cfg["m_out"])
        if augment is not None:
            terms.update(augment(z[n_in:]))
        in_stage2 = epoch >= stage2_epoch
        weights = {**stage1, **stage2} if in_stage2 else stage1
        terms["stage"] = logits.new_tensor(2.0 if in_stage2 else 1.0)  # history.csv: the paper's stage I or II
        total = terms["ce"]
        for term, weight in weights.items():
            total = total + weight * terms[term]
        return total, {k: v.detach() for k, v in terms.items()}

    if augment is not None:
        objective.state_dict, objective.load_state_dict = augment.state_dict, augment.load_state_dict
    return objective


__all__ = ["CONFIG_KEYS", "LOSS_TERMS", "METHODS", "DALAugmentation", "make_objective", "pretrain_objective"]

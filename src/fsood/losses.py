"""Training objectives: Outlier Exposure, Energy-OE, DAL's perturbation and the paper's cosine losses.

The losses are vectorised over the batch and return a scalar (batch mean).
Notation follows the paper: ``z`` penultimate features (B, d), ``weight`` the
classifier matrix W (C, d), ``C`` the number of ID classes.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cosine_to_classes(z: Tensor, weight: Tensor, detach_weight: bool = True) -> Tensor:
    """cos(z_b, w_i) for every sample b and class i, shape (B, C).

    The authors' code takes ``fc.weight.data`` (``detach_weight=True``): the cosine
    losses then move only the backbone, while W still learns from CE and OE.
    """
    if detach_weight:
        weight = weight.detach()
    return F.normalize(z, dim=1) @ F.normalize(weight, dim=1).T


def oe_loss(logits_out: Tensor) -> Tensor:
    """Eq. 2: cross-entropy to the uniform label, -(1/C) sum_j log softmax_j(f(x_out))."""
    return -F.log_softmax(logits_out, dim=1).mean(dim=1).mean()


def energy_oe_loss(logits_in: Tensor, logits_out: Tensor, m_in: float = -25.0, m_out: float = -7.0) -> Tensor:
    """Energy-bounded OE (Liu et al. 2020): squared hinges on E(x) = -logsumexp f(x).

    relu(E_in - m_in)^2 pushes ID energy below m_in, relu(m_out - E_out)^2 pushes
    outlier energy above m_out. The 0.1 weight is applied by the caller.
    """
    e_in = -torch.logsumexp(logits_in, dim=1)
    e_out = -torch.logsumexp(logits_out, dim=1)
    return F.relu(e_in - m_in).pow(2).mean() + F.relu(m_out - e_out).pow(2).mean()


def clustering_loss(z_in: Tensor, labels: Tensor, weight: Tensor, detach_weight: bool = True) -> Tensor:
    """Eq. 4: L_clu = -cos(z, w_y), pulling ID features onto their class weight."""
    cos = cosine_to_classes(z_in, weight, detach_weight)
    return -cos.gather(1, labels.view(-1, 1)).mean()


def separation_loss(
    z_out: Tensor, weight: Tensor, detach_weight: bool = True, mean_over_classes: bool = False
) -> Tensor:
    """Eq. 3: L_sep = (1/C) sum_i |cos(z_out, w_i)|.

    Drives outlier features into the orthogonal complement of span(W). The authors'
    CIFAR code sums over classes without 1/C (``mean_over_classes=False``, the default);
    ``True`` gives the equation as printed.
    """
    abs_cos = cosine_to_classes(z_out, weight, detach_weight).abs()
    per_sample = abs_cos.mean(dim=1) if mean_over_classes else abs_cos.sum(dim=1)
    return per_sample.mean()


def dal_perturbation(
    z_out: Tensor,
    head: Callable[[Tensor], Tensor],
    init: Tensor,
    gamma: float,
    iterations: int = 10,
    strength: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """DAL's worst-case shift of the outlier embeddings (Wang et al., NeurIPS 2023).

    Starting from ``delta = init``, ``iterations`` steps of normalised gradient ascent on the
    Lagrangian of the Wasserstein-ball problem

        L_OE(head(z_out + delta)) - gamma * r(delta),    r(delta) = mean_b mean_k |delta_bk|,

    each step ``delta += strength * g_b / ||g_b||_2`` per sample ``b``. ``z_out`` is detached:
    the search moves only ``delta``, and ``torch.autograd.grad`` leaves the head's ``.grad``
    alone. As in the authors' code (github.com/QizhouWang/DAL, ``main.py``), r is the mean
    absolute shift, and the r returned (for the gamma update) is that of the last iterate the
    ascent evaluated, i.e. before its final step (``init``'s when ``iterations`` is 0).
    ``F.normalize`` guards a zero gradient (eps 1e-12) where the code would divide by zero.

    Returns ``(delta, r)``, both detached.
    """
    base = z_out.detach()
    delta = init.detach()
    radius = delta.abs().mean(dim=1).mean()
    with torch.enable_grad():  # the search needs gradients even under an outer no_grad
        for _ in range(iterations):
            delta = delta.detach().requires_grad_(True)
            radius = delta.abs().mean(dim=1).mean()
            lagrangian = oe_loss(head(base + delta)) - gamma * radius
            (grad,) = torch.autograd.grad(lagrangian, [delta])
            delta = delta.detach() + strength * F.normalize(grad, dim=1)
    return delta.detach(), radius.detach()


class FeatureSeparationLoss(nn.Module):
    """The paper's full objective (Eq. 5) for a batch of ID and outlier samples.

    ``loss = CE(f(x_in), y) + lambda * L_OE(f(x_out))
             [+ alpha * L_clu(z_in, y) + beta * L_sep(z_out)   once stage II is on]``

    Drop it into a training loop::

        criterion = FeatureSeparationLoss(alpha=1.0, beta=1.0)
        logits, z = model(torch.cat([x_in, x_out]), return_features=True)
        loss, terms = criterion(logits, z, y_in, model.fc.weight, stage2=epoch >= 25)
    """

    def __init__(
        self,
        oe_weight: float = 0.5,
        alpha: float = 1.0,
        beta: float = 1.0,
        detach_weight: bool = True,
        mean_over_classes: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.oe_weight, self.alpha, self.beta = oe_weight, alpha, beta
        self.detach_weight, self.mean_over_classes = detach_weight, mean_over_classes
        self.label_smoothing = label_smoothing  # of the ID cross-entropy; the paper's is 0

    def forward(
        self, logits: Tensor, z: Tensor, labels: Tensor, weight: Tensor, stage2: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]]:
        n_in = labels.shape[0]
        terms = {
            "ce": F.cross_entropy(logits[:n_in], labels, label_smoothing=self.label_smoothing),
            "oe": oe_loss(logits[n_in:]),
            "clu": clustering_loss(z[:n_in], labels, weight, self.detach_weight),
            "sep": separation_loss(z[n_in:], weight, self.detach_weight, self.mean_over_classes),
        }
        total = terms["ce"] + self.oe_weight * terms["oe"]
        if stage2:
            total = total + self.alpha * terms["clu"] + self.beta * terms["sep"]
        return total, terms

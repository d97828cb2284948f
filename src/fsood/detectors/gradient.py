"""Input pre-processing passes (torch): scores that need input gradients, so no cache can give them.

:func:`perturbed_scores` is the pass both ODIN (:func:`odin_scores`) and Lee
et al.'s Mahalanobis (:func:`mahalanobis_scores`) run; the score stage calls them and caches the scores.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fsood import runtime as rt
from fsood.detectors.fitted import Mahalanobis
from fsood.detectors.odin import odin_loss, odin_softmax
from fsood.inference import normalizer


def perturbed_scores(model: torch.nn.Module, x: np.ndarray, runtime: dict, device: torch.device, norm: dict,
                     epsilon: float, loss_of: Callable, score_of: Callable) -> np.ndarray:
    """Input pre-processing on uint8 images (ODIN; Lee et al.'s Mahalanobis), batch by batch.

    As both authors' code: x~ = x - epsilon * s / std_c on the normalised input, with s = +1 where
    the gradient of ``loss_of(model, x)`` is >= 0, else -1 (``torch.ge``, so a zero gradient counts
    as +1, where pytorch-ood's ``sign`` gives 0), and std_c the normalisation's per-channel std:
    epsilon in [0, 1] pixel units. No clamping. Returns ``score_of(model, x~)`` (numpy) per image.
    ``loss_of`` must sum per-sample losses, so each image's gradient is its own.
    """
    model.eval()
    to_input = normalizer(norm, device)
    std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    out = []
    for start in range(0, len(x), runtime["eval_batch_size"]):
        inputs = to_input(torch.from_numpy(x[start:start + runtime["eval_batch_size"]]).to(device))
        if rt.channels_last(runtime):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        inputs.requires_grad_(True)
        with torch.enable_grad(), rt.autocast(runtime, device):
            loss = loss_of(model, inputs)
        (grad,) = torch.autograd.grad(loss, inputs)
        step = (torch.ge(grad, 0).float() * 2 - 1) / std
        with torch.no_grad(), rt.autocast(runtime, device):
            out.append(score_of(model, inputs.detach() - epsilon * step))
    return np.concatenate(out)


def odin_scores(model: torch.nn.Module, x: np.ndarray, runtime: dict, device: torch.device, norm: dict,
                temperature: float, epsilon: float) -> np.ndarray:
    """ODIN (Liang et al. 2018): max softmax at T of the perturbed input (:mod:`fsood.detectors.odin`)."""
    return perturbed_scores(model, x, runtime, device, norm, epsilon,
                            lambda net, inputs: odin_loss(net, inputs, temperature),
                            lambda net, inputs: odin_softmax(net(inputs).float().cpu().numpy(), temperature))


def mahalanobis_scores(model: torch.nn.Module, x: np.ndarray, runtime: dict, device: torch.device, norm: dict,
                       detector: Mahalanobis) -> np.ndarray:
    """Mahalanobis with Lee et al.'s input pre-processing (``detector.epsilon``; fitted on ID train).

    As their ``get_Mahalanobis_score``: the loss is the distance (z - mu_c)^T Sigma^+ (z - mu_c) to
    the nearest class mean c of the unperturbed features (their 0.5 factor does not change a
    sign), the step lowers it, and the score is the detector's on the features of x~.
    """
    means = torch.tensor(detector.means, dtype=torch.float32, device=device)
    precision = torch.tensor(detector.precision, dtype=torch.float32, device=device)

    def loss_of(net, inputs):
        z = net(inputs, return_features=True)[1].float()
        zp = z @ precision
        dist = (zp * z).sum(1, keepdim=True) - 2 * zp @ means.T + ((means @ precision) * means).sum(1)
        return dist.gather(1, dist.detach().argmin(1, keepdim=True)).sum()

    def score_of(net, inputs):
        z = net(inputs, return_features=True)[1].float().cpu().numpy()
        return detector.score(None, z, None)

    return perturbed_scores(model, x, runtime, device, norm, detector.epsilon, loss_of, score_of)

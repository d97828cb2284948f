"""ODIN (Liang et al., ICLR 2018), in one place: the input-gradient pass the score stage runs
(:func:`odin_scores`, torch) and the detector that reads its scores from the cache (:class:`ODIN`,
numpy: the report imports it without torch; torch is imported inside :func:`odin_scores` only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

from fsood.detectors.base import Detector, cached_pass, register


def odin_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """max_c softmax(f(x~) / T)_c: ODIN's score once f has run on the perturbed input x~."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1).max(axis=1)


@register
@dataclass
class ODIN(Detector):
    """ODIN (Liang et al., ICLR 2018): max softmax at temperature T of a perturbed input.

    x~ = x - eps * sign(-grad_x log S_yhat(x; T)) per channel divided by that channel's std,
    on the normalised input, as the authors' code: a step of eps in [0, 1] pixel units. It
    needs input gradients, so it cannot come from cached features: the score stage runs it
    (:func:`odin_scores`) and stores ``<set>__odin`` with the T and eps used
    (``odin_temperature``, ``odin_epsilon``); this detector reads those.
    """

    temperature: float = 1000.0
    epsilon: float = 0.0014
    name = "odin"

    def score(self, logits, features, weight):
        raise ValueError("odin needs input gradients, not cached logits: its scores are the cache's "
                         "<set>__odin entries (use score_set(cache, name))")

    def score_set(self, cache, name):
        return cached_pass(cache, name, self.name, {"temperature": self.temperature, "epsilon": self.epsilon})


def odin_scores(model, x: np.ndarray, runtime: dict, device, norm: dict,
                temperature: float, epsilon: float) -> np.ndarray:
    """ODIN (Liang et al. 2018): max softmax at T of the perturbed input; the loss is cross-entropy of
    f(x)/T against the prediction (``fsood.detectors.gradient.perturbed_scores``)."""
    import torch.nn.functional as F

    from fsood.detectors.gradient import perturbed_scores

    def loss_of(net, inputs):
        logits = net(inputs).float() / temperature
        return F.cross_entropy(logits, logits.argmax(1), reduction="sum")

    return perturbed_scores(model, x, runtime, device, norm, epsilon, loss_of,
                            lambda net, inputs: odin_softmax(net(inputs).float().cpu().numpy(), temperature))

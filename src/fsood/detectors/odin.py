"""ODIN (Liang et al., ICLR 2018), in one place: its loss and score (:func:`odin_loss`,
:func:`odin_softmax`) and the detector that reads its scores from the cache (:class:`ODIN`).

The input-gradient pass itself is the one ODIN shares with Lee et al.'s Mahalanobis
(``fsood.detectors.gradient``: ``odin_scores`` runs it with this loss and score). numpy here: the
report imports this module without torch (torch is imported inside :func:`odin_loss` only).
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
    (``fsood.detectors.gradient.odin_scores``) and stores ``<set>__odin`` with the T and eps used
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


def odin_loss(net, inputs, temperature: float):
    """The loss ODIN's input step descends: cross-entropy of f(x)/T against the prediction, summed over
    the batch (so each image's gradient is its own); torch tensors in, a torch scalar out."""
    import torch.nn.functional as F  # torch only here: the report imports this module without it

    logits = net(inputs).float() / temperature
    return F.cross_entropy(logits, logits.argmax(1), reduction="sum")

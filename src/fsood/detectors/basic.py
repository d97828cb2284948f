"""Scores from cached logits and cosines: MSP, energy, max logit, |cos| sum and the paper's FS (Eq. 6)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, softmax

from fsood.detectors.base import Detector, register


def _cosine(features: np.ndarray, weight: np.ndarray) -> np.ndarray:
    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    w = weight / np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12)
    return z @ w.T


def msp(logits: np.ndarray) -> np.ndarray:
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""
    return softmax(logits.astype(np.float64), axis=1).max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy T * logsumexp(f/T) (Liu et al. 2020)."""
    return temperature * logsumexp(logits.astype(np.float64) / temperature, axis=1)


def max_logit(logits: np.ndarray) -> np.ndarray:
    """Largest logit (Hendrycks et al. 2022)."""
    return logits.astype(np.float64).max(axis=1)


def abs_cosine_sum(features: np.ndarray, weight: np.ndarray, mean_over_classes: bool = False) -> np.ndarray:
    """sum_i |cos(z, w_i)| (or its mean over the C classes): the feature's reach into span(W)."""
    abs_cos = np.abs(_cosine(features.astype(np.float64), weight.astype(np.float64)))
    return abs_cos.mean(axis=1) if mean_over_classes else abs_cos.sum(axis=1)


def feature_separation_score(
    logits: np.ndarray, features: np.ndarray, weight: np.ndarray, mean_over_classes: bool = False
) -> np.ndarray:
    """Eq. 6: S(x) = max_i softmax_i + (1/C) sum_i |cos(z, w_i)|.

    The authors' CIFAR code adds the plain sum (``mean_over_classes=False``, default).
    """
    return msp(logits) + abs_cosine_sum(features, weight, mean_over_classes)


# One registered dataclass per score name: the classes below share their shape by design (the
# interface of fsood.detectors.base), not by copy-paste.
@register
@dataclass
class MSP(Detector):
    name = "msp"

    def score(self, logits, features, weight):
        return msp(logits)


@register
@dataclass
class Energy(Detector):
    temperature: float = 1.0
    name = "energy"

    def score(self, logits, features, weight):
        return energy(logits, self.temperature)


@register
@dataclass
class MaxLogit(Detector):
    name = "maxlogit"

    def score(self, logits, features, weight):
        return max_logit(logits)


@register
@dataclass
class AbsCosine(Detector):
    """The cosine term of Eq. 6 alone (ablation: no MSP)."""

    mean_over_classes: bool = False
    name = "abs_cos"

    def score(self, logits, features, weight):
        return abs_cosine_sum(features, weight, self.mean_over_classes)


@register
@dataclass
class FeatureSeparation(Detector):
    """The paper's score, Eq. 6."""

    mean_over_classes: bool = False
    name = "fs"

    def score(self, logits, features, weight):
        return feature_separation_score(logits, features, weight, self.mean_over_classes)


@register
@dataclass
class FeatureSeparationText(Detector):
    """Eq. 6 as the paper prints it, with 1/C whatever ``score.mean_over_classes`` says: beside ``fs`` (the
    authors' code's plain sum on CIFAR), so that both forms are computed and shown."""

    name = "fs_text"

    def score(self, logits, features, weight):
        return feature_separation_score(logits, features, weight, mean_over_classes=True)

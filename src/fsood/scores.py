"""Post-hoc OOD scores computed from cached logits and features.

Convention throughout fsood: **higher score = more in-distribution** (the paper's).
Each detector is a small class in the style of pytorch-ood, but works on the forward
cache (logits, features, classifier weight) so a model is run once per dataset. The
detectors fitted on ID training statistics, and ODIN, are in :mod:`fsood.posthoc`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.special import logsumexp, softmax


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


DETECTORS: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a detector buildable by its params name."""
    if cls.name in DETECTORS:
        raise ValueError(f"score name {cls.name!r} registered twice ({DETECTORS[cls.name].__name__}, {cls.__name__})")
    DETECTORS[cls.name] = cls
    return cls


@dataclass
class Detector:
    """Base class: ``score(logits, features, weight)`` returns one value per sample.

    Detectors with ``needs_fit = True`` learn ID training statistics first, from
    ``fit(logits, features, labels, weight, bias)``: the ID-train forward pass of the scored
    model and its classifier (W, b). For the others ``fit`` is a no-op.
    """

    name = "base"
    needs_fit = False
    # the ID-train set's full size, which fit() may see only a sample of (set by
    # fsood.evaluation.fit_detector from the cache; KNN scales its k with it); None: unknown
    train_size = None  # int | None; not annotated: a class attribute, not a dataclass field (no option)

    def fit(self, logits: np.ndarray, features: np.ndarray, labels: np.ndarray, weight: np.ndarray,
            bias: np.ndarray) -> Detector:
        return self

    def score(self, logits: np.ndarray, features: np.ndarray, weight: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_set(self, cache: dict[str, np.ndarray], name: str) -> np.ndarray:
        """Scores of set ``name`` of a forward-pass cache (``<name>__logits``, ``__features``, ``fc_weight``)."""
        return self.score(cache[f"{name}__logits"], cache[f"{name}__features"], cache["fc_weight"])

    def _require_fit(self, state) -> None:
        if state is None:
            raise RuntimeError(f"score {self.name!r} is fitted on ID training statistics: "
                               "call fit(...) before score(...)")


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


def build_detector(name: str, **options) -> Detector:
    """Detector by its params name, e.g. ``build_detector("fs", mean_over_classes=True)``."""
    if name not in DETECTORS:
        raise KeyError(f"unknown score {name!r}; valid: {sorted(DETECTORS)}")
    cls = DETECTORS[name]
    valid = sorted(f.name for f in fields(cls) if f.init)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"score {name!r} has no option(s) {unknown}; valid: {valid}")
    return cls(**options)


# The fitted detectors (ReAct, KNN, Mahalanobis, ViM, NECO, NCI) and ODIN register themselves;
# imported last because they subclass Detector (either import order works).
from fsood import posthoc  # noqa: E402,F401

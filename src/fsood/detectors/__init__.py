"""OOD detectors: every score fsood computes, by its params name (``build_detector``).

- :mod:`~fsood.detectors.base`: the ``Detector`` interface, the registry, shared helpers;
- :mod:`~fsood.detectors.basic`: MSP, energy, max logit, |cos| sum, FS (the paper's Eq. 6);
- :mod:`~fsood.detectors.fitted`: ReAct, KNN, Mahalanobis, ViM, NECO, NCI (fitted on ID train);
- :mod:`~fsood.detectors.odin`: ODIN (its input-gradient pass and its cached-score detector);
- :mod:`~fsood.detectors.gradient`: the input pre-processing pass (torch; the score stage only).

Importing the package registers every detector (no import cycle: each module imports ``base`` only).
"""
from __future__ import annotations

from fsood.detectors.base import DETECTORS, Detector, build_detector, register
from fsood.detectors.basic import (
    MSP,
    AbsCosine,
    Energy,
    FeatureSeparation,
    MaxLogit,
    abs_cosine_sum,
    energy,
    feature_separation_score,
    max_logit,
    msp,
)
from fsood.detectors.fitted import KNN, NCI, NECO, Mahalanobis, ReAct, ViM, vim_dim
from fsood.detectors.odin import ODIN, odin_softmax

__all__ = ["DETECTORS", "KNN", "MSP", "NCI", "NECO", "ODIN", "AbsCosine", "Detector", "Energy", "FeatureSeparation",
           "Mahalanobis", "MaxLogit", "ReAct", "ViM", "abs_cosine_sum", "build_detector", "energy",
           "feature_separation_score", "max_logit", "msp", "odin_softmax", "register", "vim_dim"]

"""fsood: feature separation based on Neural Collapse for OOD detection (Wu et al., ICLR 2025).

The pieces a user can drop into their own code, imported lazily (``import fsood`` is cheap)::

    from fsood import FeatureSeparationLoss, separation_loss, clustering_loss
    from fsood import feature_separation_score, ood_metrics, nc_metrics
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "losses": ["FeatureSeparationLoss", "clustering_loss", "separation_loss", "oe_loss", "energy_oe_loss",
               "cosine_to_classes", "dal_perturbation"],
    "detectors": ["msp", "energy", "max_logit", "abs_cosine_sum", "feature_separation_score", "build_detector",
                  "DETECTORS", "Detector", "MSP", "Energy", "MaxLogit", "AbsCosine", "FeatureSeparation",
                  "ReAct", "KNN", "Mahalanobis", "ViM", "NECO", "NCI", "ODIN"],
    "metrics": ["ood_metrics", "fpr_at_tpr", "auroc", "average_precision", "CONVENTIONS"],
    "nc": ["nc_metrics", "principal_basis", "separation_degrees", "span_measures", "anchor_measures", "class_means"],
    "methods": ["METHODS", "make_objective", "DALAugmentation"],
    "models": ["SmallCNN", "WideResNet", "ResNet50", "build_model", "import_state", "load_state"],
    "config": ["load_params", "validate_params", "grid_cells", "ParamsError", "Cell"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"fsood.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fsood' has no attribute {name!r}")


def __dir__():
    return __all__

"""OOD detection metrics with an explicit positive-class convention.

Two conventions are in use in the literature and they give different FPR95:

* ``"id_positive"`` (the paper's lineage, Hendrycks' ``display_results``): ID is the
  positive class; FPR95 is the fraction of OOD accepted at the threshold whose ID
  recall is *closest* to 95 %.
* ``"ood_positive"`` (OpenOOD >= 2023, pytorch-ood 0.4): OOD is positive; FPR95 is the
  fraction of ID rejected at the first threshold that catches >= 95 % of OOD.

Scores are always "higher = more ID". AUROC is convention-free; AUPR-In / AUPR-Out are
average precision with ID / OOD as the positive class. Ties are handled as scikit-learn
does: samples with equal scores enter the curve together.
"""
from __future__ import annotations

import numpy as np

CONVENTIONS = ("id_positive", "ood_positive")


def _clf_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative false and true positives at each distinct threshold, high to low."""
    order = np.argsort(-y_score, kind="mergesort")
    y_score, y_true = y_score[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(y_score)), y_true.size - 1]
    tps = np.cumsum(y_true)[last_of_tie]
    fps = 1 + last_of_tie - tps
    return fps, tps


def _labels_and_scores(id_scores, ood_scores, positive: str) -> tuple[np.ndarray, np.ndarray]:
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if id_scores.size == 0 or ood_scores.size == 0:
        raise ValueError("metrics need at least one ID and one OOD score")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("scores contain NaN or inf")
    y = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    s = np.r_[id_scores, ood_scores]
    return (y, s) if positive == "id" else (1 - y, -s)


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve (trapezoid over distinct thresholds)."""
    y, s = _labels_and_scores(id_scores, ood_scores, "id")
    fps, tps = _clf_curve(y, s)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return float(np.trapezoid(tpr, fpr))


def average_precision(id_scores, ood_scores, positive: str = "id") -> float:
    """Average precision, sum_n (R_n - R_{n-1}) P_n, as ``sklearn.metrics.average_precision_score``."""
    y, s = _labels_and_scores(id_scores, ood_scores, positive)
    fps, tps = _clf_curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_points(id_scores, ood_scores, max_points: int = 200) -> dict[str, np.ndarray]:
    """The ROC curve with ID positive (``tpr``: ID accepted, ``fpr``: OOD accepted at ``threshold``,
    accept = score >= threshold), from (0, 0) to (1, 1), thinned to at most ``max_points`` points
    evenly spaced along the curve (both ends kept): a small file for ``dvc plots``."""
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    y, s = _labels_and_scores(id_scores, ood_scores, "id")
    fps, tps = _clf_curve(y, s)
    ranked = np.sort(s)[::-1]
    thresholds = ranked[np.r_[np.flatnonzero(np.diff(ranked)), y.size - 1]]  # _clf_curve's distinct scores
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    threshold = np.r_[np.nextafter(ranked[0], np.inf), thresholds]  # just above the top score: none accepted
    keep = np.unique(np.linspace(0, fpr.size - 1, min(max_points, fpr.size)).round().astype(int))
    return {"fpr": fpr[keep], "tpr": tpr[keep], "threshold": threshold[keep]}


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95, convention: str = "id_positive") -> float:
    """False-positive rate at the given true-positive rate, under ``convention``."""
    if convention == "id_positive":
        # Hendrycks' fpr_and_fdr_at_recall: threshold whose recall is closest to `tpr`.
        y, s = _labels_and_scores(id_scores, ood_scores, "id")
        fps, tps = _clf_curve(y, s)
        last = np.searchsorted(tps, tps[-1])  # stop once full recall is reached
        recall, fps = tps[: last + 1] / tps[-1], fps[: last + 1]
        # Hendrycks reverses the arrays before argmin: among equally close thresholds
        # the one with the highest recall wins.
        cutoff = last - np.argmin(np.abs(recall[::-1] - tpr))
        return float(fps[cutoff] / (y.size - tps[-1]))
    if convention == "ood_positive":
        # OpenOOD: first threshold (from the most OOD-like) that reaches tpr on OOD.
        y, s = _labels_and_scores(id_scores, ood_scores, "ood")
        fps, tps = _clf_curve(y, s)
        rates = tps / tps[-1]
        idx = np.searchsorted(rates, tpr, side="left")
        return float(fps[idx] / (y.size - tps[-1]))
    raise ValueError(f"unknown convention {convention!r}; valid: {list(CONVENTIONS)}")


def ood_metrics(id_scores, ood_scores, convention: str = "id_positive", tpr: float = 0.95) -> dict[str, float]:
    """FPR@TPR, AUROC, AUPR-In and AUPR-Out, as fractions in [0, 1]."""
    return {
        "fpr95": fpr_at_tpr(id_scores, ood_scores, tpr, convention),
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": average_precision(id_scores, ood_scores, "id"),
        "aupr_out": average_precision(id_scores, ood_scores, "ood"),
    }


def describe_convention(convention: str, tpr: float = 0.95) -> dict[str, str]:
    """What each number in a metrics file means; written next to the numbers."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {list(CONVENTIONS)}")
    fpr = (
        f"fraction of OOD accepted at the threshold whose ID recall is closest to {tpr:g} (Hendrycks)"
        if convention == "id_positive"
        else f"fraction of ID rejected at the first threshold catching >= {tpr:g} of OOD (OpenOOD)"
    )
    return {
        "positive": "id" if convention == "id_positive" else "ood",
        "score": "higher = more ID",
        "fpr95": fpr,
        "auroc": "area under ROC (trapezoid); convention-free",
        "aupr_in": "average precision, ID positive",
        "aupr_out": "average precision, OOD positive",
        "units": "percent",
    }

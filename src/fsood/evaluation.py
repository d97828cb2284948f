"""Scores and metrics from a forward-pass cache (numpy only: the report uses it without torch).

A cache holds ``fc_weight``, ``fc_bias`` and, per set (``id_test`` and each OOD set),
``<set>__logits``, ``<set>__features`` and ``<set>__labels``. Since the post-hoc detectors
it also holds ``id_train__{logits,features,labels}`` (a capped ID-train subset that fitted
detectors learn from; never an OOD set) with ``id_train_size`` (the whole set's size) and, when
ODIN is scored, ``<set>__odin`` with ``odin_temperature`` / ``odin_epsilon``; when Mahalanobis
is scored with input pre-processing, ``<set>__mahalanobis`` with ``mahalanobis_epsilon``. Older caches without them still give every score
that needs neither.
"""
from __future__ import annotations

import numpy as np

from fsood import metrics as M
from fsood import nc
from fsood.detectors import Detector, build_detector

FIT_SET = "id_train"  # the ID-train forward pass fitted detectors learn from
NOT_OOD = ("id_test", FIT_SET)
TRAIN_SIZE = "id_train_size"  # images in the whole ID-train set, of which the fit pass holds a sample


def detector(name: str, score_cfg: dict) -> Detector:
    """The detector ``name`` with its options from params' ``score`` section (not yet fitted)."""
    options = {
        "fs": {"mean_over_classes": score_cfg["mean_over_classes"]},
        "abs_cos": {"mean_over_classes": score_cfg["mean_over_classes"]},
        "energy": {"temperature": score_cfg["energy_temperature"]},
        **score_cfg.get("options", {}),
    }
    return build_detector(name, **options.get(name, {}))


def fit_detector(det: Detector, cache: dict[str, np.ndarray]) -> Detector:
    """``det`` fitted on the cache's ID-train pass (a no-op for detectors that need no fit)."""
    if not det.needs_fit:
        return det
    keys = [f"{FIT_SET}__{k}" for k in ("logits", "features", "labels")] + ["fc_weight", "fc_bias"]
    missing = [k for k in keys if k not in cache]
    if missing:
        raise ValueError(f"score {det.name!r} is fitted on ID training statistics, but the cache lacks {missing}: "
                         "it predates them; rerun the score stage")
    if TRAIN_SIZE in cache:  # the fit pass may be a sample of the ID-train set (score.fit_samples)
        det.train_size = int(np.asarray(cache[TRAIN_SIZE]).item())  # saved 0-d arrays come back 1-d
    return det.fit(*(cache[k] for k in keys))


def fitted_detector(name: str, score_cfg: dict, cache: dict[str, np.ndarray]) -> Detector:
    """The detector ``name``, fitted on ``cache`` where it needs ID training statistics."""
    return fit_detector(detector(name, score_cfg), cache)


def cache_sets(cache: dict[str, np.ndarray]) -> list[str]:
    """The OOD sets of a cache: every ``<set>__*`` prefix but ID test and ID train."""
    return sorted({k.split("__")[0] for k in cache if "__" in k} - set(NOT_OOD))


def score_cache(cache: dict[str, np.ndarray], score_cfg: dict) -> dict[str, dict[str, np.ndarray]]:
    """{score name: {set name: scores}} for ID test and every OOD set in the cache."""
    out = {}
    for score in score_cfg["scores"]:
        det = fitted_detector(score, score_cfg, cache)
        out[score] = {name: det.score_set(cache, name) for name in ["id_test", *cache_sets(cache)]}
    return out


def flat_scores(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """:func:`score_cache`'s result as the arrays of scores.npz: ``<score>__<set>``."""
    return {f"{score}__{name}": values for score, per_set in scores.items() for name, values in per_set.items()}


def _check_groups(groups: dict[str, list[str]], ood_sets: list[str]) -> None:
    for group, members in groups.items():
        if group in ood_sets:
            raise ValueError(f"metric group {group!r} has the name of an OOD set; sets: {ood_sets}")
        missing = [s for s in members if s not in ood_sets]
        if missing:
            raise ValueError(f"metric group {group!r} names {missing}, which the cache lacks; its OOD sets: {ood_sets}")


def _train_class_means(cache: dict[str, np.ndarray]) -> np.ndarray | None:
    """Class means of the cache's ID-train pass (Table 14's anchors); None for caches without it."""
    if f"{FIT_SET}__features" not in cache:
        return None
    counts = np.bincount(np.asarray(cache[f"{FIT_SET}__labels"], dtype=np.int64), minlength=len(cache["fc_weight"]))
    if (counts == 0).any():  # a tiny fit_samples cap can miss a class: no mean to anchor on
        return None
    return nc.class_means(np.asarray(cache[f"{FIT_SET}__features"], dtype=np.float64),
                          np.asarray(cache[f"{FIT_SET}__labels"], dtype=np.int64), len(cache["fc_weight"]))


def metrics_from_cache(cache: dict[str, np.ndarray], score_cfg: dict,
                       groups: dict[str, list[str]] | None = None,
                       scores: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """Per-score, per-OOD-set metrics in percent, group means, ID accuracy and feature separation.

    ``groups`` maps a row name to the OOD sets it averages, e.g. ``{"mean": main sets,
    "hard_mean": the hard-OOD sets of the paper's Table 11}``; default ``{"mean": every OOD set in the cache}``.
    A group with no sets gets no row. Every OOD set has its own row either way. ``scores``: what
    :func:`score_cache` gave for this cache, if the caller has it already.
    """
    pct = lambda v: round(100.0 * v, 4)  # noqa: E731
    ood_sets = cache_sets(cache)
    groups = {"mean": ood_sets} if groups is None else groups
    _check_groups(groups, ood_sets)
    result = {"scores": {}}
    for score, per_set in (score_cache(cache, score_cfg) if scores is None else scores).items():
        rows = {name: M.ood_metrics(per_set["id_test"], per_set[name], score_cfg["convention"], score_cfg["tpr"])
                for name in ood_sets}
        for group, members in groups.items():
            if members:
                rows[group] = {k: float(np.mean([rows[s][k] for s in members])) for k in rows[members[0]]}
        result["scores"][score] = {name: {k: pct(v) for k, v in r.items()} for name, r in rows.items()}
    labels = cache["id_test__labels"]
    result["id_accuracy"] = pct(float((cache["id_test__logits"].argmax(1) == labels).mean()))
    means = _train_class_means(cache)
    result["separation"] = {
        name: {k: round(v, 6) for k, v in nc.separation_degrees(
            cache[f"{name}__features"], cache[f"{name}__logits"], cache["fc_weight"], means).items()}
        for name in ["id_test", *ood_sets]
    }
    result["nc_id_test"] = {k: round(v, 6) for k, v in nc.nc_metrics(
        cache["id_test__features"], labels, cache["fc_weight"], cache["fc_bias"]).items()}
    if "id_train__features" in cache:  # the fine-tuned model's NC on its ID-train sample (the summary's table)
        result["nc_id_train"] = {k: round(v, 6) for k, v in nc.nc_metrics(
            cache["id_train__features"], cache["id_train__labels"], cache["fc_weight"], cache["fc_bias"]).items()}
    result["convention"] = M.describe_convention(score_cfg["convention"], score_cfg["tpr"])
    return result

"""Scores and metrics from a forward-pass cache (numpy only: the report uses it without torch).

A cache holds ``fc_weight``, ``fc_bias`` and, per set (``id_test`` and each OOD set),
``<set>__logits``, ``<set>__features`` and ``<set>__labels``.
"""
from __future__ import annotations

import numpy as np

from fsood import metrics as M
from fsood import nc
from fsood.scores import Detector, build_detector


def detector(name: str, score_cfg: dict) -> Detector:
    """The detector ``name`` with its options from params' ``score`` section."""
    options = {
        "fs": {"mean_over_classes": score_cfg["mean_over_classes"]},
        "abs_cos": {"mean_over_classes": score_cfg["mean_over_classes"]},
        "energy": {"temperature": score_cfg["energy_temperature"]},
    }
    return build_detector(name, **options.get(name, {}))


def cache_sets(cache: dict[str, np.ndarray]) -> list[str]:
    return sorted({k.split("__")[0] for k in cache if "__" in k} - {"id_test"})


def score_cache(cache: dict[str, np.ndarray], score_cfg: dict) -> dict[str, dict[str, np.ndarray]]:
    """{score name: {set name: scores}} for ID test and every OOD set in the cache."""
    out = {}
    for score in score_cfg["scores"]:
        det = detector(score, score_cfg)
        out[score] = {
            name: det.score(cache[f"{name}__logits"], cache[f"{name}__features"], cache["fc_weight"])
            for name in ["id_test", *cache_sets(cache)]
        }
    return out


def metrics_from_cache(cache: dict[str, np.ndarray], score_cfg: dict) -> dict:
    """Per-score, per-OOD-set metrics in percent, their mean, ID accuracy and feature separation."""
    pct = lambda v: round(100.0 * v, 4)  # noqa: E731
    ood_sets = cache_sets(cache)
    result = {"scores": {}}
    for score, per_set in score_cache(cache, score_cfg).items():
        rows = {name: M.ood_metrics(per_set["id_test"], per_set[name], score_cfg["convention"], score_cfg["tpr"])
                for name in ood_sets}
        mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in next(iter(rows.values()))}
        result["scores"][score] = {name: {k: pct(v) for k, v in r.items()} for name, r in {**rows, "mean": mean}.items()}
    labels = cache["id_test__labels"]
    result["id_accuracy"] = pct(float((cache["id_test__logits"].argmax(1) == labels).mean()))
    basis = nc.principal_basis(cache["fc_weight"])
    result["separation"] = {
        name: {k: round(v, 6) for k, v in nc.separation_degrees(cache[f"{name}__features"], basis).items()}
        for name in ["id_test", *ood_sets]
    }
    result["nc_id_test"] = {k: round(v, 6) for k, v in nc.nc_metrics(
        cache["id_test__features"], labels, cache["fc_weight"], cache["fc_bias"]).items()}
    result["convention"] = M.describe_convention(score_cfg["convention"], score_cfg["tpr"])
    return result

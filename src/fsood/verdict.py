"""Does the paper's claim hold here? A paired test across pretrained models, with its uncertainty.

The claim (arXiv 2405.17816, Tables 1-2): fine-tuning with the separation loss and scoring with Eq. 6 lowers
FPR95 against Outlier Exposure scored with MSP, averaged over the real OOD sets. The unit of the test is
the pretrained model: cells fine-tuned from one model share it, so their differences are not independent.
Per model m, ``d_m`` is the mean over its fine-tuning seeds of (method - baseline) of the endpoint (by
default FPR95 in points, averaged over the natural OOD sets; ``verdict.endpoint``). Then:

* an exact sign-flip (permutation) test of the mean of d over every one of the 2^n sign patterns; its
  one-sided p-value is in the direction of the claim (the smallest possible is 2^-n: 5 models give 0.031);
* a t confidence interval (level 1 - alpha) of the mean of d over models;
* a hierarchical paired bootstrap: models with replacement, then each drawn model's seeds with replacement,
  then the test images (ID test and each natural OOD set) with replacement, the same images for the
  method and the baseline; the endpoint is recomputed from ``scores.npz`` (percentile interval).

Outcome (``decide``): "supported" when the t interval lies entirely on the claim's side of 0 and the
sign-flip p-value is below alpha; "not supported" when the (1 - 2 alpha) t interval lies within
(-margin, +margin) (equivalence by two one-sided tests), or the t interval lies entirely on the wrong side
of 0 (worse); "inconclusive" otherwise.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fsood import metrics as M

# endpoint -> sign of "better": FPR95 lower, AUROC higher
BETTER = {"fpr95": -1.0, "auroc": 1.0}
MAX_EXACT_MODELS = 20  # 2^20 sign patterns; more models than that would need a sampled test
OUTCOMES = ("supported", "not supported", "inconclusive")


@dataclass(frozen=True)
class Design:
    """What is compared: ``method`` with ``method_score`` against ``baseline`` with ``baseline_score``, on
    ``endpoint`` averaged over ``sets`` (the natural OOD sets)."""

    method: str
    baseline: str
    method_score: str
    baseline_score: str
    endpoint: str
    sets: tuple[str, ...]
    convention: str = "id_positive"
    tpr: float = 0.95


def model_differences(endpoint: dict, models: list[int], seeds: list[int]) -> np.ndarray:
    """d_m: per model, the mean over seeds of ``endpoint[(m, s)]`` (method - baseline, one cell pair)."""
    return np.array([np.mean([endpoint[m, s] for s in seeds]) for m in models], dtype=np.float64)


def sign_flip_test(d: np.ndarray, better: float) -> dict:
    """Exact sign-flip test of mean(d) = 0: every sign pattern of the n differences.

    ``p_one_sided``: the share of patterns whose mean is at least as far on the claim's side (``better``:
    -1 for lower-is-better) as the observed one; ``p_two_sided``: as far from 0 either way."""
    n = len(d)
    if n == 0:
        return {"n": 0, "p_one_sided": 1.0, "p_two_sided": 1.0, "min_p_one_sided": 1.0}
    if n > MAX_EXACT_MODELS:
        raise ValueError(f"the exact sign-flip test enumerates 2^n patterns; {n} models exceed {MAX_EXACT_MODELS}")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    means = signs @ np.abs(d) / n
    observed = float(np.mean(d))
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    one = float(np.mean(better * means >= better * observed - tol))
    two = float(np.mean(np.abs(means) >= abs(observed) - tol))
    return {"n": n, "p_one_sided": one, "p_two_sided": two, "min_p_one_sided": 2.0 ** -n}


def t_interval(d: np.ndarray, level: float) -> tuple[float, float]:
    """Two-sided t confidence interval of mean(d) at ``level``; (-inf, inf) for fewer than 2 values."""
    n = len(d)
    if n < 2:
        return -math.inf, math.inf
    half = stats.t.ppf(0.5 + level / 2, n - 1) * float(np.std(d, ddof=1)) / math.sqrt(n)
    return float(np.mean(d) - half), float(np.mean(d) + half)


def _endpoint(id_scores: np.ndarray, ood: list[np.ndarray], design: Design) -> float:
    """The endpoint in points, averaged over the sets: FPR at ``tpr`` or AUROC."""
    if design.endpoint == "fpr95":
        values = [M.fpr_at_tpr(id_scores, o, design.tpr, design.convention) for o in ood]
    else:
        values = [M.auroc(id_scores, o) for o in ood]
    return 100.0 * float(np.mean(values))


def bootstrap(scores: dict, design: Design, models: list[int], seeds: list[int], resamples: int,
              seed: int, level: float) -> dict:
    """Hierarchical paired bootstrap of mean d over models (percentile interval at ``level``).

    ``scores[(method or baseline, model, seed)]`` is the cell's scores.npz (``<score>__<set>`` arrays). Each
    resample draws models, then seeds within each drawn model, then image indices of ID test and of each
    set; the method and the baseline are scored on the same drawn images."""
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    n_id = len(scores[design.method, models[0], seeds[0]][f"{design.method_score}__id_test"])
    n_ood = [len(scores[design.method, models[0], seeds[0]][f"{design.method_score}__{s}"]) for s in design.sets]
    for b in range(resamples):
        per_model = []
        for m in rng.choice(models, size=len(models), replace=True):
            per_seed = []
            for s in rng.choice(seeds, size=len(seeds), replace=True):
                id_rows = rng.integers(0, n_id, n_id)
                ood_rows = [rng.integers(0, n, n) for n in n_ood]
                value = {}
                for who, score in ((design.method, design.method_score), (design.baseline, design.baseline_score)):
                    arrays = scores[who, m, s]
                    value[who] = _endpoint(arrays[f"{score}__id_test"][id_rows],
                                           [arrays[f"{score}__{name}"][rows] for name, rows in zip(design.sets,
                                                                                                   ood_rows)], design)
                per_seed.append(value[design.method] - value[design.baseline])
            per_model.append(np.mean(per_seed))
        means[b] = np.mean(per_model)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return {"resamples": resamples, "seed": seed, "low": float(low), "high": float(high),
            "std": float(np.std(means, ddof=1)) if resamples > 1 else 0.0}


def decide(mean: float, ci: tuple[float, float], ci_equivalence: tuple[float, float], p_one_sided: float,
           alpha: float, margin: float, better: float) -> tuple[str, str]:
    """(outcome, reason) from the t intervals and the sign-flip p-value (module docstring)."""
    low, high = ci
    on_claim_side = high < 0 if better < 0 else low > 0
    on_wrong_side = low > 0 if better < 0 else high < 0
    if on_claim_side and p_one_sided < alpha:
        return "supported", (f"the {1 - alpha:.0%} interval [{low:+.2f}, {high:+.2f}] excludes 0 on the claim's side "
                             f"and the sign-flip p-value {p_one_sided:.3f} < {alpha}")
    if on_wrong_side:
        return "not supported", f"the method is worse: the {1 - alpha:.0%} interval [{low:+.2f}, {high:+.2f}] excludes 0"
    if -margin < ci_equivalence[0] and ci_equivalence[1] < margin:
        return "not supported", (f"equivalent within ±{margin:g}: the {1 - 2 * alpha:.0%} interval "
                                 f"[{ci_equivalence[0]:+.2f}, {ci_equivalence[1]:+.2f}] lies inside it")
    why = "the interval includes 0" if not on_claim_side else f"the sign-flip p-value {p_one_sided:.3f} >= {alpha}"
    return "inconclusive", (f"mean {mean:+.2f}, {1 - alpha:.0%} interval [{low:+.2f}, {high:+.2f}]: {why}, "
                            f"and equivalence within ±{margin:g} is not shown")


def _bounds(interval: tuple[float, float]) -> list[float | None]:
    """An interval for JSON: None for an unbounded side (fewer than two models)."""
    return [round(v, 4) if math.isfinite(v) else None for v in interval]


def evaluate(endpoint: dict, scores: dict | None, design: Design, models: list[int], seeds: list[int],
             alpha: float, margin: float, resamples: int, bootstrap_seed: int) -> dict:
    """The whole verdict: per-model differences, the three analyses and the outcome (verdict.json's body).

    ``endpoint[(m, s)]``: method - baseline of the endpoint for the cell pair (m, s), from metrics.json;
    ``scores``: as :func:`bootstrap` takes them (None: no bootstrap)."""
    better = BETTER[design.endpoint]
    d = model_differences(endpoint, models, seeds)
    mean = float(np.mean(d))
    ci = t_interval(d, 1 - alpha)
    ci_eq = t_interval(d, 1 - 2 * alpha)
    flip = sign_flip_test(d, better)
    outcome, reason = decide(mean, ci, ci_eq, flip["p_one_sided"], alpha, margin, better)
    result = {
        "outcome": outcome, "reason": reason,
        "design": {"method": design.method, "method_score": design.method_score, "baseline": design.baseline,
                   "baseline_score": design.baseline_score, "endpoint": design.endpoint,
                   "better": "lower" if better < 0 else "higher", "sets": list(design.sets),
                   "difference": "method - baseline, points", "unit": "pretrained model (mean over its seeds)"},
        "models": models, "seeds": seeds, "alpha": alpha, "margin": margin,
        "per_model": {str(m): round(float(v), 4) for m, v in zip(models, d)},
        "per_cell": {f"{m}-{s}": round(float(endpoint[m, s]), 4) for m in models for s in seeds},
        "mean": round(mean, 4),
        "wins": int(np.sum(better * d > 0)),
        "t_interval": _bounds(ci),
        "t_interval_equivalence": _bounds(ci_eq),
        "sign_flip": flip,
    }
    if scores is not None and resamples > 0:
        result["bootstrap"] = {k: round(v, 4) if isinstance(v, float) else v
                               for k, v in bootstrap(scores, design, models, seeds, resamples, bootstrap_seed,
                                                     1 - alpha).items()}
    return result

"""Class-balanced, seeded subsets of a labelled set: the fitted detectors' ID-train sample, fine-tuning's ID cap."""
from __future__ import annotations

import numpy as np

SUBSET_SEED = 0  # one fixed subset for every cell of a benchmark


def balanced_subset(labels: np.ndarray, cap: int | None, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of a class-balanced, seeded subset of at most ``cap`` samples (None: all).

    Each class is shuffled with ``seed``; samples are then taken by rank within their class
    (every class's first, then every class's second, ...), so class counts differ by at most
    one unless a class runs out.
    """
    labels = np.asarray(labels)
    if cap is None or cap >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((labels, rank))  # by rank, then class
    return np.sort(order[:cap])

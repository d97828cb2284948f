"""The detector interface: ``Detector``, the name registry and ``build_detector``.

Convention throughout fsood: **higher score = more in-distribution** (the paper's). Each detector
is a small class in the style of pytorch-ood, but works on the forward cache (logits, features,
classifier weight) so a model is run once per dataset. The detectors themselves live in
:mod:`fsood.detectors.basic` (from logits / cosines), :mod:`fsood.detectors.fitted` (fitted on ID
training statistics) and :mod:`fsood.detectors.odin`; each imports this module and registers itself.
numpy only: the report stage imports the detectors without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

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




def fitted():
    """A dataclass field for state learnt in ``fit`` (not an option: no init, repr or compare)."""
    return field(default=None, init=False, repr=False, compare=False)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_classes(labels: np.ndarray, n_classes: int, who: str) -> None:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    if len(counts) > n_classes or (counts == 0).any():
        raise ValueError(f"{who}: ID-train labels must cover classes 0..{n_classes - 1} of W; "
                         f"counts per label: {counts.tolist()}")


def cached_pass(cache, name: str, score: str, settings: dict[str, float]) -> np.ndarray:
    """``<name>__<score>`` from a cache whose extra input-gradient pass used exactly ``settings``
    (stored as ``<score>_<setting>``); a clear error when the pass is missing or used other values."""
    key = f"{name}__{score}"
    stored = [f"{score}_{k}" for k in settings]
    if key not in cache or any(k not in cache for k in stored):
        raise ValueError(f"score {score!r} needs {key!r} in the cache, which only the score stage's {score} pass "
                         f"writes: list {score} in score.scores and rerun the score stage")
    used = tuple(float(np.asarray(cache[k]).item()) for k in stored)
    if not np.allclose(used, tuple(settings.values()), rtol=1e-12, atol=0):
        raise ValueError(f"the cache's {score} scores used ({', '.join(settings)})={used}, but "
                         f"score.options.{score} asks for {tuple(settings.values())}: rerun the score stage")
    return np.asarray(cache[key], dtype=np.float64)

"""The Outlier Exposure paper's synthetic OOD sets, as uint8 images (N, C, H, W).

Following Hendrycks et al.'s ``test.py``, in [0, 1] pixel units:
* ``gaussian``: N(0.5, 0.25^2) per pixel, clipped to [0, 1] (their N(0, 0.5^2) on [-1, 1]);
* ``rademacher``: each pixel 0 or 1 with probability 1/2 (their +-1);
* ``blobs``: Bernoulli(0.7) pixels, Gaussian-smoothed, values below 0.75 set to 0. The OE
  code smooths each HWC image with skimage's ``gaussian(sigma=1.5, multichannel=False)``, i.e.
  over height, width *and* the channel axis, with ``mode="nearest"``: ``BLOBS_OE``.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

SYNTHETIC_SETS = ("gaussian", "rademacher", "blobs")
BLOBS_OE = {"sigma": (1.5, 1.5, 1.5), "mode": "nearest"}  # over (C, H, W)


def synthetic(kind: str, n: int, shape: tuple[int, int, int], rng: np.random.Generator,
              blobs: dict = BLOBS_OE) -> np.ndarray:
    """``n`` uint8 images of ``shape`` (C, H, W); ``blobs``: smoothing sigma per axis and mode."""
    size = (n, *shape)
    if kind == "gaussian":
        x = np.clip(rng.normal(0.5, 0.25, size=size), 0, 1)
    elif kind == "rademacher":
        x = rng.binomial(1, 0.5, size=size).astype(np.float64)
    elif kind == "blobs":
        x = rng.binomial(1, 0.7, size=size).astype(np.float64)
        x = gaussian_filter(x, sigma=(0, *blobs["sigma"]), mode=blobs["mode"])  # never across images
        x[x < 0.75] = 0.0
    else:
        raise ValueError(f"unknown synthetic set {kind!r}; valid: {list(SYNTHETIC_SETS)}")
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

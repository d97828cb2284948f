"""Post-hoc OOD scores fitted on ID training statistics: ReAct, KNN, Mahalanobis, ViM, NECO, NCI.

Same convention as :mod:`fsood.detectors.base`: **higher = more in-distribution**. Each detector
works on cached logits / penultimate features z / classifier (W, b), so the model runs once
per dataset; ``fit(logits, features, labels, weight, bias)`` receives the ID-train forward
pass of the *scored* model (``id_train__*`` in the cache). numpy only: the report stage
imports this without torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from fsood.detectors.base import Detector, cached_pass, check_classes, fitted, register, unit_rows
from fsood.detectors.basic import max_logit


@register
@dataclass
class ReAct(Detector):
    """ReAct (Sun et al., NeurIPS 2021): energy of fc(min(z, c)).

    c is the ``percentile``-th percentile (0-100; the paper's 90) of all ID-train activations
    z (every unit of every sample, as the authors' ``np.percentile(activations.flatten(), 90)``);
    clipping is from above only. The energy is logsumexp(min(z, c) W^T + b) at T = 1.
    """

    percentile: float = 90.0
    name = "react"
    needs_fit = True
    threshold: float | None = fitted()
    bias: np.ndarray | None = fitted()

    def __post_init__(self):
        if not 0 < self.percentile <= 100:
            raise ValueError(f"react: percentile={self.percentile} must lie in (0, 100]")

    def fit(self, logits, features, labels, weight, bias):
        self.threshold = float(np.percentile(np.asarray(features, dtype=np.float64), self.percentile))
        self.bias = np.asarray(bias, dtype=np.float64)
        return self

    def score(self, logits, features, weight):
        self._require_fit(self.threshold)
        clipped = np.minimum(np.asarray(features, dtype=np.float64), self.threshold)
        return logsumexp(clipped @ np.asarray(weight, dtype=np.float64).T + self.bias, axis=1)


@register
@dataclass
class KNN(Detector):
    """Deep nearest neighbours (Sun et al., ICML 2022): -||z - z_(k)|| on unit-length features.

    z_(k) is the k-th nearest of the L2-normalised ID-train features. ``k`` is meant for the full
    ID-train set (the KNN paper: 50 for CIFAR-10's 50,000 images). With ``scale_k`` (default) and a
    bank sampled from it (``score.fit_samples`` below the ID-train size, which the score stage
    records as ``train_size``), k is scaled with the sampled fraction, the KNN paper's rule for a
    sampled bank (ImageNet: k 1,000 on all images, 10 on 1 %): k' = max(1, round(k * bank / train_size)).
    The authors of the separation paper score their models with k = 1 (CIFAR) and 10 (ImageNet)
    on the full bank. The KNN authors rank by faiss' squared distance; the plain distance ranks the
    same. Exact search by chunked matmul (||a - b||^2 = 2 - 2 a.b for unit vectors), no faiss.
    """

    k: int = 50
    scale_k: bool = True
    chunk_elements: int = 1 << 22  # similarities held at once (32 MiB of float64)
    name = "knn"
    needs_fit = True
    bank: np.ndarray | None = fitted()
    k_used: int | None = fitted()

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"knn: k={self.k} must be >= 1")

    def effective_k(self, bank_size: int) -> int:
        """k for a bank of ``bank_size`` of the ``train_size`` ID-train images (k itself if unscaled or full)."""
        if not self.scale_k or self.train_size is None or bank_size >= self.train_size:
            return self.k
        return max(1, round(self.k * bank_size / self.train_size))

    def fit(self, logits, features, labels, weight, bias):
        self.k_used = self.effective_k(len(features))
        if len(features) < self.k_used:
            raise ValueError(f"knn: k={self.k_used} exceeds the {len(features)} ID-train samples "
                             "(raise score.fit_samples or lower score.options.knn.k)")
        self.bank = unit_rows(features)
        return self

    def score(self, logits, features, weight):
        self._require_fit(self.bank)
        z = unit_rows(features)
        n, k = len(self.bank), self.k_used
        rows = max(1, self.chunk_elements // n)
        kth = np.empty(len(z))
        for start in range(0, len(z), rows):
            sims = z[start:start + rows] @ self.bank.T
            kth[start:start + rows] = np.partition(sims, n - k, axis=1)[:, n - k]  # k-th largest
        return -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))


@register
@dataclass
class Mahalanobis(Detector):
    """Mahalanobis score (Lee et al., NeurIPS 2018) on the penultimate features.

    Class means mu_c and one shared (tied) covariance Sigma = (1/N) sum_i (z_i - mu_{y_i})(...)^T
    from ID-train features and their true labels; score = max_c -(z - mu_c)^T Sigma^+ (z - mu_c)
    (pseudo-inverse, as sklearn's EmpiricalCovariance in the authors' code), on the last layer only
    (no ensemble over layers). ``epsilon`` > 0 adds Lee et al.'s input pre-processing, which the
    separation paper's authors run with magnitude 0.01: x~ = x - epsilon * sign(grad_x d_min(x)) / std_c
    (d_min the distance to the nearest class mean), then the score of f(x~). That needs input
    gradients, so the score stage runs it in its own pass (``fsood.detectors.gradient.mahalanobis_scores``)
    and caches ``<set>__mahalanobis`` with ``mahalanobis_epsilon``; :meth:`score_set` reads them.
    :meth:`score` is the feature-only score (epsilon 0).
    """

    epsilon: float = 0.0
    name = "mahalanobis"
    needs_fit = True
    means: np.ndarray | None = fitted()
    precision: np.ndarray | None = fitted()

    def __post_init__(self):
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"mahalanobis: epsilon={self.epsilon} must lie in [0, 1] (pixel units)")

    def fit(self, logits, features, labels, weight, bias):
        z = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        check_classes(labels, len(weight), "mahalanobis")
        self.means = np.stack([z[labels == c].mean(axis=0) for c in range(len(weight))])
        centred = z - self.means[labels]
        self.precision = np.linalg.pinv(centred.T @ centred / len(z), hermitian=True)
        return self

    def score(self, logits, features, weight):
        self._require_fit(self.means)
        z = np.asarray(features, dtype=np.float64)
        dist = np.stack([((z - mu) @ self.precision * (z - mu)).sum(axis=1) for mu in self.means], axis=1)
        return -dist.min(axis=1)

    def score_set(self, cache, name):
        if self.epsilon == 0:
            return super().score_set(cache, name)
        return cached_pass(cache, name, self.name, {"epsilon": self.epsilon})


def vim_dim(feature_dim: int) -> int:
    """ViM's principal dimension D by the authors' rule: 1000 if d >= 2048, 512 if d >= 768, else d // 2."""
    return 1000 if feature_dim >= 2048 else 512 if feature_dim >= 768 else feature_dim // 2


@register
@dataclass
class ViM(Detector):
    """ViM, virtual-logit matching (Wang et al., CVPR 2022): energy - alpha ||z^{P-perp}||.

    Origin u = -W^+ b; P = the ``dim`` leading eigenvectors of the ID-train covariance of
    z - u (uncentred, sklearn's ``assume_centered=True``); the residual z^{P-perp} is the part
    of z - u outside P; alpha = mean max-logit / mean residual norm over ID train. The authors
    score ``-vlogit + energy`` (higher = ID), which is what this returns. ``dim=None``: the
    authors' rule, :func:`vim_dim`.
    """

    dim: int | None = None
    name = "vim"
    needs_fit = True
    origin: np.ndarray | None = fitted()
    residual_basis: np.ndarray | None = fitted()
    alpha: float | None = fitted()

    def fit(self, logits, features, labels, weight, bias):
        z = np.asarray(features, dtype=np.float64)
        d = z.shape[1]
        dim = vim_dim(d) if self.dim is None else self.dim
        if not 0 < dim < d:
            raise ValueError(f"vim: dim={dim} must lie in 1..{d - 1} for {d}-d features")
        self.origin = -np.linalg.pinv(np.asarray(weight, dtype=np.float64)) @ np.asarray(bias, dtype=np.float64)
        x = z - self.origin
        _, vecs = np.linalg.eigh(x.T @ x / len(x))  # ascending eigenvalues
        self.residual_basis = vecs[:, : d - dim]
        residual = np.linalg.norm(x @ self.residual_basis, axis=1)
        self.alpha = float(max_logit(logits).mean() / residual.mean())
        return self

    def score(self, logits, features, weight):
        self._require_fit(self.alpha)
        residual = np.linalg.norm((np.asarray(features, dtype=np.float64) - self.origin) @ self.residual_basis, axis=1)
        return logsumexp(np.asarray(logits, dtype=np.float64), axis=1) - self.alpha * residual


@register
@dataclass
class NECO(Detector):
    """NECO (Ben Ammar et al., ICLR 2024): ||P_d s(z)|| / ||s(z)||, optionally times MaxLogit.

    s standardises each unit with the ID-train mean and std (sklearn's StandardScaler;
    ``standardize=False``: s = identity); P_d projects onto the ``dim`` leading principal
    components of s(ID-train features). As the authors' code (``neco()``, ``resnet`` branch,
    the one for CNNs like ours), the projection is of s(z) itself: sklearn's PCA subtracts
    the train mean of s(z), which is zero after standardisation. ``maxlogit=True`` is the
    authors' ViT / DeiT / Swin variant (score times max logit); its DeiT / Swin quirk of a
    raw-feature denominator is not reproduced. ``dim=None``: C - 1, the dimension of a simplex
    ETF of C class means (Neural Collapse, NC2); NECO tunes d per model.
    """

    dim: int | None = None
    standardize: bool = True
    maxlogit: bool = False
    name = "neco"
    needs_fit = True
    mean: np.ndarray | None = fitted()
    scale: np.ndarray | None = fitted()
    components: np.ndarray | None = fitted()

    def _standardized(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.scale

    def fit(self, logits, features, labels, weight, bias):
        z = np.asarray(features, dtype=np.float64)
        d = z.shape[1]
        dim = len(weight) - 1 if self.dim is None else self.dim
        if not 0 < dim <= d:
            raise ValueError(f"neco: dim={dim} must lie in 1..{d} for {d}-d features")
        if self.standardize:
            std = z.std(axis=0)
            self.mean, self.scale = z.mean(axis=0), np.where(std > 0, std, 1.0)  # sklearn keeps constant units
        else:
            self.mean, self.scale = np.zeros(d), np.ones(d)
        s = self._standardized(z)
        _, _, vt = np.linalg.svd(s - s.mean(axis=0), full_matrices=False)
        self.components = vt[:dim]
        return self

    def score(self, logits, features, weight):
        self._require_fit(self.components)
        s = self._standardized(features)
        ratio = np.linalg.norm(s @ self.components.T, axis=1) / np.maximum(np.linalg.norm(s, axis=1), 1e-12)
        return ratio * max_logit(logits) if self.maxlogit else ratio


@register
@dataclass
class NCI(Detector):
    """NCI (Liu & Qin, "Detecting Out-of-distribution through the Lens of Neural Collapse", CVPR 2025).

    score = w_c . (z - mu_G) / ||z - mu_G|| + alpha ||z||_1, with c the predicted class
    (argmax logit), w_c its raw (not normalised) weight row and mu_G the mean of the ID-train
    features, as the authors' OpenOOD postprocessor. The first term is ||w_c|| cos(z - mu_G, w_c).
    """

    alpha: float = 1e-4
    name = "nci"
    needs_fit = True
    global_mean: np.ndarray | None = fitted()

    def fit(self, logits, features, labels, weight, bias):
        self.global_mean = np.asarray(features, dtype=np.float64).mean(axis=0)
        return self

    def score(self, logits, features, weight):
        self._require_fit(self.global_mean)
        z = np.asarray(features, dtype=np.float64)
        centred = z - self.global_mean
        w_pred = np.asarray(weight, dtype=np.float64)[np.asarray(logits).argmax(axis=1)]
        proximity = (centred * w_pred).sum(axis=1) / np.maximum(np.linalg.norm(centred, axis=1), 1e-12)
        return proximity + self.alpha * np.abs(z).sum(axis=1)

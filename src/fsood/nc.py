"""Neural Collapse metrics (Papyan, Han & Donoho, PNAS 2020) and the principal subspace.

Shapes: ``features`` (N, d), ``labels`` (N,) in 0..C-1, classifier ``weight`` (C, d),
``bias`` (C,). The paper's "principal subspace" is span(W) (C dimensions), not a PCA
of the features; Neural Collapse (NC3) says the centred class means span the same space.
"""
from __future__ import annotations

import numpy as np


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """mu_c for each class, shape (C, d). Every class must have a sample."""
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"classes without samples: {np.flatnonzero(counts == 0).tolist()}")
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums / counts[:, None]


def _equinorm(rows: np.ndarray) -> float:
    norms = np.linalg.norm(rows, axis=1)
    return float(norms.std() / norms.mean())


def _equiangularity(rows: np.ndarray) -> float:
    """mean over pairs c != c' of |cos(r_c, r_c') + 1/(C-1)|; 0 for a simplex ETF."""
    c = rows.shape[0]
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cos = unit @ unit.T
    off_diag = cos[~np.eye(c, dtype=bool)]
    return float(np.abs(off_diag + 1.0 / (c - 1)).mean())


def _nc1(within: np.ndarray, centred: np.ndarray, rcond: float = 1e-15) -> float:
    """(1/C) Tr(Sigma_W Sigma_B^+), with Sigma_W = within^T within / N and Sigma_B = M^T M / C.

    Without a d x d matrix: M = U S V^T (thin SVD, r <= C directions) gives Sigma_B^+ = V diag(C / S^2) V^T,
    so the trace is sum_i (C / s_i^2) v_i^T Sigma_W v_i = sum_i C ||within v_i||^2 / (N s_i^2). Directions
    are kept as np.linalg.pinv keeps them (eigenvalue of Sigma_B above rcond times the largest). O(N d C)
    instead of O(N d^2 + d^3): 2048-d ResNet-50 features no longer cost seconds a call.
    """
    num_classes = centred.shape[0]
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    eig = s**2 / num_classes  # Sigma_B's non-zero spectrum
    keep = eig > rcond * eig.max()  # none where all class means coincide: then NC1 is 0, as pinv gave
    projected = within @ vt[keep].T  # (N, r)
    return float(((projected**2).mean(axis=0) / eig[keep]).sum() / num_classes)


def nc_metrics(
    features: np.ndarray, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None
) -> dict[str, float]:
    """NC1-NC4 of a feature set under a linear classifier.

    * nc1: (1/C) Tr(Sigma_W Sigma_B^+), within- over between-class variability.
    * nc2_*: equinorm (std/mean of norms) and equiangularity of the centred class means
      M = [mu_c - mu_G] and of the classifier rows W.
    * nc3: || W/||W||_F - M/||M||_F ||_F, self-duality of classifier and means.
    * nc4: fraction of samples where the nearest class mean and the classifier disagree.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    num_classes = weight.shape[0]
    mu = class_means(features, labels, num_classes)
    mu_g = mu.mean(axis=0)
    centred = mu - mu_g  # M, (C, d)

    nc1 = _nc1(features - mu[labels], centred)

    nc3 = float(np.linalg.norm(weight / np.linalg.norm(weight) - centred / np.linalg.norm(centred)))

    logits = features @ weight.T + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))
    # ||z - mu_c||^2 up to the per-sample constant ||z||^2: no (N, C, d) temporary.
    dist = (mu**2).sum(axis=1)[None, :] - 2.0 * features @ mu.T
    nc4 = float((logits.argmax(axis=1) != dist.argmin(axis=1)).mean())

    return {
        "nc1": nc1,
        "nc2_equinorm_means": _equinorm(centred),
        "nc2_equinorm_weights": _equinorm(weight),
        "nc2_equiangular_means": _equiangularity(centred),
        "nc2_equiangular_weights": _equiangularity(weight),
        "nc3": nc3,
        "nc4": nc4,
    }


def principal_basis(weight: np.ndarray) -> np.ndarray:
    """Orthonormal basis of span(W), shape (d, r) with r = rank(W) <= C."""
    u, s, _ = np.linalg.svd(np.asarray(weight, dtype=np.float64).T, full_matrices=False)
    rank = int((s > s.max() * max(weight.shape) * np.finfo(np.float64).eps).sum())
    return u[:, :rank]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def span_measures(features: np.ndarray, basis: np.ndarray) -> dict[str, float]:
    """How far features lie from span(W) (``basis``: orthonormal, from :func:`principal_basis`).

    * cos_to_span: mean ||P z|| / ||z|| (cosine between z and its projection P z);
    * dist_to_span: mean ||z - P z||;
    * recon_error: mean ||z - P z||^2 / ||z||^2, the relative reconstruction error to span(W),
      the paper's Table 7 third measure. Per sample cos_to_span^2 + recon_error = 1.
    """
    z = np.asarray(features, dtype=np.float64)
    proj = (z @ basis) @ basis.T
    norm = np.maximum(np.linalg.norm(z, axis=1), 1e-12)
    resid = np.linalg.norm(z - proj, axis=1)
    return {
        "cos_to_span": float((np.linalg.norm(proj, axis=1) / norm).mean()),
        "dist_to_span": float(resid.mean()),
        "recon_error": float(((resid / norm) ** 2).mean()),
    }


def anchor_measures(features: np.ndarray, anchors: np.ndarray, predicted: np.ndarray,
                    unit: bool) -> tuple[float, float]:
    """(mean Euclidean distance, mean cosine) between each feature and the anchor of its predicted class.

    ``anchors`` (C, d): classifier rows w_c (Table 7) or class means mu_c (Table 14); ``predicted``:
    argmax of the logits. ``unit``: the distance between L2-normalised z and anchor (the geometry of
    the cosine losses), else between the raw vectors. The cosine is signed.
    """
    z = np.asarray(features, dtype=np.float64)
    a = np.asarray(anchors, dtype=np.float64)[np.asarray(predicted, dtype=np.int64)]
    cos = (_unit_rows(z) * _unit_rows(a)).sum(axis=1)
    diff = _unit_rows(z) - _unit_rows(a) if unit else z - a
    return float(np.linalg.norm(diff, axis=1).mean()), float(cos.mean())


def separation_degrees(features: np.ndarray, logits: np.ndarray, weight: np.ndarray,
                       means: np.ndarray | None = None) -> dict[str, float]:
    """The paper's feature-separation degrees of one set, plus the span(W) measures.

    Table 7 (Sec. 4.5): ``dist_pred_weight`` and ``cos_pred_weight``, distance and cosine between z
    and the weight w_yhat of the predicted class yhat = argmax logits, and ``recon_error``, the
    reconstruction error to span(W). The paper prints no formula; its distances (0.69-1.21) are on
    the scale of unit vectors, so the distance is ||z/||z|| - w/||w||||. Table 14 (A.6, with ``means``,
    the ID-train class means mu_c): ``dist_pred_mean`` and ``cos_pred_mean``, the same with mu_yhat in
    place of w_yhat; its distances reach 6.18, beyond the unit scale, so they are between raw vectors.
    ``cos_to_span`` and ``dist_to_span`` (:func:`span_measures`) measure closeness to span(W) as a whole.
    """
    predicted = np.asarray(logits).argmax(axis=1)
    out = span_measures(features, principal_basis(weight))
    out["dist_pred_weight"], out["cos_pred_weight"] = anchor_measures(features, weight, predicted, unit=True)
    if means is not None:
        out["dist_pred_mean"], out["cos_pred_mean"] = anchor_measures(features, means, predicted, unit=False)
    return out


# ----------------------------------------------------------------------------- the paper's Fig. 2

PROJECTION_SUBSAMPLE_SEED = 0  # the same points for every method: ID test and OOD sets are shared between cells


def _subsample(x: np.ndarray, k: int) -> np.ndarray:
    if len(x) <= k:
        return x
    idx = np.sort(np.random.default_rng(PROJECTION_SUBSAMPLE_SEED).choice(len(x), size=k, replace=False))
    return x[idx]


def projection_axes(weight: np.ndarray, c1: int, c2: int, ood_features: np.ndarray) -> np.ndarray:
    """Orthonormal (3, d): w1, w2 Gram-Schmidt-orthogonalised to w1, and u, the top principal
    direction of the OOD features' residual after removing their component in span(W)."""
    w = np.asarray(weight, dtype=np.float64)
    e1 = w[c1] / np.linalg.norm(w[c1])
    e2 = w[c2] - (w[c2] @ e1) * e1
    e2 /= np.linalg.norm(e2)
    basis = principal_basis(w)
    z = np.asarray(ood_features, dtype=np.float64)
    resid = z - (z @ basis) @ basis.T
    u = np.linalg.svd(resid - resid.mean(axis=0), full_matrices=False)[2][0]
    u *= np.sign(resid.mean(axis=0) @ u) or 1.0  # fixed sign: OOD residuals project positively on average
    return np.stack([e1, e2, u])


def projection_panel(cache: dict, classes: list[int], ood: str, max_points: int) -> dict:
    """Points of the two ID classes and the OOD set in (w1, w2) and (w1, w2, u) coordinates."""
    c1, c2 = classes
    axes = projection_axes(cache["fc_weight"], c1, c2, cache[f"{ood}__features"])
    labels, feats = cache["id_test__labels"], cache["id_test__features"]
    sets = {f"ID class {c1}": feats[labels == c1], f"ID class {c2}": feats[labels == c2],
            f"OOD {ood}": cache[f"{ood}__features"]}
    coords = {k: _subsample(np.asarray(v, dtype=np.float64), max_points) @ axes.T for k, v in sets.items()}
    return {"2d": {k: v[:, :2] for k, v in coords.items()}, "3d": coords,
            "axes": (f"z·w1 (class {c1})", f"z·w2 (class {c2}, ⊥ w1)", "z·u (OOD residual PC1)")}

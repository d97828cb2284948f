"""Neural Collapse metrics and the principal subspace on constructed and random features."""
import numpy as np
import pytest

from fsood.nc import anchor_measures, class_means, nc_metrics, principal_basis, separation_degrees, span_measures


def _simplex_etf(num_classes, dim, rng):
    """Rows: C unit vectors in R^d forming a simplex ETF (cos = -1/(C-1))."""
    m0 = np.sqrt(num_classes / (num_classes - 1)) * (np.eye(num_classes) - np.ones((num_classes, num_classes)) / num_classes)
    u, _ = np.linalg.qr(rng.standard_normal((dim, num_classes)))  # (d, C) orthonormal columns
    return (u @ m0).T  # (C, d)


def _collapsed(num_classes=5, dim=16, per_class=20, noise=1e-4, seed=0):
    rng = np.random.default_rng(seed)
    means = _simplex_etf(num_classes, dim, rng)
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    feats = means[labels] + noise * rng.standard_normal((labels.size, dim))
    return feats, labels, means


def test_etf_construction_is_an_etf():
    means = _simplex_etf(5, 16, np.random.default_rng(1))
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, atol=1e-12)
    cos = means @ means.T
    off = cos[~np.eye(5, dtype=bool)]
    np.testing.assert_allclose(off, -1 / 4, atol=1e-12)


@pytest.mark.parametrize("num_classes", [4, 5])
def test_nc_metrics_on_collapsed_features(num_classes):
    feats, labels, means = _collapsed(num_classes=num_classes, seed=num_classes)
    weight = 3.0 * means
    m = nc_metrics(feats, labels, weight)
    assert m["nc1"] < 1e-6
    assert m["nc2_equinorm_means"] < 1e-3
    assert m["nc2_equiangular_means"] < 1e-3
    assert m["nc2_equinorm_weights"] < 1e-10
    assert m["nc2_equiangular_weights"] < 1e-10
    assert m["nc3"] < 1e-3
    assert m["nc4"] == 0.0


def test_nc_metrics_on_random_features():
    rng = np.random.default_rng(42)
    C, d, n = 5, 16, 200
    labels = np.r_[np.arange(C), rng.integers(0, C, n - C)]
    feats = rng.standard_normal((n, d))
    weight = rng.standard_normal((C, d))
    m = nc_metrics(feats, labels, weight)
    assert m["nc1"] > 0.1
    assert m["nc3"] > 0.1
    assert m["nc4"] > 0.0
    assert m["nc2_equiangular_weights"] > 0.01
    assert m["nc2_equinorm_weights"] > 0.01


def test_nc2_equinorm_hand():
    # weight row norms (1, 3): population std 1, mean 2 -> 0.5
    weight = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    feats = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    m = nc_metrics(feats, np.array([0, 1]), weight)
    assert m["nc2_equinorm_weights"] == pytest.approx(0.5)
    # two orthogonal rows: cos 0, target -1/(C-1) = -1 -> |0 + 1| = 1
    assert m["nc2_equiangular_weights"] == pytest.approx(1.0)
    # two centred means are antipodal: cos -1 -> 0
    assert m["nc2_equiangular_means"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc2_equinorm_means"] == pytest.approx(0.0, abs=1e-12)


def test_nc4_with_bias_hand():
    # Means at (+1, 0) and (-1, 0). Sample (0.5, 0) is nearest to class 0.
    # Classifier W = I rows, bias (0, 1): logits (0.5, 1) -> class 1 -> disagreement.
    feats = np.array([[1.0, 0.0], [-1.0, 0.0], [0.5, 0.0], [-1.0, 0.0]])
    labels = np.array([0, 1, 0, 1])
    weight = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert nc_metrics(feats, labels, weight)["nc4"] == 0.0
    m = nc_metrics(feats, labels, weight, bias=np.array([0.0, 1.5]))
    # logits: (1, -1+1.5)->0 ok ; (-1, 2.5)->1 ok ; (.5, 1)->1 but nearest mean 0 (mu0=(.75,0))
    #         (-1, 2.5)->1 ok  -> 1/4
    assert m["nc4"] == pytest.approx(0.25)


def _nc1_loops(feats, labels, num_classes):
    n, d = feats.shape
    mus = []
    for c in range(num_classes):
        acc = np.zeros(d)
        k = 0
        for i in range(n):
            if labels[i] == c:
                acc += feats[i]
                k += 1
        mus.append(acc / k)
    mus = np.array(mus)
    mu_g = np.zeros(d)
    for c in range(num_classes):
        mu_g += mus[c] / num_classes
    sigma_w = np.zeros((d, d))
    for i in range(n):
        diff = feats[i] - mus[labels[i]]
        sigma_w += np.outer(diff, diff)
    sigma_w /= n
    sigma_b = np.zeros((d, d))
    for c in range(num_classes):
        diff = mus[c] - mu_g
        sigma_b += np.outer(diff, diff)
    sigma_b /= num_classes
    # Moore-Penrose inverse through the eigendecomposition of the symmetric Sigma_B
    vals, vecs = np.linalg.eigh(sigma_b)
    keep = vals > vals.max() * 1e-10
    pinv = (vecs[:, keep] / vals[keep]) @ vecs[:, keep].T
    return mus, float(np.trace(sigma_w @ pinv) / num_classes)


def test_nc1_and_class_means_against_loops():
    rng = np.random.default_rng(3)
    C, d, n = 3, 6, 25
    labels = np.r_[np.arange(C), rng.integers(0, C, n - C)]
    feats = rng.standard_normal((n, d)) + 2.0 * rng.standard_normal((C, d))[labels]
    weight = rng.standard_normal((C, d))
    mus, nc1 = _nc1_loops(feats, labels, C)
    np.testing.assert_allclose(class_means(feats, labels, C), mus, atol=1e-12)
    assert nc_metrics(feats, labels, weight)["nc1"] == pytest.approx(nc1, rel=1e-8)


def test_nc1_of_wide_features_from_few_samples_is_exact():
    """ResNet-50's 2048-d features of a dozen images: Sigma_B is 2048 x 2048 of rank C - 1, where a pinv of the
    full matrix kept float noise as directions (it gave -2.9e11 on this draw). The reference works in the
    (C - 1)-dimensional span of the centred means, where nothing is ill-conditioned."""
    rng = np.random.default_rng(0)
    C, d, n = 3, 2048, 12
    feats, labels = rng.normal(size=(n, d)), np.arange(n) % C
    mus = class_means(feats, labels, C)
    centred, within = mus - mus.mean(0), feats - mus[labels]
    q, _ = np.linalg.qr(centred.T)  # (d, C): spans the means (one direction is their null sum)
    sigma_w = q.T @ (within.T @ within / n) @ q
    sigma_b = q.T @ (centred.T @ centred / C) @ q
    vals, vecs = np.linalg.eigh(sigma_b)
    keep = vals > vals.max() * 1e-10
    expected = float(np.trace(sigma_w @ (vecs[:, keep] / vals[keep]) @ vecs[:, keep].T) / C)
    got = nc_metrics(feats, labels, rng.normal(size=(C, d)))["nc1"]
    assert got == pytest.approx(expected, rel=1e-9) and got > 0


def test_class_means_missing_class_raises():
    feats = np.ones((3, 2))
    with pytest.raises(ValueError, match="1"):
        class_means(feats, np.array([0, 0, 2]), 3)
    with pytest.raises(ValueError):
        nc_metrics(feats, np.array([0, 0, 0]), np.ones((2, 2)))


def test_principal_basis_orthonormal_and_spans_w():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((5, 16))
    basis = principal_basis(weight)
    assert basis.shape == (16, 5)
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-12)
    np.testing.assert_allclose((weight @ basis) @ basis.T, weight, atol=1e-12)
    # an orthogonal complement vector is annihilated
    q, _ = np.linalg.qr(np.c_[weight.T, rng.standard_normal(16)])
    v = q[:, -1]
    np.testing.assert_allclose(basis.T @ v, 0.0, atol=1e-12)


def test_principal_basis_rank_deficient():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 10))
    w = np.r_[w, (w[0] + 2 * w[1])[None]]  # 5 rows, rank 4
    basis = principal_basis(w)
    assert basis.shape == (10, 4)
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-12)
    np.testing.assert_allclose((w @ basis) @ basis.T, w, atol=1e-10)


def test_span_measures_hand():
    w = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0]])
    basis = principal_basis(w)
    assert basis.shape == (4, 2)

    inside = span_measures(np.array([[3.0, 4.0, 0.0, 0.0]]), basis)
    assert inside["cos_to_span"] == pytest.approx(1.0, abs=1e-12)
    assert inside["dist_to_span"] == pytest.approx(0.0, abs=1e-12)
    assert inside["recon_error"] == pytest.approx(0.0, abs=1e-12)

    ortho = span_measures(np.array([[0.0, 0.0, 2.0, 0.0]]), basis)
    assert ortho["cos_to_span"] == pytest.approx(0.0, abs=1e-12)
    assert ortho["dist_to_span"] == pytest.approx(2.0, abs=1e-12)
    assert ortho["recon_error"] == pytest.approx(1.0, abs=1e-12)

    # (1, 0, 1, 0): projection (1,0,0,0); cos 1/sqrt2, dist 1, recon 1/2. Mean with the
    # two above: cos (1 + 0 + 1/sqrt2)/3, dist (0 + 2 + 1)/3, recon (0 + 1 + .5)/3
    mixed = span_measures(
        np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [1.0, 0.0, 1.0, 0.0]]), basis
    )
    assert mixed["cos_to_span"] == pytest.approx((1 + 2 ** -0.5) / 3, abs=1e-12)
    assert mixed["dist_to_span"] == pytest.approx(1.0, abs=1e-12)
    assert mixed["recon_error"] == pytest.approx(0.5, abs=1e-12)
    # per sample, cos_to_span^2 + recon_error = 1: the span cosine is no second measure of Table 7
    rng = np.random.default_rng(3)
    for z in rng.standard_normal((5, 1, 4)):
        one = span_measures(z, basis)
        assert one["cos_to_span"] ** 2 + one["recon_error"] == pytest.approx(1.0, abs=1e-12)


def test_table7_measures_are_to_the_predicted_class_weight():
    """arXiv:2405.17816v2, Sec. 4.5 / Table 7: distance and cosine between a feature and the weight
    of its *predicted* class (not span(W)), and reconstruction error to span(W)."""
    w = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    z = np.array([[1.0, 0.0, 1.0],    # predicted 0: cos(z, w0) = 1/sqrt2, unit distance sqrt(2 - sqrt2)
                  [0.0, 5.0, 0.0],    # predicted 1: on w1, cos 1, distance 0
                  [1.0, 0.0, 0.0]])   # logits say class 1 although z lies on w0: cos 0, distance sqrt2
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = separation_degrees(z, logits, w)
    assert got["cos_pred_weight"] == pytest.approx((2 ** -0.5 + 1 + 0) / 3, abs=1e-12)
    assert got["dist_pred_weight"] == pytest.approx((np.sqrt(2 - np.sqrt(2)) + 0 + np.sqrt(2)) / 3, abs=1e-12)
    assert got["recon_error"] == pytest.approx((0.5 + 0 + 0) / 3, abs=1e-12)  # span(W) = the first two axes
    assert got["cos_to_span"] == pytest.approx((2 ** -0.5 + 1 + 1) / 3, abs=1e-12)  # kept under its own name
    assert "cos_pred_mean" not in got  # Table 14 needs class means


def test_table14_measures_use_class_means_and_raw_distances():
    """Table 14 (A.6): the same with the class mean mu_yhat in place of w_yhat; raw-vector distance
    (its values, up to 6.18, exceed the unit-vector maximum of 2)."""
    means = np.array([[4.0, 0.0], [0.0, 1.0]])
    z = np.array([[1.0, 0.0], [0.0, -2.0]])
    logits = np.array([[5.0, 1.0], [0.0, 1.0]])
    dist, cos = anchor_measures(z, means, logits.argmax(1), unit=False)
    assert dist == pytest.approx((3.0 + 3.0) / 2) and cos == pytest.approx((1.0 - 1.0) / 2)
    got = separation_degrees(z, logits, np.eye(2), means)
    assert (got["dist_pred_mean"], got["cos_pred_mean"]) == pytest.approx((3.0, 0.0))
    assert anchor_measures(z, means, logits.argmax(1), unit=True)[0] == pytest.approx((0 + 2) / 2)

"""Post-hoc scores (fsood.detectors), the cache they read (stages/score.py) and metric groups.

Each detector has a hand-built case whose answer follows from its definition; where
pytorch-ood 0.4 has the detector, a cross-check on the same tiny model (pytorch-ood scores
"higher = more OOD", so fsood's score is compared with its negation).
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import ROOT
from fsood.config import ParamsError, validate_params
from fsood.evaluation import cache_sets, fitted_detector, metrics_from_cache, score_cache
from fsood.detectors import KNN, NCI, NECO, ODIN, Mahalanobis, ReAct, ViM, vim_dim
from fsood.detectors import DETECTORS, build_detector, msp
from fsood.detectors.gradient import mahalanobis_scores, odin_scores
from fsood.stages.score import metric_groups
from fsood.subsets import balanced_subset as fit_subset

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
FITTED = ["react", "knn", "mahalanobis", "vim", "neco", "nci"]
RUNTIME = {"eval_batch_size": 4, "channels_last": False, "precision": "fp32"}


def lse(*v):
    return math.log(sum(math.exp(x) for x in v))


# ---------------------------------------------------------------- hand-built cases


def test_react_threshold_is_the_percentile_and_clipping_reranks_a_huge_activation():
    train = np.arange(1.0, 11.0).reshape(5, 2)  # activations 1..10: the 90th percentile is 9 + 0.1 * (10 - 9)
    w, b = np.eye(2), np.zeros(2)
    det = ReAct(percentile=90).fit(train @ w.T, train, np.zeros(5, int), w, b)
    assert det.threshold == pytest.approx(9.1, abs=1e-12)
    outlier, inlier = np.array([100.0, 0.0]), np.array([9.0, 9.0])
    z = np.stack([outlier, inlier])
    got = det.score(z @ w.T, z, w)
    np.testing.assert_allclose(got, [lse(9.1, 0.0), 9.0 + math.log(2)], rtol=1e-12)
    assert got[0] < got[1]  # clipped: the huge activation no longer wins ...
    assert lse(*outlier) > lse(*inlier)  # ... as it does with the plain energy


def test_react_uses_the_bias_and_rejects_bad_percentiles():
    train = np.zeros((4, 2))
    w, b = np.eye(2), np.array([1.0, -1.0])
    det = ReAct(percentile=50).fit(train, train, np.zeros(4, int), w, b)  # threshold 0
    got = det.score(None, np.array([[5.0, -3.0]]), w)
    assert got[0] == pytest.approx(lse(0.0 + 1.0, -3.0 - 1.0), rel=1e-12)
    for bad in (0, -5, 100.5):
        with pytest.raises(ValueError, match=f"percentile={bad}"):
            ReAct(percentile=bad)


def test_knn_distance_to_kth_neighbour_on_the_unit_circle():
    angles = np.deg2rad([10.0, 30.0, 90.0, 180.0])
    norms = np.array([1.0, 5.0, 0.2, 3.0])  # features are normalised: norms must not matter
    bank = norms[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    query = np.array([[2.0, 0.0], [0.0, -1.0]])  # at 0 degrees: 10, 30, 90 away; at 270: 90, 100, 120
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    for k, expected in [(1, [chord(10), chord(90)]), (2, [chord(30), chord(100)]), (3, [chord(90), chord(120)])]:
        det = KNN(k=k).fit(None, bank, None, None, None)
        np.testing.assert_allclose(det.score(None, query, None), -np.array(expected), rtol=1e-10, err_msg=f"k={k}")


def test_knn_chunking_does_not_change_scores_and_k_is_checked():
    rng = np.random.default_rng(0)
    bank, query = rng.normal(size=(60, 5)), rng.normal(size=(23, 5))
    whole = KNN(k=7).fit(None, bank, None, None, None).score(None, query, None)
    chunked = KNN(k=7, chunk_elements=100).fit(None, bank, None, None, None).score(None, query, None)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)
    with pytest.raises(ValueError, match="k=61 exceeds the 60 ID-train samples"):
        KNN(k=61).fit(None, bank, None, None, None)


def test_mahalanobis_closed_form_with_tied_covariance():
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    mu = np.array([[0.0, 0.0], [10.0, 0.0]])
    z = np.concatenate([mu[0] + offsets, mu[1] + offsets])
    labels = np.repeat([0, 1], 4)
    w = np.zeros((2, 2))
    det = Mahalanobis().fit(None, z, labels, w, np.zeros(2))
    np.testing.assert_allclose(det.means, mu, atol=1e-12)
    # tied covariance (1/8) sum of outer products = diag(0.5, 2)
    test = np.array([[1.0, 1.0], [6.0, 0.0]])
    # (1, 1): class 0 -> 1/0.5 + 1/2 = 2.5 (class 1: 81/0.5 + 0.5) ; (6, 0): class 1 -> 16/0.5 = 32
    np.testing.assert_allclose(det.score(None, test, w), [-2.5, -32.0], rtol=1e-12)


def test_knn_scales_k_with_the_sampled_fraction_of_the_id_train_set():
    """The KNN paper's rule: k is for the full bank; a bank sampled at fraction a uses k * a."""
    rng = np.random.default_rng(1)
    bank, query = rng.normal(size=(60, 5)), rng.normal(size=(9, 5))
    sampled = KNN(k=50)
    sampled.train_size = 300  # the bank is a fifth of the ID-train set
    sampled.fit(None, bank, None, None, None)
    assert sampled.k_used == 10
    np.testing.assert_allclose(sampled.score(None, query, None),
                               KNN(k=10).fit(None, bank, None, None, None).score(None, query, None), rtol=1e-12)
    unscaled = KNN(k=50, scale_k=False)
    unscaled.train_size = 300
    assert unscaled.fit(None, bank, None, None, None).k_used == 50
    tiny = KNN(k=2)
    tiny.train_size = 10_000
    assert tiny.fit(None, bank, None, None, None).k_used == 1  # never below 1
    assert KNN(k=50).fit(None, bank, None, None, None).k_used == 50  # full bank (size unknown): k as given


def test_mahalanobis_needs_every_class():
    with pytest.raises(ValueError, match=r"classes 0\.\.2 of W"):
        Mahalanobis().fit(None, np.ones((4, 2)), np.array([0, 0, 1, 1]), np.zeros((3, 2)), np.zeros(3))


def test_vim_hand_case_origin_residual_and_alpha():
    w, b = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.array([-1.0, -2.0])
    u = np.array([1.0, 2.0, 0.0])  # -pinv(W) b
    offsets = np.array([[3, 0, 0], [-3, 0, 0], [0, 3, 0], [0, -3, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
    train = u + offsets  # covariance about u: diag(3, 3, 1/3): P = span(e1, e2), residual along e3
    det = ViM(dim=2).fit(train @ w.T + b, train, np.zeros(6, int), w, b)
    np.testing.assert_allclose(det.origin, u, atol=1e-12)
    # max logits of the train points: 3, 0, 3, 0, 0, 0 (mean 1); residual norms 0, 0, 0, 0, 1, 1 (mean 1/3)
    assert det.alpha == pytest.approx(3.0, rel=1e-12)
    test = np.array([[1.0, 2.0, 2.0], [4.0, 2.0, 0.0]])
    got = det.score(test @ w.T + b, test, w)
    np.testing.assert_allclose(got, [math.log(2) - 3.0 * 2.0, lse(3.0, 0.0)], rtol=1e-12)


def test_vim_dimension_rule_and_range():
    assert [vim_dim(d) for d in (4096, 2048, 2047, 768, 767, 128, 64)] == [1000, 1000, 512, 512, 383, 64, 32]
    z = np.random.default_rng(0).normal(size=(20, 4))
    w, b = np.eye(4)[:2], np.zeros(2)
    assert len(ViM().fit(z @ w.T, z, None, w, b).residual_basis.T) == 4 - 2  # default: half of 4
    with pytest.raises(ValueError, match="dim=4 must lie in 1..3"):
        ViM(dim=4).fit(z @ w.T, z, None, w, b)


def _axis_train() -> np.ndarray:
    """Zero-mean points with diagonal covariance: principal axes e1 > e2 > e3 = e4."""
    e = np.eye(4)
    return np.stack([s * a * e[i] for i, a in enumerate([3.0, 2.0, 0.5, 0.5]) for s in (1, -1)])


def test_neco_ratio_is_one_inside_the_principal_space_and_zero_orthogonal_to_it():
    train = _axis_train()
    w = np.zeros((3, 4))  # C = 3: dim=None gives C - 1 = 2
    det = NECO(standardize=False).fit(None, train, None, w, None)
    z = np.array([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [1.0, 0.0, 1.0, 0.0]])
    np.testing.assert_allclose(det.score(None, z, w), [1.0, 0.0, 1 / math.sqrt(2)], atol=1e-12)
    one = NECO(dim=1, standardize=False).fit(None, train, None, w, None)
    np.testing.assert_allclose(one.score(None, z, w), [3 / math.sqrt(10), 0.0, 1 / math.sqrt(2)], atol=1e-12)
    logits = np.array([[2.0, -1.0, 0.5], [1.0, 4.0, 0.0], [-3.0, -2.0, -1.0]])
    vit = NECO(standardize=False, maxlogit=True).fit(None, train, None, w, None)
    np.testing.assert_allclose(vit.score(logits, z, w), [2.0, 0.0, -1 / math.sqrt(2)], atol=1e-12)
    with pytest.raises(ValueError, match="dim=5 must lie in 1..4"):
        NECO(dim=5).fit(None, train, None, w, None)


def test_neco_standardised_matches_the_authors_sklearn_recipe():
    """The authors' neco(): StandardScaler, full PCA, ||first d coordinates|| / ||standardised z||."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6) * 5
    test = rng.normal(size=(40, 6)) * 2
    ss = StandardScaler().fit(train)
    pca = PCA(6).fit(ss.transform(train))
    reduced = pca.transform(ss.transform(test))[:, :3]
    expected = np.linalg.norm(reduced, axis=1) / np.linalg.norm(ss.transform(test), axis=1)
    det = NECO(dim=3).fit(None, train, None, np.zeros((4, 6)), None)
    np.testing.assert_allclose(det.score(None, test, None), expected, rtol=1e-8)


def test_nci_hand_case_raw_weight_of_the_predicted_class_plus_l1_norm():
    train = np.array([[1.0, 1.0], [3.0, 1.0]])  # mu_G = (2, 1)
    w = np.array([[2.0, 0.0], [0.0, 1.0]])
    det = NCI(alpha=0.5).fit(None, train, None, w, None)
    z = np.array([[2.0, 3.0], [5.0, 1.0]])
    logits = np.array([[0.0, 5.0], [1.0, 0.0]])  # predicted classes 1 and 0
    # (2, 3): centred (0, 2), w_1 = (0, 1): 2 / 2 = 1, plus 0.5 * 5
    # (5, 1): centred (3, 0), w_0 = (2, 0): 6 / 3 = 2, plus 0.5 * 6
    np.testing.assert_allclose(det.score(logits, z, w), [1.0 + 2.5, 2.0 + 3.0], rtol=1e-12)


def test_fitted_detectors_refuse_to_score_before_fit():
    z = np.ones((2, 3))
    for name in FITTED:
        with pytest.raises(RuntimeError, match=f"score '{name}' is fitted on ID training statistics"):
            build_detector(name).score(z[:, :2], z, np.ones((2, 3)))


def test_registry_options_and_defaults():
    assert set(FITTED) | {"odin"} <= set(DETECTORS)
    assert all(DETECTORS[n].needs_fit for n in FITTED)
    assert not any(DETECTORS[n].needs_fit for n in ("msp", "energy", "maxlogit", "abs_cos", "fs", "odin"))
    assert (ReAct().percentile, KNN().k, ODIN().temperature, ODIN().epsilon) == (90.0, 50, 1000.0, 0.0014)
    with pytest.raises(TypeError, match=r"score 'knn' has no option\(s\) \['K'\]; valid: .*'k'"):
        build_detector("knn", K=5)


# ---------------------------------------------------------------- ODIN


class LinearImages(nn.Module):
    """logits = A flatten(x): the ODIN gradient has a closed form."""

    def __init__(self, a: np.ndarray):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float32))

    def forward(self, x, return_features=False):
        return x.flatten(1) @ self.a.T


def test_odin_matches_its_closed_form_on_a_linear_model():
    rng = np.random.default_rng(0)
    c, h, w, n_cls, temperature, eps = 2, 2, 3, 4, 10.0, 0.05
    a = rng.normal(size=(n_cls, c * h * w))
    x = rng.integers(0, 256, size=(9, c, h, w), dtype=np.uint8)
    norm = {"mean": [0.5, 0.3], "std": [0.25, 0.5]}
    std = np.repeat(norm["std"], h * w)  # per input coordinate, channel-major
    xn = (x.reshape(9, -1) / 255.0 - np.repeat(norm["mean"], h * w)) / std
    p = np.exp(xn @ a.T / temperature)
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(n_cls)[p.argmax(1)]
    grad = (p - onehot) @ a / temperature  # d CE(f(x)/T, yhat) / d x_normalised
    perturbed = xn - eps * np.where(grad >= 0, 1.0, -1.0) / std  # eps / std_c: eps in pixel units
    expected = msp(perturbed @ a.T / temperature)
    model = LinearImages(a)
    got = odin_scores(model, x, RUNTIME, torch.device("cpu"), norm, temperature, eps)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    plain = odin_scores(model, x, RUNTIME, torch.device("cpu"), norm, temperature, 0.0)
    np.testing.assert_allclose(plain, msp(xn @ a.T / temperature), rtol=1e-5)  # eps = 0: MSP at T
    assert (got > plain).all()  # the step raises the softmax score (first order)
    assert model.a.grad is None  # only the input is differentiated


class LinearFeatures(nn.Module):
    """z = A flatten(x), logits = W z: Mahalanobis' input gradient has a closed form."""

    def __init__(self, a: np.ndarray, w: np.ndarray):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float32))
        self.fc = nn.Linear(a.shape[0], w.shape[0], bias=False)
        self.fc.weight.data = torch.tensor(w, dtype=torch.float32)

    def forward(self, x, return_features=False):
        z = x.flatten(1) @ self.a.T
        return (self.fc(z), z) if return_features else self.fc(z)


def test_mahalanobis_preprocessing_matches_lee_et_al_on_a_linear_model():
    """Lee et al. (2018), as their get_Mahalanobis_score: step against the sign of the gradient of the
    distance to the nearest class mean, eps / std_c per channel, then score the perturbed features."""
    rng = np.random.default_rng(2)
    c, h, w, d, eps = 2, 2, 2, 3, 0.01
    a = rng.normal(size=(d, c * h * w))
    norm = {"mean": [0.5, 0.4], "std": [0.25, 0.5]}
    std = np.repeat(norm["std"], h * w)
    x = rng.integers(0, 256, size=(7, c, h, w), dtype=np.uint8)
    xn = (x.reshape(7, -1) / 255.0 - np.repeat(norm["mean"], h * w)) / std
    det = Mahalanobis(epsilon=eps).fit(None, rng.normal(size=(40, d)), np.arange(40) % 2, np.zeros((2, d)), None)
    z = xn @ a.T
    nearest = np.stack([((z - mu) @ det.precision * (z - mu)).sum(1) for mu in det.means], 1).argmin(1)
    grad = 2 * ((z - det.means[nearest]) @ det.precision) @ a  # d/dx of the nearest distance
    perturbed = xn - eps * np.where(grad >= 0, 1.0, -1.0) / std
    expected = Mahalanobis().fit(None, rng.normal(size=(1, d)), np.zeros(1, int), np.zeros((1, d)), None)
    expected.means, expected.precision = det.means, det.precision
    model = LinearFeatures(a, np.zeros((2, d)))
    got = mahalanobis_scores(model, x, RUNTIME, torch.device("cpu"), norm, det)
    np.testing.assert_allclose(got, expected.score(None, perturbed @ a.T, None), rtol=1e-4)
    plain = det.score(None, z, None)
    assert (got > plain).all()  # the step moves each image towards its class mean
    zero = Mahalanobis(epsilon=0.0)
    zero.means, zero.precision = det.means, det.precision
    np.testing.assert_allclose(mahalanobis_scores(model, x, RUNTIME, torch.device("cpu"), norm, zero), plain,
                               rtol=1e-4)


def test_odin_detector_reads_the_cache_and_checks_its_settings():
    cache = {"id_test__odin": np.array([0.3, 0.4]), "odin_temperature": np.float64(1000.0),
             "odin_epsilon": np.float64(0.0014)}
    np.testing.assert_array_equal(ODIN().score_set(cache, "id_test"), [0.3, 0.4])
    with pytest.raises(ValueError, match=r"\(temperature, epsilon\)=\(1000.0, 0.0014\).*\(10.0, 0.0014\)"):
        ODIN(temperature=10.0).score_set(cache, "id_test")
    with pytest.raises(ValueError, match="'gaussian__odin'.*rerun the score stage"):
        ODIN().score_set(cache, "gaussian")
    with pytest.raises(ValueError, match="input gradients"):
        ODIN().score(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((2, 2)))


# ---------------------------------------------------------------- the cache and metrics


def test_fit_subset_is_class_balanced_seeded_and_sorted():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 10)
    idx = fit_subset(labels, 21)
    assert np.bincount(labels[idx]).tolist() == [7, 7, 7]
    assert (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(fit_subset(labels, 21), idx)
    assert not np.array_equal(fit_subset(labels, 21, seed=1), idx)
    assert np.bincount(labels[fit_subset(labels, 40)]).tolist() == [15, 15, 10]  # class 2 runs out
    np.testing.assert_array_equal(fit_subset(labels, None), np.arange(90))
    np.testing.assert_array_equal(fit_subset(labels, 500), np.arange(90))


def make_cache(with_train: bool = True, hard: bool = False) -> dict[str, np.ndarray]:
    """ID features along their class weight; OOD nearer the origin."""
    rng = np.random.default_rng(3)
    c, d = 3, 6
    w, b = rng.normal(size=(c, d)), rng.normal(size=c) * 0.1
    cache = {"fc_weight": w.astype(np.float32), "fc_bias": b.astype(np.float32)}

    def add(name, z, y):
        cache[f"{name}__features"] = z.astype(np.float32)
        cache[f"{name}__logits"] = (z @ w.T + b).astype(np.float32)
        cache[f"{name}__labels"] = y

    for name, n in [("id_test", 45)] + ([("id_train", 90)] if with_train else []):
        y = np.arange(n) % c
        add(name, 3.0 * w[y] + rng.normal(size=(n, d)), y)
    for name, scale in [("gaussian", 1.0), ("blobs", 2.0)] + ([("textures", 2.5)] if hard else []):
        add(name, scale * rng.normal(size=(40, d)), np.full(40, -1))
    return cache


def score_cfg(scores, maha_epsilon: float = 0.0) -> dict:
    """params' score section for ``scores``; Mahalanobis feature-only unless asked (these caches have no pass)."""
    cfg = copy.deepcopy(PARAMS["score"])
    cfg["scores"], cfg["main"] = list(scores), scores[0]
    cfg["options"]["knn"]["k"] = 5
    cfg["options"]["mahalanobis"]["epsilon"] = maha_epsilon
    return cfg


def test_id_train_is_never_an_ood_set():
    assert cache_sets(make_cache()) == ["blobs", "gaussian"]


def test_metrics_every_score_groups_and_old_caches():
    cache = make_cache(hard=True)
    cfg = score_cfg(["fs", "msp", *FITTED])
    result = metrics_from_cache(cache, cfg, {"mean": ["blobs", "gaussian"], "hard_mean": ["textures"]})
    for name in cfg["scores"]:
        rows = result["scores"][name]
        assert set(rows) == {"blobs", "gaussian", "textures", "mean", "hard_mean"}
        for k in rows["mean"]:
            assert rows["mean"][k] == pytest.approx((rows["blobs"][k] + rows["gaussian"][k]) / 2, abs=1e-3)
            assert rows["hard_mean"][k] == pytest.approx(rows["textures"][k], abs=1e-3)
    assert result["scores"]["mahalanobis"]["mean"]["auroc"] > 90  # a clean toy case separates
    default = metrics_from_cache(cache, cfg)
    assert set(default["scores"]["knn"]) == {"blobs", "gaussian", "textures", "mean"}
    with pytest.raises(ValueError, match=r"'hard_mean' names \['svhn'\]"):
        metrics_from_cache(cache, cfg, {"mean": ["gaussian"], "hard_mean": ["svhn"]})
    old = make_cache(with_train=False)
    assert set(metrics_from_cache(old, score_cfg(["fs", "msp"]))["scores"]) == {"fs", "msp"}
    with pytest.raises(ValueError, match=r"score 'knn' is fitted .* lacks \['id_train__logits'"):
        metrics_from_cache(old, score_cfg(["msp", "knn"]))


def test_fit_passes_the_id_train_size_so_knn_scales_k():
    cache = make_cache()
    assert fitted_detector("knn", score_cfg(["knn"]), cache).k_used == 5  # no size recorded: the bank is all
    cache["id_train_size"] = np.int64(900)  # the 90 cached images are a tenth of the set
    cfg = score_cfg(["knn"])
    cfg["options"]["knn"]["k"] = 50
    assert fitted_detector("knn", cfg, cache).k_used == 5


def test_mahalanobis_preprocessing_reads_its_pass_from_the_cache():
    cache = make_cache()
    det = fitted_detector("mahalanobis", score_cfg(["mahalanobis"], maha_epsilon=0.01), cache)
    with pytest.raises(ValueError, match="'id_test__mahalanobis'.*rerun the score stage"):
        det.score_set(cache, "id_test")
    cache.update(id_test__mahalanobis=np.array([-1.0, -2.0]), mahalanobis_epsilon=np.float64(0.02))
    with pytest.raises(ValueError, match=r"used \(epsilon\)=\(0.02,\).*asks for \(0.01,\)"):
        det.score_set(cache, "id_test")
    cache["mahalanobis_epsilon"] = np.float64(0.01)
    np.testing.assert_array_equal(det.score_set(cache, "id_test"), [-1.0, -2.0])
    plain = fitted_detector("mahalanobis", score_cfg(["mahalanobis"]), cache)  # epsilon 0: from features
    assert len(plain.score_set(cache, "id_test")) == 45
    with pytest.raises(ValueError, match="epsilon=2 must lie in"):
        Mahalanobis(epsilon=2)


def test_score_cache_fits_on_id_train_only():
    cache = make_cache()
    det = fitted_detector("mahalanobis", score_cfg(["mahalanobis"]), cache)
    labels = cache["id_train__labels"]
    expected = np.stack([cache["id_train__features"][labels == c].astype(np.float64).mean(0) for c in range(3)])
    np.testing.assert_allclose(det.means, expected, rtol=1e-12)
    scores = score_cache(cache, score_cfg(["knn"]))["knn"]
    assert set(scores) == {"id_test", "blobs", "gaussian"}


def test_metric_groups_from_the_manifest():
    assert metric_groups({"ood_sets": ["a", "b"]}, []) == {"mean": ["a", "b"]}
    assert metric_groups({"ood_sets": ["a"], "hard_ood_sets": []}, []) == {"mean": ["a"]}
    assert metric_groups({"ood_sets": ["a"], "hard_ood_sets": ["h"]}, []) == {"mean": ["a"], "hard_mean": ["h"]}
    # the synthetic sanity sets keep their own rows but stay out of the headline mean
    assert metric_groups({"ood_sets": ["a", "gaussian", "b"]}, ["gaussian", "blobs"]) == {"mean": ["a", "b"]}


@pytest.mark.parametrize("changes, fragment", [
    ({"scores": ["fs", "msp", "odin", "knn"]}, None),  # fs and msp: the scores score.pairing names
    ({"fit_samples": None}, None),
    ({"main": "vim", "scores": ["vim", "fs", "msp"]}, None),
    ({"scores": ["fs", "odin"]}, "score.pairing pairs method"),  # a paired score left out is named
    ({"options.knn.metric": "cosine"}, "'metric' was unexpected"),
    ({"options.lof": {}}, "'lof' was unexpected"),
    ({"options.react.percentile": 0}, "score.options.react.percentile"),
    ({"options.vim.dim": 0}, "score.options.vim.dim"),
    ({"fit_samples": 0}, "score.fit_samples"),
    ({"options.odin": None}, "score.options.odin"),
    ({"scores": ["fs", "knnn"]}, "'knnn' is not one of"),
])
def test_schema_score_options(changes, fragment):
    params = copy.deepcopy(PARAMS)
    for dotted, value in changes.items():
        node = params["score"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    if fragment is None:
        validate_params(params)
    else:
        with pytest.raises(ParamsError, match=fragment):
            validate_params(params)


# ---------------------------------------------------------------- the score stage end to end


def test_score_stage_writes_id_train_odin_and_hard_mean(tmp_path, monkeypatch):
    """digits data, an untrained small CNN, every score (ODIN included); one OOD set made 'hard'."""
    from fsood import contract
    from fsood.datasets import materialize
    from fsood.io import load_npz, save_npz, save_state_dict
    from fsood.models import build_model
    from fsood.stages import score

    monkeypatch.chdir(tmp_path)
    params = copy.deepcopy(PARAMS)
    bench = params["benchmarks"]["digits"]
    bench["data"].update(n_outliers=16, n_ood=40, ood_sets=["gaussian", "blobs", "digits_5_9"])
    params["score"].update(scores=sorted(DETECTORS), main="fs", fit_samples=100, synthetic_sets=[])  # all in the mean
    params["score"]["options"]["knn"]["k"] = 10
    folder = str(contract.out("data", "data", benchmark="digits"))
    materialize("digits", bench["data"], folder)
    manifest_path = tmp_path / folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(ood_sets=["gaussian", "blobs"], hard_ood_sets=["digits_5_9"])
    manifest_path.write_text(json.dumps(manifest))
    torch.manual_seed(0)
    model = build_model(bench["model"], 1, len(bench["data"]["id_classes"]))
    cell = contract.outs("finetune", benchmark="digits", pretrain_seed=0, method="oe", seed=0)
    pre = contract.outs("pretrain", benchmark="digits", pretrain_seed=0)
    for files in (cell, pre):  # the score stage's provenance hashes the pretrained and the scored model
        save_state_dict(files["model"], model.state_dict())
        files["history"].write_text("epoch\n0\n")
    basis = contract.out("subspace", "basis", benchmark="digits", pretrain_seed=0)  # and the fine-tuning's inputs
    save_npz(basis, {"weight": model.fc.weight.detach().numpy()})

    energies = contract.out("subspace", "energies", benchmark="digits", pretrain_seed=0)
    energies.write_text("{}")
    score.run(params, "digits", 0, "oe", 0)
    out = contract.outs("score", benchmark="digits", pretrain_seed=0, method="oe", seed=0)
    cache = load_npz(out["cache"])
    metrics = json.loads(out["metrics"].read_text())
    labels = cache["id_train__labels"]
    assert len(labels) == 100 and np.bincount(labels).max() - np.bincount(labels).min() <= 1
    for name in ("id_test", "gaussian", "blobs", "digits_5_9"):
        assert cache[f"{name}__odin"].shape == cache[f"{name}__labels"].shape
        assert ((cache[f"{name}__odin"] > 0) & (cache[f"{name}__odin"] <= 1)).all()
    assert "id_train__odin" not in cache and "id_train__mahalanobis" not in cache
    assert cache["id_train_size"].item() > 100  # the whole ID-train set; 100 of it were kept
    assert cache["mahalanobis_epsilon"].item() == PARAMS["score"]["options"]["mahalanobis"]["epsilon"] == 0.01
    for name in ("id_test", "gaussian", "blobs", "digits_5_9"):  # the pre-processing pass of every set
        assert cache[f"{name}__mahalanobis"].shape == cache[f"{name}__labels"].shape
    for name in DETECTORS:
        rows = metrics["scores"][name]
        assert set(rows) == {"gaussian", "blobs", "digits_5_9", "mean", "hard_mean"}, name
        main_sets = (rows["gaussian"]["auroc"] + rows["blobs"]["auroc"]) / 2
        assert rows["mean"]["auroc"] == pytest.approx(main_sets, abs=1e-3)
        assert rows["hard_mean"]["auroc"] == pytest.approx(rows["digits_5_9"]["auroc"], abs=1e-3)


# ---------------------------------------------------------------- pytorch-ood cross-checks


class Tiny(nn.Module):
    """A tiny image classifier whose features and logits are easy to reach: conv, tanh, mean, linear."""

    def __init__(self, in_ch=3, feat=8, n_cls=4):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, feat, 3, padding=1)
        self.fc = nn.Linear(feat, n_cls)

    def features(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3)) * 3.0

    def forward(self, x, return_features=False):
        z = self.features(x)
        return (self.fc(z), z) if return_features else self.fc(z)


@pytest.fixture(scope="module")
def tiny():
    """The model, ID-train and test features / logits / labels, and the arrays fsood sees."""
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        x_train, x_test = torch.randn(200, 3, 6, 6), torch.randn(50, 3, 6, 6) * 1.5
        z_train, z_test = model.features(x_train), model.features(x_test)
        l_train, l_test = model.fc(z_train), model.fc(z_test)
    y_train = torch.arange(200) % 4  # labels only matter to Mahalanobis' class means
    np_ = lambda t: t.detach().double().numpy()  # noqa: E731
    return {"model": model, "z_train": z_train, "z_test": z_test, "y_train": y_train, "l_test": l_test,
            "fs_fit": (np_(l_train), np_(z_train), y_train.numpy(), np_(model.fc.weight), np_(model.fc.bias)),
            "fs_test": (np_(l_test), np_(z_test), np_(model.fc.weight))}


def test_pytorch_ood_knn(tiny):
    pood = pytest.importorskip("pytorch_ood.detector")
    ref = pood.KNN(None, k=5).fit_features(tiny["z_train"], tiny["y_train"]).predict_features(tiny["z_test"])
    ours = KNN(k=5).fit(*tiny["fs_fit"]).score(*tiny["fs_test"])
    np.testing.assert_allclose(ours, -ref.numpy(), rtol=1e-5)


def test_pytorch_ood_mahalanobis_up_to_its_scale(tiny):
    """pytorch-ood inverts the *sum* of outer products (not divided by N) and halves the distance:
    its outlier score is min_c d_c / (2 N) (plus a 1e-6 ridge), so ours = -2 N * its score."""
    pood = pytest.importorskip("pytorch_ood.detector")
    ref = pood.Mahalanobis(None).fit_features(tiny["z_train"], tiny["y_train"]).predict_features(tiny["z_test"])
    ours = Mahalanobis().fit(*tiny["fs_fit"]).score(*tiny["fs_test"])
    np.testing.assert_allclose(ours, -2 * len(tiny["z_train"]) * ref.double().numpy(), rtol=2e-3)


def test_pytorch_ood_vim(tiny):
    pood = pytest.importorskip("pytorch_ood.detector")
    fc = tiny["model"].fc
    ref = pood.ViM(None, d=4, w=fc.weight, b=fc.bias).fit_features(tiny["z_train"], tiny["y_train"])
    ours = ViM(dim=4).fit(*tiny["fs_fit"])
    assert ours.alpha == pytest.approx(ref.alpha, rel=1e-4)
    np.testing.assert_allclose(ours.score(*tiny["fs_test"]), -ref.predict_features(tiny["z_test"]).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_pytorch_ood_react(tiny):
    pood = pytest.importorskip("pytorch_ood.detector")
    ref = pood.ReAct(backbone=None, head=tiny["model"].fc, percentile=0.9)
    ref.fit_feature_maps(tiny["z_train"], tiny["y_train"])
    ours = ReAct(percentile=90).fit(*tiny["fs_fit"])
    assert ours.threshold == pytest.approx(ref.threshold, rel=1e-6)
    np.testing.assert_allclose(ours.score(*tiny["fs_test"]), -ref.predict_feature_maps(tiny["z_test"]).numpy(),
                               rtol=1e-5)


def test_pytorch_ood_nci(tiny):
    pood = pytest.importorskip("pytorch_ood.detector")
    ref = pood.NCI(None, tiny["model"].fc, alpha=0.1).fit_features(tiny["z_train"])
    ours = NCI(alpha=0.1).fit(*tiny["fs_fit"])
    np.testing.assert_allclose(ours.score(*tiny["fs_test"]), -ref.predict_features(tiny["z_test"]).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_pytorch_ood_odin(tiny):
    """Same step: pytorch-ood takes sign(grad) where fsood takes ge(grad, 0) * 2 - 1 (the authors'),
    which differ only where a gradient is exactly 0 (none here: tanh features)."""
    pood = pytest.importorskip("pytorch_ood.detector")
    norm = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    x = np.random.default_rng(0).integers(0, 256, size=(12, 3, 6, 6), dtype=np.uint8)
    xn = (torch.from_numpy(x).float() / 255 - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        norm["std"]).view(1, 3, 1, 1)
    model = tiny["model"]
    ref = pood.ODIN(model, eps=0.002, temperature=100.0, norm_std=norm["std"]).predict(xn)
    ours = odin_scores(model, x, RUNTIME, torch.device("cpu"), norm, 100.0, 0.002)
    np.testing.assert_allclose(ours, -ref.detach().numpy(), rtol=1e-5)

"""fsood.metrics against scikit-learn and a literal copy of Hendrycks' fpr_and_fdr_at_recall."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from fsood import metrics as M
from fsood.metrics import auroc, average_precision, describe_convention, fpr_at_tpr, ood_metrics


# --------------------------------------------------------------------------- references

def _stable_cumsum(arr, rtol=1e-05, atol=1e-08):
    out = np.cumsum(arr, dtype=np.float64)
    expected = np.sum(arr, dtype=np.float64)
    if not np.allclose(out[-1], expected, rtol=rtol, atol=atol):
        raise RuntimeError("cumsum was found to be unstable")
    return out


def hendrycks_fpr_and_fdr_at_recall(y_true, y_score, recall_level=0.95, pos_label=1.0):
    """Literal re-implementation of fpr_and_fdr_at_recall from Hendrycks' OE code
    (utils/display_results.py), returning the FPR only."""
    y_true = y_true == pos_label
    # sort scores and corresponding truth values
    desc_score_indices = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[desc_score_indices]
    y_true = y_true[desc_score_indices]
    # y_score typically has many tied values. Here we extract
    # the indices associated with the distinct values.
    distinct_value_indices = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct_value_indices, y_true.size - 1]
    # accumulate the true positives with decreasing threshold
    tps = _stable_cumsum(y_true)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    thresholds = y_score[threshold_idxs]
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps, tps, thresholds = np.r_[recall[sl], 1], np.r_[fps[sl], 0], np.r_[tps[sl], 0], thresholds[sl]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / (np.sum(np.logical_not(y_true)))


def hendrycks_fpr(id_scores, ood_scores, recall_level=0.95):
    # get_measures(_pos=id, _neg=ood): ID labelled 1, higher = more ID
    pos = np.asarray(id_scores, dtype=np.float64)
    neg = np.asarray(ood_scores, dtype=np.float64)
    examples = np.r_[pos, neg]
    labels = np.zeros(len(examples), dtype=np.int32)
    labels[: len(pos)] += 1
    return hendrycks_fpr_and_fdr_at_recall(labels, examples, recall_level)


def sklearn_ood_positive_fpr(id_scores, ood_scores, tpr=0.95):
    y_ood = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    s = -np.r_[id_scores, ood_scores]  # higher = more OOD
    fpr, tpr_curve, _ = roc_curve(y_ood, s, drop_intermediate=False)
    return fpr[np.argmax(tpr_curve >= tpr)]


def _random_cases(seed, n_cases, ties):
    rng = np.random.default_rng(seed)
    for _ in range(n_cases):
        n_id = int(rng.integers(1, 60))
        n_ood = int(rng.integers(1, 60))
        if ties:
            hi = int(rng.integers(1, 8))
            id_s = rng.integers(0, hi + 1, n_id).astype(float) + rng.integers(0, 3)
            ood_s = rng.integers(0, hi + 1, n_ood).astype(float)
        else:
            shift = rng.uniform(-1, 3)
            id_s = rng.normal(shift, 1.0, n_id)
            ood_s = rng.normal(0.0, 1.0, n_ood)
        yield id_s, ood_s


def _labels(id_s, ood_s):
    return np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], np.r_[id_s, ood_s]


# --------------------------------------------------------------------------- vs scikit-learn

@pytest.mark.parametrize("ties", [True, False])
def test_auroc_matches_sklearn(ties):
    for id_s, ood_s in _random_cases(1 + ties, 120, ties):
        y, s = _labels(id_s, ood_s)
        assert auroc(id_s, ood_s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [True, False])
def test_average_precision_matches_sklearn(ties):
    for id_s, ood_s in _random_cases(10 + ties, 100, ties):
        y, s = _labels(id_s, ood_s)
        assert average_precision(id_s, ood_s, "id") == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert average_precision(id_s, ood_s, "ood") == pytest.approx(
            average_precision_score(1 - y, -s), abs=1e-12
        )


# The two tests below share their shape on purpose: each convention checked against its own reference
# (sklearn's ROC curve for OOD-positive, the Hendrycks et al. code for ID-positive), on other cases.
@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.5])
def test_fpr_ood_positive_matches_sklearn_roc_curve(ties, tpr):
    for id_s, ood_s in _random_cases(20 + ties, 150, ties):
        got = fpr_at_tpr(id_s, ood_s, tpr=tpr, convention="ood_positive")
        assert got == pytest.approx(sklearn_ood_positive_fpr(id_s, ood_s, tpr), abs=1e-12)


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.8])
def test_fpr_id_positive_matches_hendrycks(ties, tpr):
    for id_s, ood_s in _random_cases(30 + ties, 300, ties):
        got = fpr_at_tpr(id_s, ood_s, tpr=tpr, convention="id_positive")
        assert got == pytest.approx(hendrycks_fpr(id_s, ood_s, tpr), abs=1e-12)


def test_default_convention_is_id_positive():
    for id_s, ood_s in _random_cases(99, 50, True):
        assert fpr_at_tpr(id_s, ood_s) == pytest.approx(hendrycks_fpr(id_s, ood_s), abs=1e-12)


def test_ood_metrics_dict():
    rng = np.random.default_rng(7)
    id_s = rng.integers(0, 5, 40).astype(float) + 1
    ood_s = rng.integers(0, 5, 30).astype(float)
    y, s = _labels(id_s, ood_s)
    m = ood_metrics(id_s, ood_s, convention="ood_positive")
    assert set(m) == {"fpr95", "auroc", "aupr_in", "aupr_out"}
    assert m["fpr95"] == pytest.approx(sklearn_ood_positive_fpr(id_s, ood_s), abs=1e-12)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    m2 = ood_metrics(id_s, ood_s)
    assert m2["fpr95"] == pytest.approx(hendrycks_fpr(id_s, ood_s), abs=1e-12)


# --------------------------------------------------------------------------- hand-checked cases

def test_conventions_differ_small_case():
    # ID = (2, 10), OOD = (1, 3, 5), higher = more ID.
    # id_positive: ID recall levels are 1/2 and 1; 1 is closest to 0.95 -> threshold at 2,
    #   OOD accepted (score >= 2) = {3, 5} -> FPR = 2/3.
    # ood_positive: 95 % of 3 OOD needs all 3 -> threshold score <= 5,
    #   ID rejected (score <= 5) = {2} -> FPR = 1/2.
    id_s, ood_s = [2.0, 10.0], [1.0, 3.0, 5.0]
    assert fpr_at_tpr(id_s, ood_s, convention="id_positive") == pytest.approx(2 / 3)
    assert fpr_at_tpr(id_s, ood_s, convention="ood_positive") == pytest.approx(1 / 2)


def test_conventions_differ_closest_recall_below_target():
    # ID = 1..12, OOD = (0.5, 1.5, 2.5).
    # id_positive (descending): ... 3(I) 2.5(O) 2(I) 1.5(O) 1(I) 0.5(O)
    #   recall 10/12 at thresholds 3, 2.5; 11/12 at thresholds 2 (fps 1) and 1.5 (fps 2);
    #   12/12 at threshold 1 (fps 2). |11/12 - .95| = .033 < |1 - .95| = .05, so recall 11/12
    #   wins; Hendrycks scans the reversed arrays, so among the two thresholds with recall
    #   11/12 the lower one (1.5, fps 2) is picked -> FPR = 2/3.
    # ood_positive: catching all 3 OOD needs threshold "score <= 2.5"; ID rejected
    #   = {1, 2} -> FPR = 2/12 = 1/6.
    id_s = np.arange(1, 13, dtype=float)
    ood_s = [0.5, 1.5, 2.5]
    assert fpr_at_tpr(id_s, ood_s, convention="id_positive") == pytest.approx(2 / 3)
    assert fpr_at_tpr(id_s, ood_s, convention="ood_positive") == pytest.approx(1 / 6)
    assert hendrycks_fpr(id_s, ood_s) == pytest.approx(2 / 3)


def test_hand_auroc_and_ap_with_ties():
    # ID = (1, 2), OOD = (1, 0). Pairs (id > ood): 1>0 yes, 1=1 half, 2>1, 2>0 -> 3.5/4
    assert auroc([1.0, 2.0], [1.0, 0.0]) == pytest.approx(0.875)
    # AP (ID positive): thresholds 2 -> P=1, R=.5 ; 1 -> P=2/3, R=1 ; AP = .5*1 + .5*2/3
    assert average_precision([1.0, 2.0], [1.0, 0.0], "id") == pytest.approx(0.5 + 1 / 3)


def test_perfect_separation():
    id_s, ood_s = [5.0, 6.0, 7.0, 9.0], [1.0, 2.0, 4.9]
    assert auroc(id_s, ood_s) == 1.0
    assert fpr_at_tpr(id_s, ood_s, convention="id_positive") == 0.0
    assert fpr_at_tpr(id_s, ood_s, convention="ood_positive") == 0.0
    assert average_precision(id_s, ood_s, "id") == 1.0
    assert average_precision(id_s, ood_s, "ood") == 1.0


def test_reversed_separation():
    id_s, ood_s = [1.0, 2.0], [5.0, 6.0, 7.0]
    assert auroc(id_s, ood_s) == 0.0
    assert fpr_at_tpr(id_s, ood_s, convention="id_positive") == 1.0
    assert fpr_at_tpr(id_s, ood_s, convention="ood_positive") == 1.0


def test_all_tied_scores():
    # one threshold only: everything accepted -> FPR 1 in both conventions, AUROC .5
    assert auroc([3.0, 3.0], [3.0]) == pytest.approx(0.5)
    assert fpr_at_tpr([3.0, 3.0], [3.0, 3.0], convention="id_positive") == 1.0
    assert fpr_at_tpr([3.0, 3.0], [3.0, 3.0], convention="ood_positive") == 1.0


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["id", "ood"])
def test_nonfinite_scores_raise(bad, where):
    id_s, ood_s = [1.0, 2.0, 3.0], [0.0, 1.5]
    if where == "id":
        id_s = [1.0, bad, 3.0]
    else:
        ood_s = [bad, 1.5]
    with pytest.raises(ValueError):
        auroc(id_s, ood_s)
    with pytest.raises(ValueError):
        average_precision(id_s, ood_s, "ood")
    for conv in ("id_positive", "ood_positive"):
        with pytest.raises(ValueError):
            fpr_at_tpr(id_s, ood_s, convention=conv)


@pytest.mark.parametrize("id_s,ood_s", [([], [1.0, 2.0]), ([1.0], []), ([], [])])
def test_empty_inputs_raise(id_s, ood_s):
    with pytest.raises(ValueError):
        auroc(id_s, ood_s)
    with pytest.raises(ValueError):
        average_precision(id_s, ood_s)
    for conv in ("id_positive", "ood_positive"):
        with pytest.raises(ValueError):
            fpr_at_tpr(id_s, ood_s, convention=conv)


def test_unknown_convention_raises():
    with pytest.raises(ValueError, match="id_positive"):
        fpr_at_tpr([1.0, 2.0], [0.0], convention="openood")
    with pytest.raises(ValueError):
        ood_metrics([1.0, 2.0], [0.0], convention="OOD_POSITIVE")
    with pytest.raises(ValueError):
        describe_convention("foo")


def test_describe_convention():
    assert describe_convention("id_positive")["positive"] == "id"
    assert describe_convention("ood_positive")["positive"] == "ood"


def test_roc_points_thin_the_curve_and_keep_its_meaning():
    rng = np.random.default_rng(3)
    id_s, ood_s = rng.normal(1.0, 1.0, 3000), rng.normal(0.0, 1.0, 2000)
    pts = M.roc_points(id_s, ood_s, max_points=150)
    assert len(pts["fpr"]) == 150 and (pts["fpr"][0], pts["tpr"][0]) == (0.0, 0.0)
    assert (pts["fpr"][-1], pts["tpr"][-1]) == (1.0, 1.0)
    assert (np.diff(pts["fpr"]) >= 0).all() and (np.diff(pts["tpr"]) >= 0).all() and (np.diff(pts["threshold"]) < 0).all()
    for i in (0, 40, 149):  # each point is the rate of scores >= its threshold
        assert (id_s >= pts["threshold"][i]).mean() == pytest.approx(pts["tpr"][i])
        assert (ood_s >= pts["threshold"][i]).mean() == pytest.approx(pts["fpr"][i])
    assert np.trapezoid(pts["tpr"], pts["fpr"]) == pytest.approx(M.auroc(id_s, ood_s), abs=2e-3)
    small = M.roc_points([3.0, 2.0], [1.0], max_points=150)  # fewer distinct scores than points: all kept
    assert small["tpr"].tolist() == [0.0, 0.5, 1.0, 1.0] and small["fpr"].tolist() == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="max_points"):
        M.roc_points(id_s, ood_s, max_points=1)

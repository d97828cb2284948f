"""Unit tests for fsood.detectors.basic against hand-computed values."""
import math

import numpy as np
import pytest

from fsood.detectors import (
    DETECTORS,
    AbsCosine,
    Energy,
    FeatureSeparation,
    MaxLogit,
    MSP,
    abs_cosine_sum,
    build_detector,
    energy,
    feature_separation_score,
    max_logit,
    msp,
)

R2 = 1.0 / math.sqrt(2.0)

# logits, C = 3:
#   row 0: (0, ln 3, ln 4)  -> softmax (1/8, 3/8, 4/8); msp 0.5 ; lse ln 8 ; max ln 4
#   row 1: (2, 2, 2)        -> msp 1/3 ; lse 2 + ln 3 ; max 2
#   row 2: (-1, 5, -1)      -> msp e^5/(e^5 + 2e^-1)
LOGITS = np.array([[0.0, math.log(3), math.log(4)], [2.0, 2.0, 2.0], [-1.0, 5.0, -1.0]])
MSP_EXP = np.array([0.5, 1 / 3, math.exp(5) / (math.exp(5) + 2 * math.exp(-1))])
ENERGY_EXP = np.array([math.log(8), 2 + math.log(3), math.log(math.exp(5) + 2 * math.exp(-1))])
MAXLOGIT_EXP = np.array([math.log(4), 2.0, 5.0])

# features (2-D) and W (3 x 2):
#   w1 = (1, 1), w2 = (2, -2), w3 = (-4, 0)
#   z0 = (3, 0): |cos| = (1/sqrt2, 1/sqrt2, 1)  -> sum 1 + sqrt2
#   z1 = (0, .5): |cos| = (1/sqrt2, 1/sqrt2, 0) -> sum sqrt2
#   z2 = (1, 1):  |cos| = (1, 0, 1/sqrt2)       -> sum 1 + 1/sqrt2
FEATS = np.array([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
W = np.array([[1.0, 1.0], [2.0, -2.0], [-4.0, 0.0]])
ABSCOS_SUM = np.array([1 + math.sqrt(2), math.sqrt(2), 1 + R2])


def test_msp_hand():
    np.testing.assert_allclose(msp(LOGITS), MSP_EXP, rtol=1e-12)


def test_msp_float32_input():
    np.testing.assert_allclose(msp(LOGITS.astype(np.float32)), MSP_EXP, rtol=1e-6)


def test_energy_hand():
    np.testing.assert_allclose(energy(LOGITS), ENERGY_EXP, rtol=1e-12)


def test_energy_temperature_hand():
    # T = 2, row (0, ln 3): 2 * ln(1 + sqrt3)
    got = energy(np.array([[0.0, math.log(3)]]), temperature=2.0)
    assert got[0] == pytest.approx(2 * math.log(1 + math.sqrt(3)), rel=1e-12)


def test_energy_large_logits_stable():
    got = energy(np.array([[1000.0, 1000.0]]))
    assert got[0] == pytest.approx(1000 + math.log(2), rel=1e-12)


def test_max_logit_hand():
    np.testing.assert_allclose(max_logit(LOGITS), MAXLOGIT_EXP, rtol=1e-12)


def test_abs_cosine_sum_and_mean_hand():
    np.testing.assert_allclose(abs_cosine_sum(FEATS, W), ABSCOS_SUM, rtol=1e-12)
    np.testing.assert_allclose(abs_cosine_sum(FEATS, W, mean_over_classes=True), ABSCOS_SUM / 3, rtol=1e-12)


def test_feature_separation_score_hand():
    np.testing.assert_allclose(feature_separation_score(LOGITS, FEATS, W), MSP_EXP + ABSCOS_SUM, rtol=1e-12)
    np.testing.assert_allclose(
        feature_separation_score(LOGITS, FEATS, W, mean_over_classes=True), MSP_EXP + ABSCOS_SUM / 3, rtol=1e-12
    )


def test_detectors_match_functions():
    cases = {
        "msp": MSP_EXP,
        "energy": ENERGY_EXP,
        "maxlogit": MAXLOGIT_EXP,
        "abs_cos": ABSCOS_SUM,
        "fs": MSP_EXP + ABSCOS_SUM,
    }
    assert set(cases) <= set(DETECTORS)  # the post-hoc ones are tested in test_posthoc.py
    for name, expected in cases.items():
        assert not DETECTORS[name].needs_fit, name
        det = build_detector(name)
        np.testing.assert_allclose(det.score(LOGITS, FEATS, W), expected, rtol=1e-12, err_msg=name)


def test_detector_classes_and_options():
    assert isinstance(build_detector("msp"), MSP)
    assert isinstance(build_detector("maxlogit"), MaxLogit)
    e = build_detector("energy", temperature=2.0)
    assert isinstance(e, Energy) and e.temperature == 2.0
    np.testing.assert_allclose(e.score(LOGITS, FEATS, W), 2 * np.log(np.exp(LOGITS / 2).sum(1)), rtol=1e-12)
    a = build_detector("abs_cos", mean_over_classes=True)
    assert isinstance(a, AbsCosine)
    np.testing.assert_allclose(a.score(LOGITS, FEATS, W), ABSCOS_SUM / 3, rtol=1e-12)
    f = build_detector("fs", mean_over_classes=True)
    assert isinstance(f, FeatureSeparation)
    np.testing.assert_allclose(f.score(LOGITS, FEATS, W), MSP_EXP + ABSCOS_SUM / 3, rtol=1e-12)


def test_unknown_score_raises_keyerror_naming_valid():
    with pytest.raises(KeyError) as exc:
        build_detector("odinn")
    msg = str(exc.value)
    assert "odinn" in msg
    for name in ("msp", "energy", "maxlogit", "abs_cos", "fs", "odin", "knn", "vim"):
        assert name in msg


def test_higher_means_more_id_in_span():
    # W spans (e1, e2) in R^4; a feature inside the span reaches it, an orthogonal one does not
    w = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    inside = np.array([[2.0, 1.0, 0.0, 0.0]])
    ortho = np.array([[0.0, 0.0, 3.0, -1.0]])
    s_in = abs_cosine_sum(inside, w)[0]
    s_out = abs_cosine_sum(ortho, w)[0]
    assert s_out == pytest.approx(0.0, abs=1e-12)
    assert s_in > s_out
    # hand: z=(2,1)/sqrt5: |cos| = 2/sqrt5, 1/sqrt5, 1/sqrt10
    assert s_in == pytest.approx(3 / math.sqrt(5) + 1 / math.sqrt(10), rel=1e-12)
    # same logits -> fs ranks the in-span feature higher too
    logits = np.array([[1.0, 0.0, 0.0]])
    assert feature_separation_score(logits, inside, w)[0] > feature_separation_score(logits, ortho, w)[0]


def test_msp_higher_for_confident_logits():
    s = msp(np.array([[10.0, 0.0, 0.0], [0.1, 0.0, 0.0]]))
    assert s[0] > s[1]

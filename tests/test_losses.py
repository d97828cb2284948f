"""Unit tests for fsood.losses against hand computations."""
import math

import pytest
import torch

from fsood.losses import (
    FeatureSeparationLoss,
    clustering_loss,
    cosine_to_classes,
    energy_oe_loss,
    oe_loss,
    separation_loss,
)

R2 = 1.0 / math.sqrt(2.0)

# Hand-made example: 2-D features, C = 3 weight rows.
#   z1 = (3, 0)  -> direction (1, 0);  z2 = (0, 0.5) -> direction (0, 1)
#   w1 = (1, 1), w2 = (2, -2), w3 = (-4, 0)
# cos(z1, .) = ( 1/sqrt2,  1/sqrt2, -1)
# cos(z2, .) = ( 1/sqrt2, -1/sqrt2,  0)
Z = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
W = torch.tensor([[1.0, 1.0], [2.0, -2.0], [-4.0, 0.0]], dtype=torch.float64)
COS = torch.tensor([[R2, R2, -1.0], [R2, -R2, 0.0]], dtype=torch.float64)


def test_cosine_to_classes_hand_values():
    got = cosine_to_classes(Z, W)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, COS, atol=1e-12, rtol=0)


def test_cosine_single_pair():
    got = cosine_to_classes(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    assert got.item() == pytest.approx(R2, abs=1e-7)


def test_clustering_loss_hand_values():
    # labels (0, 0): -(1/sqrt2 + 1/sqrt2)/2 = -1/sqrt2
    assert clustering_loss(Z, torch.tensor([0, 0]), W).item() == pytest.approx(-R2, abs=1e-12)
    # labels (2, 1): -(-1 + -1/sqrt2)/2 = (1 + 1/sqrt2)/2
    assert clustering_loss(Z, torch.tensor([2, 1]), W).item() == pytest.approx((1 + R2) / 2, abs=1e-12)
    # labels (0, 1): -(1/sqrt2 - 1/sqrt2)/2 = 0
    assert clustering_loss(Z, torch.tensor([0, 1]), W).item() == pytest.approx(0.0, abs=1e-12)


def test_separation_loss_sum_vs_mean_hand_values():
    # per-sample sum |cos|: z1 -> 2/sqrt2 + 1 = 1 + sqrt2 ; z2 -> 2/sqrt2 + 0 = sqrt2
    expected_sum = ((1 + math.sqrt(2)) + math.sqrt(2)) / 2
    got_sum = separation_loss(Z, W, mean_over_classes=False).item()
    got_mean = separation_loss(Z, W, mean_over_classes=True).item()
    assert got_sum == pytest.approx(expected_sum, abs=1e-12)
    assert got_mean == pytest.approx(expected_sum / 3, abs=1e-12)
    # default is the authors' CIFAR code: plain sum
    assert separation_loss(Z, W).item() == pytest.approx(expected_sum, abs=1e-12)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_separation_sum_is_C_times_mean(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    z = torch.randn(11, 5, generator=g, dtype=torch.float64)
    w = torch.randn(num_classes, 5, generator=g, dtype=torch.float64)
    s = separation_loss(z, w, mean_over_classes=False)
    m = separation_loss(z, w, mean_over_classes=True)
    torch.testing.assert_close(s, num_classes * m, atol=1e-12, rtol=1e-12)


def test_orthogonal_outlier_has_zero_separation_loss():
    # outlier feature orthogonal to span(W) -> all cosines 0
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    z = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, -1.0]])
    assert separation_loss(z, w).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("fn", ["clu", "sep"])
def test_detach_weight_controls_weight_gradient(fn):
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w0 = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def run(detach):
        z = z0.clone().requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        if fn == "clu":
            loss = clustering_loss(z, torch.tensor([0, 2, 1, 1]), w, detach_weight=detach)
        else:
            loss = separation_loss(z, w, detach_weight=detach)
        loss.backward()
        return z, w

    z, w = run(True)
    assert w.grad is None
    assert z.grad is not None and z.grad.abs().sum() > 0

    z, w = run(False)
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_cosine_to_classes_detach_flag():
    w = W.clone().requires_grad_(True)
    assert not cosine_to_classes(Z, w, detach_weight=True).requires_grad
    assert cosine_to_classes(Z, w, detach_weight=False).requires_grad


def _loop_cos(zb, w):
    out = []
    for wi in w:
        out.append(float(torch.dot(zb, wi)) / (math.sqrt(float(torch.dot(zb, zb))) * math.sqrt(float(torch.dot(wi, wi)))))
    return out


def test_losses_vectorised_match_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    B, d, C = 17, 8, 5
    z = torch.randn(B, d, generator=g, dtype=torch.float64)
    w = torch.randn(C, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)

    clu, sep_sum, sep_mean = 0.0, 0.0, 0.0
    for b in range(B):
        cos = _loop_cos(z[b], w)
        clu += -cos[int(y[b])]
        sep_sum += sum(abs(c) for c in cos)
        sep_mean += sum(abs(c) for c in cos) / C
    clu, sep_sum, sep_mean = clu / B, sep_sum / B, sep_mean / B

    assert clustering_loss(z, y, w).item() == pytest.approx(clu, abs=1e-10)
    assert separation_loss(z, w).item() == pytest.approx(sep_sum, abs=1e-10)
    assert separation_loss(z, w, mean_over_classes=True).item() == pytest.approx(sep_mean, abs=1e-10)


# ---------------------------------------------------------------- OE / Energy-OE

@pytest.mark.parametrize("num_classes", [2, 3, 10, 100])
def test_oe_loss_uniform_logits_is_log_C(num_classes):
    logits = torch.full((4, num_classes), 3.7, dtype=torch.float64)
    logits[1] = -2.0  # any constant row is uniform
    assert oe_loss(logits).item() == pytest.approx(math.log(num_classes), abs=1e-12)


def test_oe_loss_hand_value():
    # logits (0, ln 2): softmax (1/3, 2/3); loss = -(ln(1/3) + ln(2/3)) / 2
    logits = torch.tensor([[0.0, math.log(2.0)]], dtype=torch.float64)
    expected = -(math.log(1 / 3) + math.log(2 / 3)) / 2
    assert oe_loss(logits).item() == pytest.approx(expected, abs=1e-12)
    # batch mean with a uniform row: (expected + ln 2) / 2
    batch = torch.tensor([[0.0, math.log(2.0)], [1.0, 1.0]], dtype=torch.float64)
    assert oe_loss(batch).item() == pytest.approx((expected + math.log(2)) / 2, abs=1e-12)


def test_oe_loss_exceeds_log_C_when_confident():
    assert oe_loss(torch.tensor([[10.0, 0.0, 0.0]])).item() > math.log(3)


def test_energy_oe_zero_beyond_margins():
    # E_in = -logsumexp(30, 0) ~ -30 < m_in = -25 ; E_out = -ln 2 > m_out = -7
    logits_in = torch.tensor([[30.0, 0.0], [40.0, 40.0]], dtype=torch.float64)
    logits_out = torch.tensor([[0.0, 0.0], [-3.0, -5.0]], dtype=torch.float64)
    assert energy_oe_loss(logits_in, logits_out).item() == 0.0


def test_energy_oe_hand_square():
    # ID row (0, 0): E_in = -ln 2 ; hinge = (-ln2 + 25)^2 ; second ID row inactive (E=-30-ish)
    # OOD row (10, 10): E_out = -(10 + ln 2); hinge = (-7 + 10 + ln 2)^2 ; second OOD row inactive
    logits_in = torch.tensor([[0.0, 0.0], [30.0, 0.0]], dtype=torch.float64)
    logits_out = torch.tensor([[10.0, 10.0], [0.0, 0.0]], dtype=torch.float64)
    ln2 = math.log(2.0)
    expected = (25.0 - ln2) ** 2 / 2 + (3.0 + ln2) ** 2 / 2
    assert energy_oe_loss(logits_in, logits_out).item() == pytest.approx(expected, rel=1e-12)


def test_energy_oe_custom_margins():
    # single logit: E = -l. ID l=1 -> E_in=-1, m_in=-3 -> (2)^2 ; OOD l=-1 -> E_out=1, m_out=4 -> (3)^2
    got = energy_oe_loss(torch.tensor([[1.0]]), torch.tensor([[-1.0]]), m_in=-3.0, m_out=4.0)
    assert got.item() == pytest.approx(4.0 + 9.0, abs=1e-6)


# ---------------------------------------------------------------- full objective

def _hand_terms(logits, z, y, w, mean_over_classes):
    n_in = y.shape[0]
    C = w.shape[0]
    ce = 0.0
    for b in range(n_in):
        row = [float(v) for v in logits[b]]
        lse = math.log(sum(math.exp(v) for v in row))
        ce += lse - row[int(y[b])]
    ce /= n_in
    oe = 0.0
    for b in range(n_in, logits.shape[0]):
        row = [float(v) for v in logits[b]]
        lse = math.log(sum(math.exp(v) for v in row))
        oe += sum(lse - v for v in row) / C
    oe /= logits.shape[0] - n_in
    clu = sum(-_loop_cos(z[b], w)[int(y[b])] for b in range(n_in)) / n_in
    sep = 0.0
    for b in range(n_in, z.shape[0]):
        s = sum(abs(c) for c in _loop_cos(z[b], w))
        sep += s / C if mean_over_classes else s
    sep /= z.shape[0] - n_in
    return ce, oe, clu, sep


@pytest.mark.parametrize("mean_over_classes", [False, True])
def test_feature_separation_loss_stages(mean_over_classes):
    g = torch.Generator().manual_seed(3)
    n_in, n_out, d, C = 6, 9, 7, 4
    logits = torch.randn(n_in + n_out, C, generator=g, dtype=torch.float64)
    z = torch.randn(n_in + n_out, d, generator=g, dtype=torch.float64)
    w = torch.randn(C, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n_in,), generator=g)
    ce, oe, clu, sep = _hand_terms(logits, z, y, w, mean_over_classes)

    crit = FeatureSeparationLoss(alpha=0.7, beta=1.3, mean_over_classes=mean_over_classes)
    total1, terms = crit(logits, z, y, w, stage2=False)
    assert total1.item() == pytest.approx(ce + 0.5 * oe, abs=1e-10)
    assert terms["ce"].item() == pytest.approx(ce, abs=1e-10)
    assert terms["oe"].item() == pytest.approx(oe, abs=1e-10)
    assert terms["clu"].item() == pytest.approx(clu, abs=1e-10)
    assert terms["sep"].item() == pytest.approx(sep, abs=1e-10)

    total2, _ = crit(logits, z, y, w, stage2=True)
    assert total2.item() == pytest.approx(ce + 0.5 * oe + 0.7 * clu + 1.3 * sep, abs=1e-10)


def test_feature_separation_loss_defaults():
    # alpha = beta = 1, lambda = 0.5, sum over classes, detached W
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2])
    ce, oe, clu, sep = _hand_terms(logits, z.detach(), y, w.detach(), False)
    total, _ = FeatureSeparationLoss()(logits, z, y, w)
    assert total.item() == pytest.approx(ce + 0.5 * oe + clu + sep, abs=1e-10)
    total.backward()
    assert w.grad is None  # W reached only through the detached cosine terms here
    assert z.grad.abs().sum() > 0

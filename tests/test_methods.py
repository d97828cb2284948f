"""Fine-tuning objectives (fsood.methods): the ablations oe_clu / oe_sep / sep_energy and DAL."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_losses import _hand_terms
from torch import nn

from fsood.losses import FeatureSeparationLoss, dal_perturbation, oe_loss
from fsood.methods import METHODS, make_objective

N_IN, N_OUT, D, C = 6, 9, 7, 4

SEP_CFG = {"oe_weight": 0.4, "alpha": 0.7, "beta": 1.3, "detach_weight": True, "mean_over_classes": False}
CFGS = {
    "oe": {"oe_weight": 0.4},
    "energy_oe": {"weight": 0.2, "m_in": -3.0, "m_out": -1.0},
    "sep": dict(SEP_CFG),
    "oe_clu": {"oe_weight": 0.4, "alpha": 0.7, "detach_weight": True, "mean_over_classes": False},
    "oe_sep": {"oe_weight": 0.4, "beta": 1.3, "detach_weight": True, "mean_over_classes": False},
    "sep_energy": {"energy_weight": 0.2, "m_in": -3.0, "m_out": -1.0, "alpha": 0.7, "beta": 1.3,
                   "detach_weight": True, "mean_over_classes": False},
}
DAL_CFG = {"oe_weight": 0.5, "gamma": 10.0, "gamma_init": 0.01, "beta": 0.01, "rho": 10.0, "iterations": 10,
           "strength": 1.0}
ABLATIONS = ["oe_clu", "oe_sep", "sep_energy"]


def batch(seed=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N_IN + N_OUT, C, generator=g, dtype=torch.float64)
    z = torch.randn(N_IN + N_OUT, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N_IN,), generator=g)
    return logits, z, w, y


def hand_energy(logits, n_in, m_in, m_out):
    """Energy-OE hinge by a loop over samples (E = -log sum exp)."""
    e = [-math.log(sum(math.exp(float(v)) for v in row)) for row in logits]
    e_in, e_out = e[:n_in], e[n_in:]
    return (sum(max(v - m_in, 0.0) ** 2 for v in e_in) / len(e_in)
            + sum(max(m_out - v, 0.0) ** 2 for v in e_out) / len(e_out))


def hand_loss(method, cfg, logits, z, w, y, stage2):
    """Each method's loss as the paper / brief states it, from loop-computed terms."""
    ce, oe, clu, sep = _hand_terms(logits, z, y, w, cfg.get("mean_over_classes", False))
    energy = hand_energy(logits, len(y), cfg.get("m_in", 0.0), cfg.get("m_out", 0.0))
    a, b = cfg.get("alpha", 0.0), cfg.get("beta", 0.0)
    return {
        "oe": ce + cfg.get("oe_weight", 0) * oe,
        "energy_oe": ce + cfg.get("weight", 0) * energy,
        "sep": ce + cfg.get("oe_weight", 0) * oe + (a * clu + b * sep if stage2 else 0.0),
        "oe_clu": ce + cfg.get("oe_weight", 0) * oe + (a * clu if stage2 else 0.0),
        "oe_sep": ce + cfg.get("oe_weight", 0) * oe + (b * sep if stage2 else 0.0),
        "sep_energy": ce + cfg.get("energy_weight", 0) * energy + (a * clu + b * sep if stage2 else 0.0),
    }[method]


def run(method, cfg, logits, z, w, y, epoch, stage2_epoch=2, **kwargs):
    objective = make_objective(method, cfg, stage2_epoch, lambda: w, **kwargs)
    return objective(logits, z, y, epoch)


def test_methods_listed():
    assert set(ABLATIONS + ["dal"]) <= set(METHODS)


@pytest.mark.parametrize("mean_over_classes", [False, True])
@pytest.mark.parametrize("method", list(CFGS))
def test_loss_is_the_hand_combined_terms_in_each_stage(method, mean_over_classes):
    logits, z, w, y = batch()
    cfg = dict(CFGS[method])
    if "mean_over_classes" in cfg:
        cfg["mean_over_classes"] = mean_over_classes
    # energy hinges active on both sides for this batch, so the energy term is not 0
    assert hand_energy(logits, N_IN, -3.0, -1.0) > 0
    for epoch, stage2 in ((0, False), (1, False), (2, True), (5, True)):
        total, terms = run(method, cfg, logits, z, w, y, epoch)
        assert total.item() == pytest.approx(hand_loss(method, cfg, logits, z, w, y, stage2), abs=1e-10)
        assert {"ce", "oe", "clu", "sep"} <= set(terms)  # every method reports the monitoring terms
        assert terms["stage"].item() == (2.0 if stage2 else 1.0)  # history.csv's stage column, the report's line
        assert all(not v.requires_grad for v in terms.values())


@pytest.mark.parametrize("method", ABLATIONS)
def test_stage2_changes_the_loss_of_every_ablation(method):
    logits, z, w, y = batch()
    s1, _ = run(method, CFGS[method], logits, z, w, y, epoch=1)
    s2, _ = run(method, CFGS[method], logits, z, w, y, epoch=2)
    assert abs(s2.item() - s1.item()) > 1e-3


def test_sep_matches_feature_separation_loss_exactly():
    logits, z, w, y = batch()
    crit = FeatureSeparationLoss(0.4, 0.7, 1.3)
    for epoch, stage2 in ((0, False), (3, True)):
        total, _ = run("sep", SEP_CFG, logits, z, w, y, epoch)
        assert torch.equal(total, crit(logits, z, y, w, stage2=stage2)[0])


def feature_grads(method, epoch, cfg=None):
    logits, z, w, y = batch()
    logits, z = logits.clone().requires_grad_(True), z.clone().requires_grad_(True)
    total, _ = run(method, cfg or CFGS[method], logits, z, w, y, epoch)
    total.backward()
    return torch.zeros_like(z) if z.grad is None else z.grad


@pytest.mark.parametrize("method, id_rows, outlier_rows",
                         [("oe_clu", True, False), ("oe_sep", False, True), ("sep_energy", True, True),
                          ("sep", True, True)])
def test_feature_gradient_appears_in_stage2_only_and_where_its_terms_act(method, id_rows, outlier_rows):
    # logits are a leaf here, so z gets gradient only from the cosine terms
    g1, g2 = feature_grads(method, epoch=1), feature_grads(method, epoch=2)
    assert g1.abs().sum() == 0
    assert (g2[:N_IN].abs().sum() > 0) == id_rows  # L_clu acts on ID features
    assert (g2[N_IN:].abs().sum() > 0) == outlier_rows  # L_sep acts on outlier features


class TinyNet(nn.Module):
    def __init__(self, seed=0, d_in=5, d=D, c=C):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(d_in, d), nn.Tanh())
        self.fc = nn.Linear(d, c)

    def forward(self, x):
        z = self.backbone(x)
        return self.fc(z), z


def tiny_data(seed=0, d_in=5):
    g = torch.Generator().manual_seed(seed)
    x_in = torch.randn(N_IN, d_in, generator=g)
    y = torch.randint(0, C, (N_IN,), generator=g)
    x_out = 3 * torch.randn(N_OUT, d_in, generator=g)
    return torch.cat([x_in, x_out]), y


def backbone_grads(method, cfg, epoch):
    net = TinyNet()
    x, y = tiny_data()
    objective = make_objective(method, cfg, 2, lambda: net.fc.weight, head_fn=lambda: net.fc)
    logits, z = net(x)
    objective(logits, z, y, epoch)[0].backward()
    return torch.cat([p.grad.flatten() for p in net.backbone.parameters()])


@pytest.mark.parametrize("method, stage1_like", [("oe_clu", "oe"), ("oe_sep", "oe"), ("sep_energy", "energy_oe")])
def test_backbone_gradient_is_the_baseline_one_in_stage1_and_changes_in_stage2(method, stage1_like):
    cfg = dict(CFGS[method], weight=0.2, m_in=-3.0, m_out=-1.0)  # energy_oe's keys, for the stage-I baseline
    base = backbone_grads(stage1_like, CFGS[stage1_like], epoch=1)
    torch.testing.assert_close(backbone_grads(method, cfg, epoch=1), base, rtol=0, atol=0)
    assert (backbone_grads(method, cfg, epoch=2) - base).abs().max() > 1e-6


@pytest.mark.parametrize("method", ABLATIONS)
def test_detach_weight_is_honoured(method):
    logits, z, w0, y = batch()

    def weight_grad(detach, epoch):
        w = w0.clone().requires_grad_(True)
        total, _ = run(method, dict(CFGS[method], detach_weight=detach), logits.requires_grad_(True), z, w, y,
                       epoch)
        total.backward()
        return w.grad

    assert weight_grad(True, epoch=2) is None  # the authors' code: fc.weight.data
    assert weight_grad(False, epoch=2).abs().sum() > 0
    assert weight_grad(False, epoch=1) is None  # stage I trains no cosine term


def test_mean_over_classes_scales_the_trained_separation_term():
    logits, z, w, y = batch()
    s_sum = run("oe_sep", CFGS["oe_sep"], logits, z, w, y, 2)[0] - run("oe_sep", CFGS["oe_sep"], logits, z, w, y, 1)[0]
    cfg_mean = dict(CFGS["oe_sep"], mean_over_classes=True)
    s_mean = run("oe_sep", cfg_mean, logits, z, w, y, 2)[0] - run("oe_sep", cfg_mean, logits, z, w, y, 1)[0]
    assert s_sum.item() == pytest.approx(C * s_mean.item(), rel=1e-10)


@pytest.mark.parametrize(
    "method, cfg, kwargs, fragment",
    [
        ("dal", DAL_CFG, {}, "needs head_fn"),
        ("oe_clu", {"oe_weight": 0.5}, {}, "methods.oe_clu lacks ['alpha', 'detach_weight', 'mean_over_classes']"),
        ("dal", dict(DAL_CFG, gamma_init=11.0), {"head_fn": lambda: None}, "gamma_init=11.0"),
        ("none", {}, {}, "'oe_clu'"),
        ("dall", {}, {}, "'dal'"),
    ],
)
def test_bad_configurations_are_refused_by_name(method, cfg, kwargs, fragment):
    with pytest.raises(ValueError) as err:
        make_objective(method, cfg, 2, lambda: None, **kwargs)
    assert fragment in str(err.value)


# ---------------------------------------------------------------- DAL

def test_dal_ascent_raises_the_oe_loss_at_every_step():
    # with gamma = 0 the search ascends L_OE(head(z + delta)), convex in delta: each normalised
    # step of length s raises it by at least s * |gradient| (first-order bound)
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(D, C).double()
    z_out = torch.randn(N_OUT, D, generator=g, dtype=torch.float64)
    zeros = torch.zeros_like(z_out)
    losses = [oe_loss(head(z_out + dal_perturbation(z_out, head, zeros, 0.0, k, 0.5)[0])).item() for k in range(6)]
    assert losses[0] == pytest.approx(oe_loss(head(z_out)).item(), abs=1e-12)
    assert all(b > a for a, b in itertools.pairwise(losses)), losses
    assert head.weight.grad is None  # the search leaves the head's gradients alone


def test_dal_steps_are_normalised_per_sample_and_radius_is_the_last_evaluated_iterate():
    g = torch.Generator().manual_seed(1)
    head = nn.Linear(D, C).double()
    z_out = 10 * torch.randn(N_OUT, D, generator=g, dtype=torch.float64)
    init = torch.zeros_like(z_out)
    delta, r = dal_perturbation(z_out, head, init, gamma=0.3, iterations=1, strength=0.7)
    torch.testing.assert_close(delta.norm(dim=1), torch.full((N_OUT,), 0.7, dtype=torch.float64))
    assert r.item() == 0.0  # the radius fed to the gamma update is that of the iterate before the last step
    delta2, r2 = dal_perturbation(z_out, head, init, gamma=0.3, iterations=2, strength=0.7)
    assert r2.item() == pytest.approx(delta.abs().mean().item(), rel=1e-12)
    assert (delta2.norm(dim=1) <= 1.4 + 1e-12).all()


def dal_steps(cfg, n_steps=4, seed=0, dtype=torch.float64, lr=0.0):
    """Run the DAL objective on a tiny model; returns per-step (loss, terms)."""
    net = TinyNet().to(dtype)
    x, y = tiny_data()
    x = x.to(dtype)
    objective = make_objective("dal", cfg, 2, lambda: net.fc.weight, head_fn=lambda: net.fc, seed=seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    out = []
    for step in range(n_steps):
        logits, z = net(x)
        loss, terms = objective(logits, z, y, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append((loss.detach(), terms))
    return out


def test_dal_trains_on_the_perturbed_outliers():
    (loss, terms), = dal_steps(DAL_CFG, n_steps=1)
    assert terms["oe_aug"] > terms["oe"] + 1e-3  # the worst case in the ball is worse than the clean outliers
    assert loss.item() == pytest.approx((terms["ce"] + 0.5 * terms["oe_aug"]).item(), abs=1e-12)
    # the same loss from the documented recipe: start U(0, 1e-4) from a CPU generator seeded with seed
    net = TinyNet().double()
    x, y = tiny_data()
    logits, z = net(x.double())
    init = (torch.rand(N_OUT, D, generator=torch.Generator().manual_seed(0)) * 1e-4).double()
    delta, _ = dal_perturbation(z[N_IN:], net.fc, init, 0.01, 10, 1.0)
    expected = F.cross_entropy(logits[:N_IN], y) + 0.5 * oe_loss(net.fc(z[N_IN:] + delta))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize(
    "cfg, bound",
    [
        (DAL_CFG, "lower"),  # the code's defaults: r << rho, gamma falls to 0 at once
        (dict(DAL_CFG, rho=0.0, beta=5.0, gamma=1.0, gamma_init=0.5), "upper"),
        (dict(DAL_CFG, rho=0.05, beta=0.5, gamma=10.0, gamma_init=1.0, iterations=3), "inside"),
    ],
)
def test_dal_gamma_follows_the_update_rule_within_bounds(cfg, bound):
    steps = dal_steps(cfg, n_steps=5, lr=0.05)
    gammas = [t["dal_gamma"].item() for _, t in steps]
    radii = [t["dal_radius"].item() for _, t in steps]
    assert gammas[0] == cfg["gamma_init"]
    for k in range(len(steps) - 1):
        expected = min(max(gammas[k] - cfg["beta"] * (cfg["rho"] - radii[k]), 0.0), cfg["gamma"])
        assert gammas[k + 1] == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= gammas[k + 1] <= cfg["gamma"]
    later = gammas[1:]
    if bound == "lower":
        assert all(g == 0.0 for g in later)
    elif bound == "upper":
        assert all(g == cfg["gamma"] for g in later)
    else:
        assert all(0.0 < g < cfg["gamma"] for g in later) and len(set(later)) == len(later)


def test_dal_same_seed_same_losses_other_seed_differs():
    first = [loss for loss, _ in dal_steps(DAL_CFG, n_steps=3, seed=7, lr=0.05)]
    second = [loss for loss, _ in dal_steps(DAL_CFG, n_steps=3, seed=7, lr=0.05)]
    other = [loss for loss, _ in dal_steps(DAL_CFG, n_steps=3, seed=8, lr=0.05)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("method", ABLATIONS + ["dal"])
def test_a_few_sgd_steps_decrease_the_objective(method):
    torch.manual_seed(0)
    net = TinyNet()
    x, y = tiny_data()
    cfg = DAL_CFG if method == "dal" else CFGS[method]
    objective = make_objective(method, cfg, 0, lambda: net.fc.weight, head_fn=lambda: net.fc)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for step in range(30):
        logits, z = net(x)
        loss, _ = objective(logits, z, y, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert max(losses[-5:]) < 0.8 * losses[0], losses

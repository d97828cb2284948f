"""The training protocol's pieces, by hand: the batch plan (a stream over all ID images), reflect padding, the
alternating flip, BatchNorm frozen or with another momentum, label smoothing in fine-tuning, Energy-OE's
margins by rule, and the fast recipe's lookahead, Muon and whitening-bias schedule."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsood import margins, recipe
from fsood.augment import AugmentDraws, apply_augment
from fsood.batches import index_stream, plan_batches
from fsood.compact_net import CompactNet
from fsood.losses import FeatureSeparationLoss
from fsood.methods import make_objective
from fsood.train import alternate_flips, train


# ------------------------------------------------------------------ the batch plan

def test_an_epoch_is_one_permutation_with_a_smaller_last_batch():
    plan = plan_batches(10, 4, 2, None, torch.Generator().manual_seed(0))
    assert [len(b) for b in plan[0]] == [4, 4, 2] and [len(b) for b in plan[1]] == [4, 4, 2]
    for epoch in plan:
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    # a last batch with fewer images than ranks is dropped (one rank would have none)
    assert [len(b) for b in plan_batches(9, 4, 1, None, torch.Generator().manual_seed(0), world_size=2)[0]] == [4, 4]


def test_short_epochs_continue_one_stream_over_every_image():
    """steps_per_epoch: 3 epochs of 2 batches of 4 from 10 images: 24 draws, every image once before any twice."""
    plan = plan_batches(10, 4, 3, 2, torch.Generator().manual_seed(0))
    assert [[len(b) for b in epoch] for epoch in plan] == [[4, 4]] * 3
    flat = torch.cat([b for epoch in plan for b in epoch]).tolist()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    again = plan_batches(10, 4, 3, 2, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for x, y in zip(plan, again) for a, b in zip(x, y))
    assert index_stream(3, 0, torch.Generator()).numel() == 0


def _tiny(seed: int = 0) -> nn.Module:
    from fsood.models import SmallCNN

    torch.manual_seed(seed)
    return SmallCNN(1, 3, 4, 8)


CFG = {"epochs": 4, "stage2_epoch": 2, "lr": 0.05, "lr_min": 0.0, "momentum": 0.9, "nesterov": True,
       "weight_decay": 5e-4, "augment": {"crop_padding": 1, "hflip": True, "padding_mode": "reflect"},
       "id_batch_size": 8, "outlier_batch_size": 8, "steps_per_epoch": 3, "batchnorm": "train", "bn_momentum": None,
       "label_smoothing": 0.0}
RUNTIME = {"device": "cpu", "precision": "fp32", "channels_last": False, "deterministic": True, "threads": 1,
           "eval_batch_size": 64}
NORM = {"mean": [0.5], "std": [0.25]}


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 255, (n, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, n),
            rng.integers(0, 255, (60, 1, 8, 8), dtype=np.uint8))


def test_steps_per_epoch_fixes_the_epoch_length_and_resumes_to_the_same_weights(tmp_path):
    from fsood.resume import Resume

    x, y, xo = _data()
    obj = lambda m: make_objective("oe", {"oe_weight": 0.5}, CFG["stage2_epoch"], lambda: m.fc.weight)  # noqa: E731
    whole = _tiny()
    history = train(whole, x, y, CFG, RUNTIME, torch.device("cpu"), NORM, obj(whole), 1, outlier_x=xo)
    assert len(history) == 4
    resume = Resume(tmp_path / "r.pt", "key")
    # interrupted after epoch 1 (a KeyboardInterrupt from after_epoch, as a kill), then resumed
    half = _tiny()

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(half, x, y, CFG, RUNTIME, torch.device("cpu"), NORM, obj(half), 1, outlier_x=xo, resume=resume,
              after_epoch=stop)
    again = _tiny()
    train(again, x, y, CFG, RUNTIME, torch.device("cpu"), NORM, obj(again), 1, outlier_x=xo, resume=resume)
    for a, b in zip(whole.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ augmentation

def test_reflect_padding_crops_the_reflect_padded_image():
    x = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    draws = AugmentDraws(torch.tensor([0, 1, 2, 3, 4, 2]), torch.tensor([4, 3, 2, 1, 0, 2]), None)
    out = apply_augment(x, draws, 2, "reflect")
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for i in range(6):
        r, c = int(draws.rows[i]), int(draws.cols[i])
        assert torch.equal(out[i].float(), padded[i, :, r:r + 8, c:c + 8])
    assert torch.equal(apply_augment(x, AugmentDraws(torch.full((6,), 2), torch.full((6,), 2), None), 2, "reflect"), x)
    with pytest.raises(ValueError, match="padding_mode 'wrap'"):
        apply_augment(x, draws, 2, "wrap")


def test_alternating_flip_flips_each_image_in_exactly_one_of_two_epochs():
    base = alternate_flips(1000, {"hflip": "alternate"}, seed=3)
    assert 400 < int(base.sum()) < 600
    even, odd = base, base ^ True  # what _inputs applies in even and odd epochs
    assert torch.all(even ^ odd)
    assert alternate_flips(10, {"hflip": True}, 3) is None


# ------------------------------------------------------------------ BatchNorm and the objective

def _bn_stats(model):
    return [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("mode, moved", [("frozen", False), ("train", True)])
def test_frozen_batchnorm_keeps_the_pretrained_statistics(mode, moved):
    x, y, xo = _data()
    model = _tiny()
    before = _bn_stats(model)
    cfg = {**CFG, "epochs": 1, "batchnorm": mode}
    train(model, x, y, cfg, RUNTIME, torch.device("cpu"), NORM,
          make_objective("oe", {"oe_weight": 0.5}, 1, lambda: model.fc.weight), 0, outlier_x=xo)
    changed = [not torch.equal(a, b) for a, b in zip(before, _bn_stats(model))]
    assert all(changed) if moved else not any(changed)


def test_bn_momentum_sets_every_batchnorm():
    model = CompactNet(3, 10, (8, 16, 16))
    recipe.set_batchnorm_momentum(model, {"bn_momentum": 0.05})
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.05}
    recipe.set_batchnorm_momentum(model, {"bn_momentum": None})  # None keeps the model's
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.05}


def test_label_smoothing_reaches_every_methods_cross_entropy():
    torch.manual_seed(0)
    logits, z, labels = torch.randn(6, 3), torch.randn(6, 4), torch.tensor([0, 1, 2])
    weight = torch.randn(3, 4)
    for method, cfg in (("oe", {"oe_weight": 0.5}), ("energy_oe", {"weight": 0.1, "m_in": -1.0, "m_out": 1.0})):
        _, terms = make_objective(method, cfg, 9, lambda: weight, label_smoothing=0.2)(logits, z, labels, 0)
        assert terms["ce"] == pytest.approx(float(F.cross_entropy(logits[:3], labels, label_smoothing=0.2)))
    _, plain = FeatureSeparationLoss()(logits, z, labels, weight)
    assert plain["ce"] == pytest.approx(float(F.cross_entropy(logits[:3], labels)))


# ------------------------------------------------------------------ Energy-OE's margins

def test_margins_fixed_or_from_the_pretrained_models_energy_quantiles():
    logits = np.log(np.array([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0], [8.0, 8.0], [16.0, 16.0]]))
    e = margins.energy(logits)
    assert e == pytest.approx(-np.log([2, 4, 8, 16, 32]))  # -logsumexp
    summary = {"id_train": margins.energy_summary(logits), "outliers": margins.energy_summary(logits / 10)}
    assert summary["id_train"]["quantiles"][50] == pytest.approx(-np.log(8))
    cfg = {"margins": "pretrained", "m_in_quantile": 0.5, "m_out_quantile": 0.5, "m_in": -25.0, "m_out": -7.0}
    m_in, m_out = margins.margins(cfg, summary)
    assert m_in == pytest.approx(-np.log(8)) and m_out == pytest.approx(float(np.quantile(margins.energy(logits / 10),
                                                                                        0.5)))
    assert margins.margins({**cfg, "margins": "fixed"}, None) == (-25.0, -7.0)
    with pytest.raises(ValueError, match="m_in .* is not below m_out"):
        margins.margins({**cfg, "m_in_quantile": 1.0, "m_out_quantile": 0.0}, {"id_train": summary["outliers"],
                                                                               "outliers": summary["id_train"]})
    with pytest.raises(ValueError, match="needs the subspace stage's energies.json"):
        margins.margins(cfg, None)


# ------------------------------------------------------------------ the fast recipe's pieces

def test_lookahead_pulls_the_weights_to_their_average_every_few_steps():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    look = recipe.Lookahead(model, total_steps=10, every=5, decay=0.5, power=1.0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    look.update(model, 4)  # not a multiple of 5: nothing
    assert float(model.weight[0, 0]) == 1.0
    look.update(model, 5)  # decay 0.5 x (5/10)^1 = 0.25: ema = 0.25 * 0 + 0.75 * 1
    assert float(model.weight[0, 0]) == pytest.approx(0.75) and float(look.ema["weight"][0, 0]) == pytest.approx(0.75)
    with torch.no_grad():
        model.weight.fill_(2.0)
    look.finish(model)  # the model is the average
    assert float(model.weight[0, 0]) == pytest.approx(0.75)


def test_muon_orthogonalises_and_renormalises_the_filters():
    g = torch.randn(16, 36, generator=torch.Generator().manual_seed(0))
    o = recipe.orthogonalize(g)
    singular = torch.linalg.svdvals(o)
    assert 0.4 < float(singular.min()) and float(singular.max()) < 1.6  # near the orthogonal factor (Muon's NS)
    conv = nn.Conv2d(4, 16, 3, bias=False)
    opt = recipe.Muon([conv.weight], lr=0.1, momentum=0.6)
    conv(torch.randn(2, 4, 8, 8)).square().sum().backward()
    before = conv.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, conv.weight)
    # the step renormalised the weight to sqrt(16) first, then moved it by 0.1 x an update of norm ~sqrt(16)
    assert float(conv.weight.norm()) == pytest.approx(4.0, rel=0.1)


def test_fast_recipe_optimizer_puts_filters_under_muon_and_the_rest_under_sgd():
    model = CompactNet(3, 10, (8, 16, 16))
    cfg = {"lr": 1.5, "momentum": 0.85, "nesterov": True, "weight_decay": 1e-3,
           "fast_recipe": {"bn_bias_lr_scale": 64.0, "muon": {"lr": 0.24, "momentum": 0.6}}}
    opt = recipe.optimizer(model, cfg)
    sgd, muon = opt.optimizers
    assert isinstance(muon, recipe.Muon) and all(p.ndim == 4 for g in muon.param_groups for p in g["params"])
    assert muon.param_groups[0]["lr_scale"] == pytest.approx(0.24 / 1.5)
    assert not any(p.ndim == 4 for g in sgd.param_groups for p in g["params"])
    state = opt.state_dict()
    opt.load_state_dict(copy.deepcopy(state))


def test_whitening_bias_trains_for_its_first_epochs_only():
    model = CompactNet(3, 10, (8, 16, 16))
    cfg = {"fast_recipe": {"whiten_bias_epochs": 2}}
    recipe.set_epoch(model, cfg, 1)
    assert model.backbone.whiten.bias.requires_grad
    recipe.set_epoch(model, cfg, 2)
    assert not model.backbone.whiten.bias.requires_grad

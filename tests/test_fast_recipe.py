"""The fast pretraining recipe and the compact net (fsood.recipe, fsood.compact_net), against hand-computed cases."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsood import runtime as rt
from fsood.compact_net import FEATURE_SCALE, CompactNet, patch_whitening
from fsood.config import ParamsError, for_benchmark, load_params, validate_params
from fsood.methods import pretrain_objective
from fsood.models import WideResNet, build_model
from fsood.recipe import lr_at, param_groups, warmup_linear_factor

FAST = {"label_smoothing": 0.2, "warmup_fraction": 0.23, "lr_start_factor": 0.2, "lr_end_factor": 0.07,
        "bn_bias_lr_scale": 64.0}


def test_whitening_of_one_channel_pixels_is_one_over_root_mean_square():
    # kernel 1, one channel: the patches are the pixels; S = mean(x^2) = (1 + 1 + 4 + 4) / 4 = 2.5
    images = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]]]])
    filters = patch_whitening(images, kernel=1, eps=0.5)
    assert filters.shape == (2, 1, 1, 1)
    assert filters.flatten().tolist() == pytest.approx([1 / math.sqrt(3.0), -1 / math.sqrt(3.0)])


def test_whitening_orders_filters_by_eigenvalue_and_whitens():
    # two channels, kernel 1: channel 0 has mean square 4, channel 1 has 1, uncorrelated
    a = torch.tensor([2.0, -2.0, 2.0, -2.0])
    b = torch.tensor([1.0, 1.0, -1.0, -1.0])
    images = torch.stack([a, b]).view(1, 2, 2, 2)
    filters = patch_whitening(images, kernel=1, eps=0.0).view(4, 2)
    expected = torch.tensor([[0.5, 0.0], [0.0, 1.0]])  # largest eigenvalue (4) first, 1 / sqrt(lambda)
    assert torch.allclose(filters[:2].abs(), expected, atol=1e-6)
    assert torch.allclose(filters[2:], -filters[:2])
    # on random 2x2 patches the first half's outputs have second moment lambda / (lambda + eps): ~ identity
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    w = patch_whitening(x)
    out = F.conv2d(x, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    assert torch.allclose(out.T @ out / len(out), torch.eye(12), atol=3e-3)  # eps 5e-4 against lambda >= 0.25


def test_warmup_linear_factor_by_hand():
    # 100 steps, 23 of warmup from 0.2 to 1, then linearly to 0.07 at step 100
    assert warmup_linear_factor(0, 100, FAST) == pytest.approx(0.2)
    assert warmup_linear_factor(10, 100, FAST) == pytest.approx(0.2 * (13 / 23) + 10 / 23)
    assert warmup_linear_factor(23, 100, FAST) == pytest.approx(1.0)
    assert warmup_linear_factor(50, 100, FAST) == pytest.approx((50 / 77) + 0.07 * (27 / 77))
    assert warmup_linear_factor(100, 100, FAST) == pytest.approx(0.07)
    assert lr_at(23, 100, {"lr": 1.5, "fast_recipe": FAST}) == pytest.approx(1.5)
    # the plain recipe keeps the cosine: half-way is the mean of lr and lr_min
    assert lr_at(50, 100, {"lr": 0.1, "lr_min": 0.0, "fast_recipe": None}) == pytest.approx(0.05)


def test_param_groups_plain_keeps_every_parameter_in_order():
    model = WideResNet(3, 10, 10, 1, 0.0)
    (group,) = param_groups(model, {"weight_decay": 5e-4, "fast_recipe": None})
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    assert (group["lr_scale"], group["weight_decay"]) == (1.0, 5e-4)


def test_param_groups_fast_scales_batchnorm_shifts_and_drops_frozen():
    model = CompactNet(3, 10, (8, 16, 16))
    rest, shifts = param_groups(model, {"weight_decay": 0.002, "fast_recipe": FAST})
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in shifts["params"]} == {id(m.bias) for m in bn}
    assert (shifts["lr_scale"], shifts["weight_decay"]) == (64.0, pytest.approx(0.002 / 64))
    grouped = {id(p) for g in (rest, shifts) for p in g["params"]}
    assert id(model.backbone.whiten.weight) not in grouped  # frozen: set from the data
    assert not any(id(m.weight) in grouped for m in bn)  # BatchNorm scales stay 1
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


def test_label_smoothing_by_hand():
    logits, labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    loss, _ = pretrain_objective(0.2)(logits, None, labels, 0)
    p = torch.softmax(logits, 1)[0]
    assert loss.item() == pytest.approx(-(0.9 * math.log(p[0]) + 0.1 * math.log(p[1])), rel=1e-6)


def test_compact_net_is_a_plain_linear_head_on_z():
    torch.manual_seed(0)
    model = build_model({"arch": "compact", "widths": [8, 16, 16], "dropout": 0.0, "flip_average": False}, 3, 10).eval()
    x = torch.randn(4, 3, 32, 32)
    logits, z = model(x, return_features=True)
    assert z.shape == (4, 16) and logits.shape == (4, 10)
    assert torch.allclose(logits, z @ model.fc.weight.T + model.fc.bias)
    # z is the global max of the last group's map, times 1/9
    last = model.backbone.groups(F.gelu(model.backbone.whiten(x)))
    assert torch.allclose(z, last.amax(dim=(2, 3)) * FEATURE_SCALE)
    images = torch.randn(16, 3, 8, 8)
    model.init_whitening(images)
    assert torch.equal(model.backbone.whiten.weight, patch_whitening(images))
    clone = CompactNet(3, 10, (8, 16, 16))
    clone.load_state_dict(model.state_dict())  # the whitening travels in the checkpoint
    assert torch.equal(clone.backbone.whiten.weight, model.backbone.whiten.weight)


@pytest.mark.parametrize("flags, want", [({"avx512_bf16", "avx512f"}, "bf16"), ({"amx_bf16"}, "bf16"),
                                         ({"avx2"}, "fp32"), (set(), "fp32")])
def test_precision_auto_follows_the_cpu_flags(monkeypatch, flags, want):
    monkeypatch.setattr(rt, "cpu_flags", lambda: flags)
    assert rt.precision({"precision": "auto"}, torch.device("cpu")) == want
    assert rt.precision({"precision": "fp32"}, torch.device("cpu")) == "fp32"


def test_benchmark_runtime_overrides_merge_and_are_checked():
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["benchmarks"]["digits"]["runtime"] = {"precision": "bf16", "threads": 2}
    seen = for_benchmark(validate_params(params), "digits")["runtime"]
    assert (seen["precision"], seen["threads"], seen["device"]) == ("bf16", 2, params["runtime"]["device"])
    params["benchmarks"]["digits"]["runtime"] = {"thread": 2}
    with pytest.raises(ParamsError, match=r"benchmarks\.digits\.runtime\.thread overrides nothing"):
        validate_params(params)


def test_flip_average_is_the_mean_feature_of_image_and_mirror_in_eval_only():
    torch.manual_seed(0)
    model = CompactNet(3, 10, (8, 16, 16), flip_average=True).eval()
    x = torch.randn(4, 3, 32, 32)
    logits, z = model(x, return_features=True)
    assert torch.allclose(z, 0.5 * (model.backbone(x) + model.backbone(x.flip(-1))), atol=1e-6)
    # fc is linear: the logits are the mean of the two views' logits
    assert torch.allclose(logits, 0.5 * (model.fc(model.backbone(x)) + model.fc(model.backbone(x.flip(-1)))), atol=1e-5)
    model.train()
    assert torch.allclose(model(x, return_features=True)[1], model.backbone(x))  # training sees one view


def test_finetune_id_samples_is_a_fixed_class_balanced_subset():
    from fsood.stages.finetune import id_train_subset

    class Data:
        def load(self, name):
            assert name == "id_train"
            y = np.repeat(np.arange(4), 25)  # 4 classes x 25
            return np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), y

    x, y = id_train_subset(Data(), 40)
    assert np.bincount(y).tolist() == [10, 10, 10, 10]
    assert np.array_equal(x[:, 0, 0, 0], np.sort(x[:, 0, 0, 0]))  # in the set's order
    again, _ = id_train_subset(Data(), 40)
    assert np.array_equal(again, x)  # the same for every cell
    full, _ = id_train_subset(Data(), None)
    assert len(full) == 100


def test_cpu_model_is_the_model_name_line_of_cpuinfo(tmp_path, monkeypatch):
    """benchmarks quote it beside their figures: the "model name" line, "unknown" without one."""
    import builtins

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                       "flags\t\t: fpu amx_bf16\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    assert rt.cpu_model() == "Intel(R) Xeon(R) Processor"
    assert "amx_bf16" in rt.cpu_flags()
    cpuinfo.write_text("processor\t: 0\n")
    assert rt.cpu_model() == "unknown"

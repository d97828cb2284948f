"""augment_batch (fsood.augment) and cosine_lr (fsood.train)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsood.train import augment_batch, cosine_lr


def _batch(n=8, c=3, h=5, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) + 0.1  # strictly positive: padding zeros are visible


def _crops(img, p):
    """All (2p+1)^2 shifted crops of the zero-padded image."""
    c, h, w = img.shape
    padded = F.pad(img, (p, p, p, p))
    return [padded[:, i : i + h, j : j + w] for i in range(2 * p + 1) for j in range(2 * p + 1)]


def test_identity_without_padding_or_flip():
    x = _batch()
    out = augment_batch(x, padding=0, hflip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert torch.equal(out, x)


@pytest.mark.parametrize("p", [1, 2])
def test_every_output_is_a_shifted_crop(p):
    x = _batch(n=40, seed=p)
    out = augment_batch(x, padding=p, hflip=False, generator=torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    used = set()
    for k in range(x.shape[0]):
        matches = [i for i, crop in enumerate(_crops(x[k], p)) if torch.equal(out[k], crop)]
        assert len(matches) == 1, f"image {k} is not a crop of its own padded input"
        used.add(matches[0])
    assert len(used) > 3  # offsets are random, not one fixed shift


def test_crop_plus_flip_is_crop_or_mirrored_crop():
    p = 2
    x = _batch(n=40, seed=9)
    out = augment_batch(x, padding=p, hflip=True, generator=torch.Generator().manual_seed(3))
    flipped = 0
    for k in range(x.shape[0]):
        crops = _crops(x[k], p)
        plain = any(torch.equal(out[k], c) for c in crops)
        mirror = any(torch.equal(out[k], c.flip(-1)) for c in crops)
        assert plain or mirror
        flipped += mirror and not plain
    assert 0 < flipped < x.shape[0]


def test_hflip_flips_about_half():
    n = 200
    x = _batch(n=n, seed=4)
    out = augment_batch(x, padding=0, hflip=True, generator=torch.Generator().manual_seed(5))
    n_flipped = 0
    for k in range(n):
        same = torch.equal(out[k], x[k])
        mirror = torch.equal(out[k], x[k].flip(-1))
        assert same != mirror  # exactly one of the two (random images are not symmetric)
        n_flipped += mirror
    assert 60 <= n_flipped <= 140  # Binomial(200, 1/2): mean 100, sd ~7


def test_same_seed_same_output():
    x = _batch(n=30, seed=6)
    a = augment_batch(x, padding=3, hflip=True, generator=torch.Generator().manual_seed(11))
    b = augment_batch(x, padding=3, hflip=True, generator=torch.Generator().manual_seed(11))
    c = augment_batch(x, padding=3, hflip=True, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_input_not_modified():
    x = _batch(n=10, seed=7)
    before = x.clone()
    augment_batch(x, padding=2, hflip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before)


@pytest.mark.parametrize("lr,lr_min,total", [(0.07, 1e-6, 1000), (0.1, 0.0, 7), (1e-4, 1e-5, 50)])
def test_cosine_lr_endpoints_and_midpoint(lr, lr_min, total):
    assert cosine_lr(0, total, lr, lr_min) == pytest.approx(lr, rel=1e-12)
    assert cosine_lr(total, total, lr, lr_min) == pytest.approx(lr_min, abs=1e-15)
    assert cosine_lr(total / 2, total, lr, lr_min) == pytest.approx((lr + lr_min) / 2, rel=1e-12)
    # quarter point: lr_min + (lr - lr_min) * (1 + cos(pi/4)) / 2
    q = lr_min + (lr - lr_min) * (1 + math.sqrt(0.5)) / 2
    assert cosine_lr(total / 4, total, lr, lr_min) == pytest.approx(q, rel=1e-12)
    values = [cosine_lr(s, total, lr, lr_min) for s in range(total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.trust(kind="nonfinite_loss")
def test_non_finite_loss_stops_training_naming_epoch_and_step():
    from fsood.models import SmallCNN
    from fsood.train import NonFiniteLoss, train

    calls = {"n": 0}

    def objective(logits, z, labels, epoch):
        calls["n"] += 1
        ce = F.cross_entropy(logits, labels)
        return (ce * float("nan") if calls["n"] == 5 else ce), {"ce": ce}

    cfg = {"epochs": 3, "batch_size": 8, "lr": 0.01, "lr_min": 0.0, "momentum": 0.9, "nesterov": True,
           "weight_decay": 0.0, "augment": {"crop_padding": 0, "hflip": False}}
    runtime = {"channels_last": False, "precision": "fp32"}
    x = np.zeros((16, 1, 8, 8), dtype=np.uint8)
    y = np.arange(16) % 3
    with pytest.raises(NonFiniteLoss, match="at epoch 2, step 0"):
        train(SmallCNN(1, 3, 4, 8), x, y, cfg, runtime, torch.device("cpu"), {"mean": [0.5], "std": [0.5]},
              objective, seed=0, desc="t")


def test_draws_come_from_the_cpu_generator_in_a_fixed_order():
    """Row offsets, column offsets, then the flip mask: the stream train() relies on, on any device."""
    p, n, (c, h, w) = 2, 12, (3, 5, 7)
    x = _batch(n=n, c=c, h=h, w=w, seed=8)
    out = augment_batch(x, padding=p, hflip=True, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    di = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dj = torch.randint(0, 2 * p + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    for k in range(n):
        crop = F.pad(x[k], (p, p, p, p))[:, di[k]:di[k] + h, dj[k]:dj[k] + w]
        assert torch.equal(out[k], crop.flip(-1) if flip[k] else crop)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_on_cuda_matches_cpu():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8))
    cpu = augment_batch(x, 4, True, torch.Generator().manual_seed(0))
    gpu = augment_batch(x.cuda(), 4, True, torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu, gpu.cpu())


class LazyImages:
    """A lazily decoded set as fsood.train sees one: len() and x[int64 index array] -> uint8 (n, C, H, W).
    Refuses slices and anything but a 1-D int64 array, and records every request."""

    def __init__(self, x: np.ndarray):
        self.x, self.requests = x, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, indices):
        assert isinstance(indices, np.ndarray) and indices.dtype == np.int64 and indices.ndim == 1, type(indices)
        self.requests.append(indices.copy())
        return self.x[indices].copy()


def _fit(id_x, outlier_x, seed=0):
    from fsood.methods import make_objective
    from fsood.models import SmallCNN
    from fsood.train import train

    torch.manual_seed(0)
    model = SmallCNN(1, 3, 8, 16)
    cfg = {"epochs": 2, "id_batch_size": 8, "outlier_batch_size": 12, "lr": 0.05, "lr_min": 0.0, "momentum": 0.9,
           "nesterov": True, "weight_decay": 5e-4, "augment": {"crop_padding": 1, "hflip": True}}
    sep = {"oe_weight": 0.5, "alpha": 1.0, "beta": 1.0, "detach_weight": True, "mean_over_classes": False}
    objective = make_objective("sep", sep, 1, lambda: model.fc.weight)
    y = np.arange(len(id_x)) % 3
    history = train(model, id_x, y, cfg, {"channels_last": True, "precision": "fp32"}, torch.device("cpu"),
                    {"mean": [0.5], "std": [0.25]}, objective, seed, outlier_x=outlier_x)
    return model, history


def _tiny_sets():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (37, 1, 8, 8), dtype=np.uint8), rng.integers(0, 256, (29, 1, 8, 8), dtype=np.uint8)


def test_lazy_sets_train_to_the_same_weights_as_arrays():
    x, xo = _tiny_sets()
    ref, ref_history = _fit(x, xo)
    lazy_x, lazy_xo = LazyImages(x), LazyImages(xo)
    got, history = _fit(lazy_x, lazy_xo)
    assert history == ref_history
    for key, value in ref.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key
    # one request per step and set: the ID batches of an epoch cover every image once (37 = 4 x 8 + 5)
    steps = 2 * 5
    assert len(lazy_x.requests) == len(lazy_xo.requests) == steps
    assert [len(r) for r in lazy_x.requests[:5]] == [8, 8, 8, 8, 5]
    assert sorted(np.concatenate(lazy_x.requests[:5]).tolist()) == list(range(37))
    assert all(len(r) == 12 for r in lazy_xo.requests)
    # and the weights depend on the seed (the lazy path is not ignoring the draws)
    other, _ = _fit(LazyImages(x), LazyImages(xo), seed=1)
    assert not torch.equal(other.state_dict()["fc.weight"], ref.state_dict()["fc.weight"])


def test_mixed_array_and_lazy_sets_match_too():
    x, xo = _tiny_sets()
    ref, _ = _fit(x, xo)
    got, _ = _fit(x, LazyImages(xo))
    for key, value in ref.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key


def test_forward_pass_reads_index_arrays_and_matches_the_array():
    from fsood.models import SmallCNN
    from fsood.train import forward_pass

    x, _ = _tiny_sets()
    torch.manual_seed(0)
    model = SmallCNN(1, 3, 8, 16)
    runtime = {"channels_last": False, "precision": "fp32", "eval_batch_size": 16}
    norm = {"mean": [0.5], "std": [0.25]}
    lazy = LazyImages(x)
    logits, feats = forward_pass(model, lazy, runtime, torch.device("cpu"), norm)
    ref_logits, ref_feats = forward_pass(model, x, runtime, torch.device("cpu"), norm)
    assert np.array_equal(logits, ref_logits) and np.array_equal(feats, ref_feats)
    assert logits.shape == (37, 3) and feats.shape == (37, 16)
    assert [r.tolist() for r in lazy.requests] == [list(range(16)), list(range(16, 32)), list(range(32, 37))]
    with torch.no_grad():
        model.eval()
        direct = model((torch.from_numpy(x).float() / 255 - 0.5) / 0.25)
    np.testing.assert_allclose(logits, direct.numpy(), rtol=1e-5, atol=1e-5)


def test_a_lazy_set_returning_the_wrong_thing_is_named():
    from fsood.models import SmallCNN
    from fsood.train import forward_pass

    class Floats(LazyImages):
        def __getitem__(self, indices):
            return super().__getitem__(indices).astype(np.float32)

    x, _ = _tiny_sets()
    runtime = {"channels_last": False, "precision": "fp32", "eval_batch_size": 16}
    with pytest.raises(TypeError, match=r"Floats\[indices\] must return a uint8 numpy array \(n, C, H, W\) with n=16"):
        forward_pass(SmallCNN(1, 3, 8, 16), Floats(x), runtime, torch.device("cpu"), {"mean": [0.5], "std": [0.25]})

"""The throughput benchmark's original-style baseline computes what fsood computes.

benchmarks/finetune_throughput.py compares fsood against a per-image, looped baseline;
the comparison only means something if both do the same work on the same numbers.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from fsood.losses import clustering_loss, separation_loss
from fsood.models import WideResNet
from fsood.train import augment_batch, normalizer

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "finetune_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("finetune_throughput", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def test_looped_losses_match_vectorised(bench):
    torch.manual_seed(0)
    model = WideResNet(3, 10, 10, 1, 0.0).eval()
    x = normalizer(bench.NORM, torch.device("cpu"))(torch.from_numpy(_images(12)))
    labels = torch.tensor([0, 3, 3, 9, 1, 7])
    _, z = model(x, return_features=True)
    w = model.fc.weight
    looped, vectorised = bench.looped_clustering_loss(z[:6], labels, w), clustering_loss(z[:6], labels, w)
    assert abs(looped.item() - vectorised.item()) < 1e-6
    assert -1.0 <= looped.item() <= 1.0 and abs(looped.item()) > 1e-4  # a real cosine, not a zero
    sep_looped = bench.looped_separation_loss(z[6:], w)
    sep_vec = separation_loss(z[6:], w, detach_weight=True, mean_over_classes=False)
    assert abs(sep_looped.item() - sep_vec.item()) < 1e-6
    # same gradient into the features, and none into W (detached, as fc.weight.data)
    g_loop, g_vec = (torch.autograd.grad(f, z, retain_graph=True)[0] for f in (looped, vectorised))
    assert torch.allclose(g_loop, g_vec, atol=1e-6)
    assert torch.autograd.grad(looped, w, allow_unused=True, retain_graph=True)[0] is None


def test_transform_pipelines_agree(bench):
    imgs = _images(6, seed=1)
    hwc = imgs.transpose(0, 2, 3, 1).copy()
    to_input = normalizer(bench.NORM, torch.device("cpu"))
    # without augmentation the per-image PIL pipeline and fsood's batched path are identical
    plain = bench.original_transform(padding=0, hflip=False)
    per_image = torch.stack([plain(bench.Image.fromarray(im)) for im in hwc])
    batched = to_input(torch.from_numpy(imgs))
    assert per_image.dtype == batched.dtype == torch.float32
    assert per_image.shape == batched.shape == (6, 3, 32, 32)
    assert torch.allclose(per_image, batched, atol=1e-5)
    # with crop + flip: a constant colour per channel leaves two values per channel, the
    # colour and the zero padding; both pipelines must normalise them to the same numbers
    colour = np.array([200, 50, 120], np.uint8)
    const = np.broadcast_to(colour[None, :, None, None], (8, 3, 32, 32)).copy()
    aug = bench.original_transform()
    orig = torch.stack([aug(bench.Image.fromarray(im)) for im in const.transpose(0, 2, 3, 1).copy()])
    ours = to_input(augment_batch(torch.from_numpy(const), 4, True, torch.Generator().manual_seed(0)))
    assert orig.shape == ours.shape == (8, 3, 32, 32)
    mean, std = torch.tensor(bench.NORM["mean"]), torch.tensor(bench.NORM["std"])
    for c in range(3):
        expected = torch.stack([-mean[c] / std[c], (colour[c] / 255.0 - mean[c]) / std[c]])
        for out in (orig, ours):
            values = torch.unique(out[:, c])
            assert len(values) == 2, "crop padding should show as a second value"
            assert torch.allclose(values.sort().values, expected.sort().values, atol=1e-5)


def test_one_step_baseline_run(bench):
    torch.manual_seed(0)
    hwc = _images(12, seed=2).transpose(0, 2, 3, 1).copy()
    labels = np.arange(4, dtype=np.int64)
    loaders = bench.original_loaders(hwc[:4], labels, hwc[4:], workers=0, bs_in=4, bs_out=8)
    model = WideResNet(3, 10, 10, 1, 0.3)
    before = model.fc.weight.detach().clone()
    assert bench.train_original(model, *loaders) == 12
    assert not torch.equal(before, model.fc.weight)  # one SGD step happened
    assert all(torch.isfinite(p).all() for p in model.parameters())

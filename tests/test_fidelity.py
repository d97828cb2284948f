"""Where fsood follows the authors' code or the paper's text: each choice pinned to its source.

Sources: the paper, arXiv:2405.17816v2; the authors' code,
github.com/Wuyingwen/Pursuing-Feature-Separation-for-OOD-Detection at commit
f041984a9e233fc8eac798cfe8297a7fa85e24ba ("cifar10 and cifar100/main.py",
"imagenet/imagenet_1k_finetune_ours.py" and ".sh").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsood.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")

# main.py: "mean and standard deviation of channels of CIFAR-10 images", used for CIFAR-100 as well
# (and by the OE / energy_ood code that trained the starting checkpoints).
AUTHORS_CIFAR_MEAN = np.array([125.3, 123.0, 113.9]) / 255
AUTHORS_CIFAR_STD = np.array([63.0, 62.1, 66.7]) / 255


@pytest.mark.parametrize("benchmark", ["cifar10", "cifar100", "cifar10-mini"])
def test_cifar_inputs_are_normalised_with_the_authors_cifar10_statistics(benchmark):
    norm = PARAMS["benchmarks"][benchmark]["data"]["normalize"]
    # params.yaml rounds to 4 decimals: 0.5e-4 is a rounding, CIFAR-100's own statistics are 1e-2 away
    np.testing.assert_allclose(norm["mean"], AUTHORS_CIFAR_MEAN, atol=5e-5, rtol=0)
    np.testing.assert_allclose(norm["std"], AUTHORS_CIFAR_STD, atol=5e-5, rtol=0)


# ----------------------------------------------------------------------------- the starting model

def test_every_benchmark_writes_out_its_pretraining_schedule():
    for name, bench in PARAMS["benchmarks"].items():
        pre = bench["pretrain"]
        assert pre["schedule_epochs"] >= pre["epochs"] >= 1, name
    # the shipped paper benchmarks: energy_ood's file, the last epoch of a 100-epoch schedule
    for name in ("cifar10", "cifar100"):
        pre = PARAMS["benchmarks"][name]["pretrain"]
        assert (pre["checkpoint"], pre["epochs"], pre["schedule_epochs"]) == (f"energy-ood-wrn-{name}", 100, 100)


def _tiny_run(epochs: int, schedule_epochs: int) -> list[dict]:
    from fsood.models import SmallCNN
    from fsood.train import train

    cfg = {"epochs": epochs, "schedule_epochs": schedule_epochs, "batch_size": 8, "lr": 0.1, "lr_min": 0.0,
           "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "augment": {"crop_padding": 1, "hflip": True}}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(16, 1, 8, 8), dtype=np.uint8)
    y = np.arange(16) % 3
    torch.manual_seed(0)
    model = SmallCNN(1, 3, 4, 8)
    objective = lambda logits, z, labels, epoch: (F.cross_entropy(logits, labels), {})  # noqa: E731
    return train(model, x, y, cfg, {"channels_last": False, "precision": "fp32"}, torch.device("cpu"),
                 {"mean": [0.5], "std": [0.5]}, objective, seed=0, desc="t")


def test_half_trained_start_is_the_first_half_of_the_full_schedule():
    """The text's start (epoch 100 of 200): a run stopped after `epochs` of a `schedule_epochs`
    cosine schedule is, epoch for epoch, the beginning of the full run; it ends at the
    schedule's midpoint LR, not at lr_min."""
    from fsood.train import cosine_lr

    half, full = _tiny_run(2, 4), _tiny_run(4, 4)
    assert len(half) == 2 and half == full[:2]
    steps_per_epoch = 2
    assert half[-1]["lr"] == pytest.approx(cosine_lr(2 * steps_per_epoch - 1, 4 * steps_per_epoch, 0.1, 0.0))
    annealed = _tiny_run(2, 2)[-1]["lr"]  # a 2-epoch schedule is nearly at lr_min by then
    assert annealed == pytest.approx(cosine_lr(3, 4, 0.1, 0.0)) and annealed < half[-1]["lr"] / 4


def test_a_schedule_shorter_than_the_run_is_refused():
    with pytest.raises(ValueError, match="schedule_epochs=1 is shorter than epochs=2"):
        _tiny_run(2, 1)

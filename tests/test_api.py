"""`import fsood` gives the pieces a user drops into their own code, without importing torch."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import fsood


def test_import_is_light():
    code = "import sys, fsood; fsood.ood_metrics; fsood.nc_metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("name", fsood.__all__)
def test_every_export_resolves(name):
    assert getattr(fsood, name) is not None


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fsood.nope


def test_drop_in_training_step_reduces_separation():
    """The snippet of docs/method.md: steps of Eq. 5 on a toy model push outlier features out of span(W)."""
    torch.manual_seed(0)
    model = fsood.SmallCNN(1, 3, width=8, feature_dim=16)
    criterion = fsood.FeatureSeparationLoss(oe_weight=0.5, alpha=1.0, beta=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x_in, y_in, x_out = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,)), torch.randn(32, 1, 8, 8) * 3
    seps = []
    for _ in range(40):
        logits, z = model(torch.cat([x_in, x_out]), return_features=True)
        loss, terms = criterion(logits, z, y_in, model.fc.weight, stage2=True)
        assert set(terms) == {"ce", "oe", "clu", "sep"}
        seps.append(float(terms["sep"].detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert seps[-1] < 0.5 * seps[0], seps[::8]

"""Published checkpoints load into fsood's models with the same function, and bad ones are refused."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsood.io import save_state_dict
from fsood.models import ResNet50, WideResNet, build_model, import_state, load_state


# --- the OE / energy-OOD code's WideResNet, written out from its published structure --------------
class _OEBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, drop):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop, self.equal = drop, c_in == c_out
        self.convShortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        out = self.conv2(F.dropout(out, self.drop, self.training))
        return out + (x if self.equal else self.convShortcut(act))


class _OEStage(nn.Module):
    def __init__(self, n, c_in, c_out, stride, drop):
        super().__init__()
        self.layer = nn.Sequential(*[_OEBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, drop)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class _OEWideResNet(nn.Module):
    def __init__(self, depth, num_classes, widen, drop):
        super().__init__()
        n, w = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.block1, self.block2, self.block3 = (_OEStage(n, w[0], w[1], 1, drop), _OEStage(n, w[1], w[2], 2, drop),
                                                 _OEStage(n, w[2], w[3], 2, drop))
        self.bn1, self.fc = nn.BatchNorm2d(w[3]), nn.Linear(w[3], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics, so eval mode tests them
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


@pytest.mark.parametrize("prefix", ["", "module."])  # saved plainly or from DataParallel
def test_energy_ood_wrn_checkpoint_gives_the_same_function(tmp_path, prefix):
    ref = _randomised(_OEWideResNet(16, 10, 2, 0.3))
    state = {prefix + k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "cifar10_wrn_pretrained_epoch_99.pt"
    torch.save(state, path)
    ours = load_state(WideResNet(3, 10, 16, 2, 0.3), path, arch="wrn").eval()
    x = torch.randn(6, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_torchvision_resnet50_checkpoint_maps_onto_backbone_and_fc(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    ref = resnet50(weights=None, num_classes=7).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    ours = load_state(ResNet50(3, 7), path, arch="resnet50").eval()
    x = torch.randn(2, 3, 64, 64)
    logits, z = ours(x, return_features=True)
    assert z.shape == (2, 2048)
    torch.testing.assert_close(logits, ref(x), rtol=1e-4, atol=1e-4)


def test_fsood_checkpoints_pass_through_import_unchanged():
    model = build_model({"arch": "wrn", "depth": 10, "widen": 1, "dropout": 0.0}, 3, 10)
    state = model.state_dict()
    assert import_state("wrn", state) == state


@pytest.mark.trust(kind="bad_checkpoints")
def test_checkpoint_of_another_class_count_is_refused_by_name(tmp_path):
    path = tmp_path / "model.pt"
    save_state_dict(path, WideResNet(3, 100, 10, 1, 0.0).state_dict())
    with pytest.raises(ValueError, match=r"(?s)does not fit the model \(wrn, 10 classes\).*size mismatch for fc.weight"):
        load_state(WideResNet(3, 10, 10, 1, 0.0), path, expect="(wrn, 10 classes)")


@pytest.mark.trust(kind="bad_checkpoints")
def test_checkpoint_that_is_not_a_plain_state_dict_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(WideResNet(3, 10, 10, 1, 0.0), path)  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_state(WideResNet(3, 10, 10, 1, 0.0), path)

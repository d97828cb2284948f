"""Classifiers with an exposed penultimate feature z and last layer ``fc`` (W, b).

``model(x)`` returns logits; ``model(x, return_features=True)`` returns (logits, z),
which is all the losses and scores need.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsood.compact_net import CompactNet


class FeatureClassifier(nn.Module):
    """Backbone -> z -> fc. Subclasses define ``self.backbone`` and ``self.fc``."""

    backbone: nn.Module
    fc: nn.Linear

    def forward(self, x: Tensor, return_features: bool = False):
        z = self.backbone(x)
        logits = self.fc(z)
        return (logits, z) if return_features else logits


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(FeatureClassifier):
    """Four 3x3 conv layers, one 2x pooling, global average pooling: for 8x8 to 32x32 inputs."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        self.backbone = nn.Sequential(
            *_conv_bn(in_channels, width),
            *_conv_bn(width, width),
            nn.MaxPool2d(2),
            *_conv_bn(width, 2 * width),
            *_conv_bn(2 * width, feature_dim),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.fc = nn.Linear(feature_dim, num_classes)


class _WideBlock(nn.Module):
    """Pre-activation basic block of WRN (Zagoruyko & Komodakis 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None if c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + residual


class WideResNet(FeatureClassifier):
    """WRN-depth-widen as in the OE / energy-OOD code (WRN-40-2: 128-d features)."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 40, widen: int = 2, dropout: float = 0.3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for stage, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                c_in = widths[stage] if i == 0 else widths[stage + 1]
                layers.append(_WideBlock(c_in, widths[stage + 1], stride if i == 0 else 1, dropout))
        layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.backbone = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[3], num_classes)


class ResNet50(FeatureClassifier):
    """torchvision's ResNet-50 (the paper's ImageNet model): 2048-d features before ``fc``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        from torchvision.models import resnet50

        if in_channels != 3:
            raise ValueError(f"resnet50 takes 3 input channels, got {in_channels}")
        net = resnet50(weights=None)
        self.fc = nn.Linear(net.fc.in_features, num_classes)
        net.fc = nn.Sequential(nn.Dropout(dropout)) if dropout else nn.Identity()
        self.backbone = net


ARCHS = ("small_cnn", "wrn", "resnet50", "compact")


def build_model(cfg: dict, in_channels: int, num_classes: int) -> FeatureClassifier:
    """Model from a params ``model`` section: ``{arch: small_cnn|wrn|resnet50|compact, ...}``."""
    arch = cfg["arch"]
    if arch == "small_cnn":
        return SmallCNN(in_channels, num_classes, cfg["width"], cfg["feature_dim"], cfg["dropout"])
    if arch == "wrn":
        return WideResNet(in_channels, num_classes, cfg["depth"], cfg["widen"], cfg["dropout"])
    if arch == "resnet50":
        return ResNet50(in_channels, num_classes, cfg["dropout"])
    if arch == "compact":
        return CompactNet(in_channels, num_classes, tuple(cfg["widths"]), cfg["flip_average"])
    raise ValueError(f"unknown model arch {arch!r}; valid: {list(ARCHS)}")


def import_state(arch: str, state: dict) -> dict:
    """A published checkpoint's state dict, renamed to fsood's module names.

    * ``wrn``: the OE / energy-OOD code's WideResNet (``conv1``, ``block{1,2,3}.layer.{i}.{bn1,
      conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``), saved with or without DataParallel's
      ``module.`` prefix. Checkpoints from torch < 0.4.1 lack ``num_batches_tracked``: set to 0.
    * ``resnet50``: torchvision's names (``conv1`` ... ``layer4``, ``fc``).
    fsood's own checkpoints pass through unchanged.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        return state  # already fsood's names
    if arch == "resnet50":
        return {k if k.startswith("fc.") else f"backbone.{k}": v for k, v in state.items()}
    if arch != "wrn":
        raise ValueError(f"no checkpoint import for arch {arch!r}")
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("block1.layer.")})
    n = len(blocks)
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "conv1":
            out[f"backbone.0.{parts[1]}"] = value
        elif parts[0] in ("block1", "block2", "block3"):
            stage, i = int(parts[0][-1]) - 1, int(parts[2])
            name = {"convShortcut": "shortcut"}.get(parts[3], parts[3])
            out[".".join(["backbone", str(1 + stage * n + i), name, *parts[4:]])] = value
        elif parts[0] == "bn1":
            out[f"backbone.{1 + 3 * n}.{parts[1]}"] = value
        elif parts[0] == "fc":
            out[key] = value
        else:
            raise ValueError(f"unexpected key {key!r} in a WideResNet checkpoint")
    for key in [k for k in out if k.endswith(".running_var")]:
        out.setdefault(key.replace("running_var", "num_batches_tracked"), torch.tensor(0))
    return out


def load_state(model: nn.Module, path, expect: str = "", arch: str | None = None) -> nn.Module:
    """Load a plain state dict (``weights_only=True``) and name what does not fit.

    ``arch`` renames a published checkpoint's keys first (``import_state``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or file unreadable
        raise ValueError(f"{path}: not a plain state dict checkpoint ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a plain state dict checkpoint (a {type(state).__name__} of non-tensors)")
    if arch is not None:
        state = import_state(arch, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: checkpoint does not fit the model {expect}: {err}") from err
    return model

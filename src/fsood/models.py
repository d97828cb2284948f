"""Classifiers with an exposed penultimate feature z and last layer ``fc`` (W, b).

``model(x)`` returns logits; ``model(x, return_features=True)`` returns (logits, z),
which is all the losses and scores need.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def build_model(cfg: dict, in_channels: int, num_classes: int) -> FeatureClassifier:
    """Model from a params ``model`` section: ``{arch: small_cnn|wrn, ...}``."""
    arch = cfg["arch"]
    if arch == "small_cnn":
        return SmallCNN(in_channels, num_classes, cfg["width"], cfg["feature_dim"], cfg["dropout"])
    if arch == "wrn":
        return WideResNet(in_channels, num_classes, cfg["depth"], cfg["widen"], cfg["dropout"])
    raise ValueError(f"unknown model arch {arch!r}; valid: ['small_cnn', 'wrn']")


def load_state(model: nn.Module, path, expect: str = "") -> nn.Module:
    """Load a plain state dict (``weights_only=True``) and name what does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or file unreadable
        raise ValueError(f"{path}: not a plain state dict checkpoint ({err})") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: checkpoint does not fit the model {expect}: {err}") from err
    return model

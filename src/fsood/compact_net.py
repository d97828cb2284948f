"""A compact CIFAR net that converges in few CPU-minutes: airbench's architecture, with a plain linear head.

After Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU" (arXiv:2404.00498), code
https://github.com/KellerJordan/cifar10-airbench at commit f1c599c4af24aca803e3e65a6a7e52a502e09d0e
(``legacy/airbench94.py``; ``airbench/lib_airbench93.py`` for the 64-128-128 widths):

* a frozen 2x2 patch-whitening convolution (:func:`init_whitening`) and GELU;
* three groups of conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU;
* global max pooling, times 1/9 (airbench's ``scaling_factor``), then ``fc``.

``flip_average``: in eval mode z is the mean of the features of the image and its mirror image
(airbench's test-time flip, on z). What the method needs stays as in every fsood model: ``z`` is the pooled feature and ``fc`` an
``nn.Linear`` with bias on it, trained with cross-entropy. airbench puts the 1/9 after a bias-free
head; here it scales z before the head, the same logits when the bias is zero, and the cosines
cos(z, w_i) of the losses and the score do not see a scale of z at all. BatchNorm as airbench's:
eps 1e-12, the scale gamma frozen at 1 (only beta trains), running statistics with momentum 0.4
(airbench's "0.6" is the decay of the old value). Convolutions start with a Dirac identity on
their first ``in_channels`` filters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4  # added to the patch covariance's eigenvalues (airbench's init_whitening_conv)
FEATURE_SCALE = 1 / 9  # airbench's scaling_factor
BN_MOMENTUM = 0.4  # torch's momentum: weight of the new batch statistics (airbench: 1 - 0.6)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])  # identity on the first filters (airbench's Conv)
    return conv


def _norm(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-12, momentum=BN_MOMENTUM)
    bn.weight.requires_grad_(False)  # gamma stays 1: only the shift beta trains
    return bn


class _Group(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1, self.norm1 = _conv(c_in, c_out), _norm(c_out)
        self.conv2, self.norm2 = _conv(c_out, c_out), _norm(c_out)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class _Backbone(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, int, int]):
        super().__init__()
        self.whiten = nn.Conv2d(in_channels, 2 * in_channels * WHITEN_KERNEL ** 2, WHITEN_KERNEL)
        self.whiten.weight.requires_grad_(False)  # set from the data (init_whitening), then fixed
        nn.init.zeros_(self.whiten.bias)
        c = self.whiten.out_channels
        self.groups = nn.Sequential(*(_Group(a, b) for a, b in zip((c, *widths[:-1]), widths)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        return torch.amax(x, dim=(2, 3)) * FEATURE_SCALE


def patch_whitening(images: Tensor, kernel: int = WHITEN_KERNEL, eps: float = WHITEN_EPS) -> Tensor:
    """Filters (2k, C, kernel, kernel) that whiten the images' kernel x kernel patches, and their negatives.

    Eigen-decompose the (uncentred) covariance S = P^T P / n of all patches P (n, C*k*k); filter i
    is eigenvector v_i / sqrt(lambda_i + eps), largest eigenvalue first. The first half of the
    outputs, v_i . p / sqrt(lambda_i + eps), then has second moment lambda_i / (lambda_i + eps), close
    to the identity; the negated half lets the GELU after it pass both signs.
    """
    c = images.shape[1]
    patches = images.float().unfold(2, kernel, 1).unfold(3, kernel, 1)  # (N, C, H', W', k, k)
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel * kernel)
    cov = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    order = eigenvalues.argsort(descending=True)
    filters = (eigenvectors[:, order] / torch.sqrt(eigenvalues[order] + eps)).T
    filters = filters.reshape(-1, c, kernel, kernel)
    return torch.cat([filters, -filters])


class CompactNet(nn.Module):
    """airbench's net (widths per conv group) with z = pooled features / 9 and a linear head."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256),
                 flip_average: bool = False):
        super().__init__()
        self.backbone = _Backbone(in_channels, tuple(widths))
        self.fc = nn.Linear(widths[-1], num_classes)
        nn.init.zeros_(self.fc.bias)
        self.flip_average = flip_average

    def forward(self, x: Tensor, return_features: bool = False):
        z = self.backbone(x)
        if self.flip_average and not self.training:
            # airbench's test-time flip (tta_level 1) taken on z: the head is linear, so fc(mean z) is the
            # mean of the two logits, and z stays the one feature the losses and scores see
            z = 0.5 * (z + self.backbone(x.flip(-1)))
        logits = self.fc(z)
        return (logits, z) if return_features else logits

    @torch.no_grad()
    def init_whitening(self, images: Tensor) -> None:
        """Set the first layer to whiten ``images``' patches (normalised model inputs, N x C x H x W)."""
        self.backbone.whiten.weight.copy_(patch_whitening(images))

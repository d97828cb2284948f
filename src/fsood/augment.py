"""Batch augmentation on the training device: random crop (translation) and horizontal flip.

The crop pads each image by ``crop_padding`` pixels on every side, with zeros (the OE / energy-OOD
code's ``RandomCrop(32, padding=4)``) or by reflection (airbench's translate, ``padding_mode:
reflect``), and takes a window of the original size at a drawn offset.

The random numbers are drawn on the CPU from the run's generator (:func:`draw_augment`), so a seed
gives the same crops and flips on any device and on every data-parallel rank; :func:`apply_augment`
then transforms the whole batch at once (no per-image Python).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


PADDING_MODES = ("zeros", "reflect")


class AugmentDraws(NamedTuple):
    """Per-image random numbers of one batch (CPU tensors; None where the transform is off)."""

    rows: Tensor | None  # crop offsets, 0..2*padding
    cols: Tensor | None
    flip: Tensor | None  # bool

    def take(self, which: Tensor) -> AugmentDraws:
        """The draws of the images ``which`` (a rank's shard of the global batch)."""
        return AugmentDraws(*(None if t is None else t[which] for t in self))


def draw_augment(n: int, padding: int, hflip: bool, generator: torch.Generator) -> AugmentDraws:
    """Row offsets, column offsets, then the flip mask, from ``generator`` (a CPU generator), in that order."""
    rows = cols = flip = None
    if padding:
        rows = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        cols = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
    return AugmentDraws(rows, cols, flip)


def _reflect(index: Tensor, size: int) -> Tensor:
    """Positions of a reflect-padded axis in the unpadded one: -1 -> 1, size -> size - 2 (``F.pad``'s
    'reflect', which mirrors about the edge pixel without repeating it)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def apply_augment(x: Tensor, draws: AugmentDraws, padding: int, mode: str = "zeros") -> Tensor:
    """Random crop (zero or reflect padding, ``mode``) and horizontal flip of a whole batch, as ``draws`` say.

    The drawn numbers move to ``x.device``. ``non_blocking``: a blocking copy would wait for all
    queued GPU work, and this one is safe (CUDA stages a pageable source before returning;
    nothing writes to it anyway).
    """
    n, c, h, w = x.shape
    dev = x.device
    if padding:
        if mode not in PADDING_MODES:
            raise ValueError(f"augment.padding_mode {mode!r} is not one of {list(PADDING_MODES)}")
        if mode == "reflect" and padding >= min(h, w):
            raise ValueError(f"reflect padding of {padding} pixels needs images larger than that; got {h}x{w}")
        di = draws.rows.to(dev, non_blocking=True)
        dj = draws.cols.to(dev, non_blocking=True)
        rows = di[:, None] + torch.arange(h, device=dev)
        cols = dj[:, None] + torch.arange(w, device=dev)
        if mode == "zeros":
            source = F.pad(x, (padding, padding, padding, padding))
        else:  # index the unpadded batch at the mirrored positions: no padded copy
            source, rows, cols = x, _reflect(rows - padding, h), _reflect(cols - padding, w)
        x = source[torch.arange(n, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    if draws.flip is not None:
        flip = draws.flip.to(dev, non_blocking=True)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def augment_batch(x: Tensor, padding: int, hflip: bool, generator: torch.Generator, mode: str = "zeros") -> Tensor:
    """Random crop (zero or reflect padding) and horizontal flip, for a whole batch at once.

    The draws come from ``generator`` (a CPU generator) whatever ``x.device`` is, so a run
    draws the same numbers on any device.
    """
    return apply_augment(x, draw_augment(len(x), padding, hflip, generator), padding, mode)

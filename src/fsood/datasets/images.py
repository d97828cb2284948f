"""Decoding archive members into uint8 (3, H, W) arrays, the way torchvision's PIL path would."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .errors import DatasetError


def resize_center_crop(img: Image.Image, size: int, resize: int | None = None) -> Image.Image:
    """torchvision ``Resize(resize or size)`` (shorter side, bilinear) then ``CenterCrop(size)``, on PIL.

    ``resize=256, size=224`` is the ImageNet evaluation transform; ``resize=None`` the CIFAR one.
    """
    resize = resize or size
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if min(w, h) != resize:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(resize * long / short)  # torchvision truncates
        img = img.resize((resize, new_long) if w <= h else (new_long, resize), Image.BILINEAR)
        w, h = img.size
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # as torchvision
    return img.crop((left, top, left + size, top + size))


def decode(data: bytes, name: str, size: int, resize: bool | int = False) -> np.ndarray:
    """One encoded image -> uint8 (3, size, size). Without ``resize`` the size must already match;
    ``resize=True`` is Resize(size) + CenterCrop(size), an int ``r`` Resize(r) + CenterCrop(size)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")  # forces the decode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{name}: image failed to decode ({err})") from err
    if resize is not False:
        img = resize_center_crop(img, size, None if resize is True else resize)
    if img.size != (size, size):
        raise DatasetError(f"{name}: image is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_all(items: list[tuple[str, bytes]], size: int, resize: bool | int = False, desc: str = "decode") -> np.ndarray:
    """Decode ``(name, bytes)`` pairs into one (N, 3, size, size) array, with a progress bar."""
    from tqdm import tqdm

    out = np.empty((len(items), 3, size, size), dtype=np.uint8)
    for i, (name, data) in enumerate(tqdm(items, desc=desc, unit="img", mininterval=2.0, disable=True if len(items) < 1000 else None)):
        out[i] = decode(data, name, size, resize)
    return out

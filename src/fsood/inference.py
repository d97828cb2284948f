"""Inference: logits and penultimate features of a whole image set (the subspace and score stages).

An image set is a uint8 numpy array (N, C, H, W) or a lazily decoded set (ImageNet; :class:`ImageSet`)
read batch by batch on the host.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from fsood import runtime as rt


class ImageSet(Protocol):
    """A lazily decoded image set: ``x[indices]`` (int64 numpy array) -> uint8 numpy (n, C, H, W)."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


class _Take:
    """Rows ``indices`` of a lazily decoded set, itself lazy."""

    def __init__(self, x: ImageSet, indices: np.ndarray):
        self.x, self.indices = x, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.x[self.indices[rows]]


def take(x: np.ndarray | ImageSet, indices: np.ndarray) -> np.ndarray | ImageSet:
    """Rows ``indices`` of an image set: an array's copy, or a lazy set's lazy view."""
    return x[indices] if isinstance(x, np.ndarray) else _Take(x, indices)


def normalizer(norm: dict, device: torch.device) -> Callable[[Tensor], Tensor]:
    """uint8 (N, C, H, W) -> float, scaled to [0, 1] then standardised per channel."""
    mean = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    return lambda x: (x.float() / 255.0 - mean) / std


def host_rows(x: np.ndarray | ImageSet, indices: np.ndarray, pin: bool = False) -> Tensor:
    """Rows ``indices`` of an image set as a CPU uint8 tensor; pinned for an asynchronous copy to a GPU."""
    rows = x[indices]
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and rows.ndim == 4 and len(rows) == len(indices)):
        raise TypeError(
            f"{type(x).__name__}[indices] must return a uint8 numpy array (n, C, H, W) with n={len(indices)}; "
            f"got {type(rows).__name__} {getattr(rows, 'dtype', '')} {getattr(rows, 'shape', '')}"
        )
    batch = torch.from_numpy(np.ascontiguousarray(rows))
    return batch.pin_memory() if pin else batch


@torch.no_grad()
def forward_pass(
    model: torch.nn.Module, x: np.ndarray | ImageSet, runtime: dict, device: torch.device, norm: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of a whole set (eval mode), as float32 numpy.

    Batches are read as ``x[np.arange(start, stop)]`` (arrays and lazy sets alike), one batch ahead
    in a background thread, and copied to the device from pinned memory on a GPU.
    """
    model.eval()
    to_input = normalizer(norm, device)
    size, pin = runtime["eval_batch_size"], device.type == "cuda"
    starts = list(range(0, len(x), size))

    def fetch(start: int) -> Tensor:
        return host_rows(x, np.arange(start, min(start + size, len(x))), pin)

    logits, feats = [], []
    with ThreadPoolExecutor(1, thread_name_prefix="fsood-prefetch") as prefetch:
        pending = prefetch.submit(fetch, starts[0]) if starts else None
        for k in range(len(starts)):
            host = pending.result()
            if k + 1 < len(starts):
                pending = prefetch.submit(fetch, starts[k + 1])
            batch = to_input(host.to(device, non_blocking=True))
            if rt.channels_last(runtime):
                batch = batch.contiguous(memory_format=torch.channels_last)
            with rt.autocast(runtime, device):
                out, z = model(batch, return_features=True)
            logits.append(out.float().cpu().numpy())
            feats.append(z.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(feats)

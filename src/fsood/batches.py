"""Training batches: index slices of a seeded permutation, fetched one step ahead.

A numpy set moves to the training device once and is indexed there; a lazy set (:class:`ImageSet`)
is indexed on the host, batch by batch, in a background thread. With several processes
(fsood.distributed) each rank takes its shard of every global batch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fsood import distributed as dist
from fsood.inference import ImageSet, host_rows


class Rows:
    """Where a training set's images come from: a numpy array moves to the device once and is
    indexed there; a lazy set is indexed on the host, batch by batch, and copied over."""

    def __init__(self, x: np.ndarray | ImageSet, device: torch.device):
        self.lazy = not isinstance(x, np.ndarray)
        self.x = x if self.lazy else torch.from_numpy(x).to(device)
        self.device = device
        self.pin = device.type == "cuda"

    def __len__(self) -> int:
        return len(self.x)

    def host(self, idx: Tensor) -> Tensor | None:
        """Host part of a fetch (runs in the prefetch thread): lazy sets only."""
        return host_rows(self.x, idx.numpy(), self.pin) if self.lazy else None

    def device_rows(self, idx: Tensor, host: Tensor | None) -> Tensor:
        """The batch on the device: the prefetched host rows copied over, or the array indexed there."""
        if self.lazy:
            return host.to(self.device, non_blocking=True)
        return self.x[idx.to(self.device, non_blocking=True)]  # a no-op copy when idx is there already


def fetch_step(i: int, perm: Tensor, perm_out: Tensor | None, xs: Rows, xo: Rows | None, bs_in: int, bs_out: int,
           ctx: dist.Context) -> tuple[int, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Step i of an epoch, up to what needs the device: the global ID batch size, this rank's ID and
    outlier indices, and their host rows for lazy sets. Draws nothing: it runs one step ahead, in the
    prefetch thread, and the stream of random numbers stays the main loop's."""
    idx = perm[i * bs_in:(i + 1) * bs_in]
    n_global, idx = len(idx), dist.shard(idx, ctx)
    oidx = None
    if xo is not None:  # cycle through the outliers when they run out
        oidx = dist.shard(perm_out[(torch.arange(bs_out) + i * bs_out) % len(xo)], ctx)
    return n_global, idx, oidx, xs.host(idx), None if xo is None else xo.host(oidx)


def check_shards(cfg: dict, processes: int, outliers: bool = True) -> None:
    """Refuse a batch too small to give every one of ``processes`` ranks at least one image of each part."""
    sizes = {"id_batch_size": cfg["id_batch_size"], "outlier_batch_size": cfg["outlier_batch_size"]} \
        if outliers else {"batch_size": cfg["batch_size"]}
    for key, size in sizes.items():
        if size < processes:
            raise ValueError(f"{key}={size} is smaller than processes={processes}: every data-parallel rank "
                             "needs at least one image of each batch")

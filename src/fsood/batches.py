"""Training batches: index slices of seeded permutations, fetched one step ahead.

The run's batches are fixed at its start (:func:`plan_batches`) from a generator of their own, seeded
by the run's seed, so a resumed run plans the same batches without saving them. An epoch is one pass
over the set (a permutation, its last batch smaller), or, with ``steps_per_epoch``, that many full
batches of a stream of permutations that continues from epoch to epoch: every image is seen once
before any is seen twice, whatever the epoch length (fine-tuning at CPU scale takes a few hundred
steps over all 50,000 CIFAR-10 images, not many epochs over a subset). Outliers are one such stream
over the whole run, ``outlier_batch_size`` a step.

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


STREAM_KEYS = {"id": 1, "outliers": 2, "flip": 3}  # the batch plan's generators: SeedSequence([seed, key])


def stream_generator(seed: int, which: str) -> torch.Generator:
    """The generator of one index stream of a run (``id`` or ``outliers``), apart from the run's own, whose
    draws (augmentation) stay as they are whatever the batch plan."""
    state = int(np.random.SeedSequence([seed, STREAM_KEYS[which]]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


def index_stream(n: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` indices into a set of ``n``: permutations one after another, cut at ``count``."""
    perms = [torch.randperm(n, generator=generator) for _ in range(-(-count // n))]
    return torch.cat(perms)[:count] if perms else torch.zeros(0, dtype=torch.int64)


def plan_batches(n: int, batch_size: int, epochs: int, steps_per_epoch: int | None, generator: torch.Generator,
                 world_size: int = 1) -> list[list[Tensor]]:
    """The ID batches of every epoch (global indices). ``steps_per_epoch`` None: one permutation an epoch
    and a last, smaller batch, skipped when it has fewer images than ranks (one rank would have none).
    Otherwise ``steps_per_epoch`` full batches an epoch from one stream over the whole run."""
    if steps_per_epoch is None:
        plan = []
        for _ in range(epochs):
            batches = list(torch.randperm(n, generator=generator).split(batch_size))
            if batches and len(batches[-1]) < world_size:
                batches.pop()
            plan.append(batches)
        return plan
    stream = index_stream(n, epochs * steps_per_epoch * batch_size, generator)
    return [list(epoch) for epoch in stream.view(epochs, steps_per_epoch, batch_size)]


def fetch_step(idx: Tensor, oidx: Tensor | None, xs: Rows, xo: Rows | None,
               ctx: dist.Context) -> tuple[int, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One step's global ID and outlier indices, up to what needs the device: the global ID batch size, this
    rank's ID and outlier indices, and their host rows for lazy sets. Draws nothing: it runs one step
    ahead, in the prefetch thread."""
    n_global, idx = len(idx), dist.shard(idx, ctx)
    oidx = None if oidx is None else dist.shard(oidx, ctx)
    return n_global, idx, oidx, xs.host(idx), None if xo is None else xo.host(oidx)


def check_shards(cfg: dict, processes: int, outliers: bool = True) -> None:
    """Refuse a batch too small to give every one of ``processes`` ranks at least one image of each part."""
    sizes = {"id_batch_size": cfg["id_batch_size"], "outlier_batch_size": cfg["outlier_batch_size"]} \
        if outliers else {"batch_size": cfg["batch_size"]}
    for key, size in sizes.items():
        if size < processes:
            raise ValueError(f"{key}={size} is smaller than processes={processes}: every data-parallel rank "
                             "needs at least one image of each batch")

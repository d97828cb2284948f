"""Data-parallel fine-tuning on one node: ranks, how the workers start, and the collectives train() needs.

Two ways in, the same semantics:

- ``python -m fsood finetune ...`` with ``benchmarks.B.finetune.processes > 1`` (what Snakemake and DVC
  run): :func:`launch` spawns the workers itself (``torch.multiprocessing.spawn``); they meet through a
  TCPStore that the launching process hosts on a free 127.0.0.1 port (the OS picks it: no race).
- ``torchrun --nproc-per-node N -m fsood finetune ...``: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
  MASTER_PORT are in the environment; :func:`from_environment` reads them and nothing is spawned again.

What data parallelism means here (``fsood.train.train``): the global batch stays ``id_batch_size +
outlier_batch_size``. Every rank draws the same global permutation and the same augmentation numbers from
the shared seed and takes the strided shard ``rank::world`` of the batch's ID part and of its outlier part
(:func:`shard`). DistributedDataParallel averages the gradients of the per-rank means, which is the
single-process gradient whenever each part splits evenly. BatchNorm is the exception: its batch statistics
are per rank, over the rank's shard (no SyncBatchNorm; the authors' scripts train on one GPU, where they
cover the whole batch, so with several ranks this is the one departure). DDP broadcasts rank 0's running
statistics at every forward, and :func:`broadcast_buffers` does it once more at the end, so every rank holds
the checkpoint rank 0 writes.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

BACKENDS = ("nccl", "gloo", "auto")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Context:
    """Where this process stands in its group. ``store``: the launcher's TCPStore (None: ``env://``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    store: object | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Context()


def from_environment() -> Context | None:
    """The Context a launcher such as torchrun gave this process (RANK, WORLD_SIZE); None if none did."""
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        return None
    values = {}
    for key, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", os.environ.get("RANK"))):
        raw = os.environ.get(key, default)
        try:
            values[key] = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"environment variable {key}={raw!r} is not an integer (set by the launcher, "
                             "e.g. torchrun; RANK and WORLD_SIZE must both be set)") from None
    rank, world = values["RANK"], values["WORLD_SIZE"]
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return Context(rank, world, values["LOCAL_RANK"])


def resolve_backend(name: str, device: torch.device) -> str:
    """``runtime.ddp_backend``: nccl | gloo | auto (nccl on CUDA, gloo on the CPU)."""
    if name not in BACKENDS:
        raise ValueError(f"runtime.ddp_backend {name!r} is not known; valid: {list(BACKENDS)}")
    if name == "auto":
        name = "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ValueError(f"runtime.ddp_backend 'nccl' needs CUDA, but training runs on {device.type!r}; "
                         "use 'gloo' or 'auto'")
    available = {"nccl": dist.is_nccl_available, "gloo": dist.is_gloo_available}[name]
    if not (dist.is_available() and available()):
        raise RuntimeError(f"runtime.ddp_backend {name!r}: this torch build has no {name} support")
    return name


@contextlib.contextmanager
def process_group(ctx: Context, backend: str, device: torch.device):
    """Join the default process group for the block (nothing to do for a single process)."""
    if not ctx.distributed:
        yield
        return
    kwargs: dict = {"backend": backend, "rank": ctx.rank, "world_size": ctx.world_size}
    if ctx.store is not None:
        kwargs["store"] = ctx.store
    else:
        kwargs["init_method"] = "env://"
    if backend == "nccl":
        kwargs["device_id"] = device  # binds NCCL to this rank's GPU (cuda:LOCAL_RANK, see runtime.configure)
    dist.init_process_group(**kwargs)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(rows: Tensor, ctx: Context) -> Tensor:
    """This rank's part of a global batch: the strided shard ``rank::world`` (sizes differ by at most 1)."""
    return rows[ctx.rank::ctx.world_size]


def wrap(model: torch.nn.Module, ctx: Context, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (which keeps its own ``fc``); the model itself if alone."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def all_reduce_sum(values: list[float], ctx: Context, device: torch.device) -> list[float]:
    """Sum a list of numbers over the ranks (float64; on ``device``, where NCCL needs it)."""
    if not ctx.distributed:
        return list(values)
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return buf.tolist()


def broadcast_buffers(model: torch.nn.Module, ctx: Context) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). Parameters are left alone: their
    equality across ranks is what the averaged gradients guarantee (tests/test_ddp.py checks it)."""
    if ctx.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def quiet_other_ranks(ctx: Context) -> None:
    """Ranks other than 0 log warnings and errors to the console only, and write no log file."""
    if ctx.is_main:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        else:
            handler.setLevel(max(handler.level, logging.WARNING))


# --- self-launch (python -m fsood finetune with processes > 1) ------------------------------------


def launch(fn: Callable[..., None], args: tuple, processes: int) -> None:
    """Run ``fn(ctx, *args)`` in ``processes`` new processes on this node and wait for all of them.

    ``fn`` must be importable by name (a module-level function). Rank 0 appends to this process's log
    files; a worker's exception comes back as a RuntimeError naming its rank and the error.
    """
    import torch.multiprocessing as mp

    if processes < 2:
        raise ValueError(f"launch() is for 2 or more processes, got {processes}")
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False)  # port 0: the OS picks a free one
    spec = _logging_spec()
    _append_from_now_on()
    log.info("launching %d workers (rendezvous %s:%d)", processes, HOST, store.port)
    try:
        mp.spawn(_worker, args=(processes, store.port, spec, fn, args), nprocs=processes, join=True)
    except mp.ProcessRaisedException as err:
        last = [line for line in str(err).strip().splitlines() if line.strip()][-1]
        raise RuntimeError(f"worker rank {err.error_index} of {processes} failed: {last.strip()}") from None
    except mp.ProcessExitedException as err:
        raise RuntimeError(f"worker rank {err.error_index} of {processes} died (exit code {err.exit_code}, "
                           f"signal {err.signal_name})") from None


def _worker(local_rank: int, world: int, port: int, spec: tuple, fn: Callable[..., None], args: tuple) -> None:
    _setup_worker_logging(spec, local_rank)
    store = dist.TCPStore(HOST, port, is_master=False)
    ctx = Context(local_rank, world, local_rank, store)
    try:
        fn(ctx, *args)
    except Exception:
        log.exception("rank %d of %d failed", ctx.rank, world)
        raise


def _logging_spec() -> tuple[int, list[tuple[str, str | None, int, str | None]]]:
    """The root logger's level and handlers as (kind, file, level, format), for the spawned workers."""
    root = logging.getLogger()
    handlers = []
    for h in root.handlers:
        fmt = h.formatter._fmt if h.formatter else None
        if isinstance(h, logging.FileHandler):
            handlers.append(("file", h.baseFilename, h.level, fmt))
        elif isinstance(h, logging.StreamHandler):
            handlers.append(("console", None, h.level, fmt))
    return root.level, handlers


def _append_from_now_on() -> None:
    """Close this process's log files; the next record reopens them for appending. Opened with mode 'w',
    a file would keep its old write position and overwrite what rank 0 appends meanwhile."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                if h.stream is not None:
                    h.stream.flush()
                    h.stream.close()
                    h.stream = None
                h.mode = "a"
            finally:
                h.release()


def _setup_worker_logging(spec: tuple, rank: int) -> None:
    level, handlers = spec
    made: list[logging.Handler] = []
    for kind, path, hlevel, fmt in handlers:
        if kind == "file":
            if rank != 0:
                continue
            h: logging.Handler = logging.FileHandler(path, mode="a")
        else:
            h = logging.StreamHandler()
            hlevel = hlevel if rank == 0 else max(hlevel, logging.WARNING)
        h.setLevel(hlevel)
        if fmt:
            h.setFormatter(logging.Formatter(fmt))
        made.append(h)
    logging.basicConfig(level=level, handlers=made, force=True)


__all__ = ["BACKENDS", "Context", "SINGLE", "all_reduce_sum", "broadcast_buffers", "from_environment", "launch",
           "process_group", "quiet_other_ranks", "resolve_backend", "shard", "wrap"]

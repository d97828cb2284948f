"""Training loops for pretraining (CE) and fine-tuning with auxiliary outliers.

An image set is either a uint8 numpy array (N, C, H, W), which moves to the training device once,
or a lazily decoded set (ImageNet; :class:`ImageSet`) indexed on the host batch by batch, while one
background thread prefetches the next batch. Batches are index slices of a seeded permutation;
augmentation runs on whole batches on the device (no per-image Python, no DataLoader workers).
With several processes (fsood.distributed) each rank trains on its shard of every global batch.
A run given a :class:`Resume` saves its whole state after every epoch and, restarted after a crash or a
SIGKILL, continues from the last saved epoch to the same bytes as a run that was never interrupted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from fsood import distributed as dist
from fsood import runtime as rt
from fsood.io import file_sha256
from fsood.losses import cosine_to_classes

log = logging.getLogger(__name__)

# objective(logits, z, labels, epoch) -> (total loss, {term: value})
Objective = Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, dict[str, Tensor]]]


class ImageSet(Protocol):
    """A lazily decoded image set: ``x[indices]`` (int64 numpy array) -> uint8 numpy (n, C, H, W)."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


class NonFiniteLoss(FloatingPointError):
    pass


RESUME_DIR = ".fsood/resume"  # outside every DVC output and dependency (gitignored, dvcignored)
RESUME_FORMAT = 1


class Resume:
    """A training run's resume checkpoint: where it lives and what it was made for.

    ``key`` fingerprints everything that decides the run's result (the cell, its params, the
    hashes of its input files, the torch version): a file with another key belongs to another run
    and is never resumed from. :func:`train` writes the file after every epoch (rank 0, atomically)
    and reads it on start; the stage calls :meth:`clear` once its outputs are written.
    """

    def __init__(self, path: str | Path, key: str):
        self.path, self.key = Path(path), key

    @classmethod
    def for_job(cls, stage: str, params: dict, extra: dict | None = None, **wildcards) -> Resume:
        """``.fsood/resume/<stage>-<cell>.pt`` (e.g. ``finetune-digits-sep-0.pt``), keyed by what the stage's
        contract (fsood.contract) says decides its outputs: its declared params and the sha256 of its
        input files, plus ``extra`` (the number of ranks), the torch version and the file format."""
        from fsood import contract

        spec = contract.stage(stage)
        inputs = [p for paths in contract.input_paths(spec, params, tracked=True, **wildcards).values() for p in paths]
        fingerprint = {"stage": stage, "cell": wildcards, "settings": spec.param_values(params, **wildcards),
                       "extra": extra or {}, "torch": torch.__version__, "format": RESUME_FORMAT,
                       "inputs": {str(p): file_sha256(p) for p in inputs}}
        key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        name = "-".join(str(wildcards[w]) for w in spec.wildcards)
        return cls(Path(RESUME_DIR) / f"{stage}-{name}.pt", key)

    def read(self, epochs: int) -> tuple[dict | None, str | None]:
        """(state, None) for a usable file; (None, why) for a corrupt, foreign or stale one; (None, None)
        when there is none. Loads with ``weights_only=True``: a resume file is data, never code."""
        if not self.path.is_file():
            return None, None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, corrupt, not a torch file: restart, never crash
            return None, f"unreadable ({type(err).__name__}: {err})"
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            return None, f"not a resume checkpoint of format {RESUME_FORMAT}"
        if state.get("key") != self.key:
            return None, "made for other params or inputs"
        if not (isinstance(state.get("epoch"), int) and 0 <= state["epoch"] < epochs):
            return None, f"its epoch {state.get('epoch')!r} is not in [0, {epochs})"
        return state, None

    def save(self, state: dict) -> None:
        from fsood.io import save_state_dict

        save_state_dict(self.path, {"format": RESUME_FORMAT, "key": self.key, **state})

    def clear(self) -> None:
        """Delete the file: the run finished and wrote its outputs (or the file is unusable)."""
        self.path.unlink(missing_ok=True)


def _rng_state(device: torch.device) -> dict:
    """The global RNGs (dropout and anything else drawing from them), in types ``weights_only`` loads."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                      has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _load_resume(resume: Resume, epochs: int, ctx: dist.Context, device: torch.device, desc: str) -> dict | None:
    """The resume state every rank continues from, or None (start from epoch 0). All ranks read the file
    and resume only if all of them could; then rank 0 deletes an unusable file (after every rank read it)."""
    state, problem = resume.read(epochs)
    if ctx.distributed:
        usable = dist.all_reduce_sum([float(state is not None)], ctx, device)[0] == ctx.world_size
        if not usable and state is not None:
            state, problem = None, "another rank could not read it"
        if state is not None and len(state["rng"]) != ctx.world_size:
            state, problem = None, f"it holds {len(state['rng'])} ranks' RNG states, not {ctx.world_size}"
    if problem is not None and ctx.is_main:
        log.warning("%s: ignoring the resume file %s (%s); deleting it and training from epoch 0",
                    desc, resume.path, problem)
        resume.clear()
    if state is not None and ctx.is_main:
        log.info("%s: resuming from %s after epoch %d", desc, resume.path, state["epoch"])
    return state


def _save_resume(resume: Resume, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                 objective: Objective, epoch: int, step: int, history: list[dict], ctx: dist.Context,
                 device: torch.device, desc: str) -> None:
    """Rank 0 writes the state after ``epoch`` (every rank's RNG states, gathered); weights that are no
    longer finite are not saved, so the last good file stays and a rerun never resumes into NaN."""
    rng = _rng_state(device)
    if ctx.distributed:
        gathered: list = [None] * ctx.world_size
        torch.distributed.all_gather_object(gathered, rng)
    else:
        gathered = [rng]
    if not ctx.is_main:
        return
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        log.warning("%s: weights are not finite after epoch %d; keeping the last resume file", desc, epoch)
        return
    objective_state = objective.state_dict() if hasattr(objective, "state_dict") else None
    resume.save({"epoch": epoch, "step": step, "history": history, "generator": gen.get_state(), "rng": gathered,
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": opt.state_dict(), "objective": objective_state})


def normalizer(norm: dict, device: torch.device) -> Callable[[Tensor], Tensor]:
    """uint8 (N, C, H, W) -> float, scaled to [0, 1] then standardised per channel."""
    mean = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    return lambda x: (x.float() / 255.0 - mean) / std


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


def apply_augment(x: Tensor, draws: AugmentDraws, padding: int) -> Tensor:
    """Random crop with zero padding and horizontal flip of a whole batch, as ``draws`` say.

    The drawn numbers move to ``x.device``. ``non_blocking``: a blocking copy would wait for all
    queued GPU work, and this one is safe (CUDA stages a pageable source before returning;
    nothing writes to it anyway).
    """
    n, c, h, w = x.shape
    dev = x.device
    if padding:
        padded = F.pad(x, (padding, padding, padding, padding))
        di = draws.rows.to(dev, non_blocking=True)
        dj = draws.cols.to(dev, non_blocking=True)
        rows = (di[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dj[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(n, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if draws.flip is not None:
        flip = draws.flip.to(dev, non_blocking=True)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def augment_batch(x: Tensor, padding: int, hflip: bool, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding and horizontal flip, for a whole batch at once.

    The draws come from ``generator`` (a CPU generator) whatever ``x.device`` is, so a run
    draws the same numbers on any device.
    """
    return apply_augment(x, draw_augment(len(x), padding, hflip, generator), padding)


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


class _Rows:
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


def _fetch(i: int, perm: Tensor, perm_out: Tensor | None, xs: _Rows, xo: _Rows | None, bs_in: int, bs_out: int,
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


def schedule_steps(cfg: dict, steps_per_epoch: int) -> int:
    """Steps of the cosine schedule: ``schedule_epochs`` (pretraining) or ``epochs`` epochs long.

    Training stops after ``epochs``; a longer schedule stops it part-way down the cosine, as the
    paper's "half-trained" start (Sec. 4, A.5: epoch 100 of a 200-epoch run).
    """
    length = cfg.get("schedule_epochs", cfg["epochs"])
    if length < cfg["epochs"]:
        raise ValueError(f"schedule_epochs={length} is shorter than epochs={cfg['epochs']}: the cosine schedule "
                         "must cover every epoch trained (set schedule_epochs >= epochs)")
    return steps_per_epoch * length


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine annealing per step from lr to lr_min (the OE code's LambdaLR)."""
    return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def train(
    model: torch.nn.Module,
    id_x: np.ndarray | ImageSet,
    id_y: np.ndarray,
    cfg: dict,
    runtime: dict,
    device: torch.device,
    norm: dict,
    objective: Objective,
    seed: int,
    outlier_x: np.ndarray | ImageSet | None = None,
    desc: str = "train",
    ctx: dist.Context = dist.SINGLE,
    resume: Resume | None = None,
) -> list[dict]:
    """SGD (Nesterov) with per-step cosine LR; one outlier batch zipped with each ID batch.

    Returns one history row per epoch: LR, every loss term, ID train accuracy and the
    mean |cos(z, w_i)| of outlier features (how far they reach into span(W)); with several
    ranks, the rows sum over all of them (each rank returns the same rows).

    Data parallel (``ctx.world_size`` > 1, inside ``dist.process_group``): the global batch keeps
    its size; every rank draws the same permutations and augmentation numbers and trains on the
    shard ``rank::world`` of the batch's ID part and of its outlier part (see fsood.distributed).
    A last ID batch with fewer images than ranks is skipped (one rank would have none).

    ``resume``: after every epoch, save the model, optimizer, CPU generator, global RNG states (every
    rank's), step counter, history and the objective's ``state_dict()`` (DAL's gamma) there; on start,
    continue after the epoch a matching file holds. A corrupt, foreign or stale file is ignored with a
    warning and deleted. Resumed on the same device and thread count, the run ends with the same bytes.
    """
    # The seeded generator and every draw (permutations, crops, flips) stay on the CPU, so a
    # seed gives the same stream on any device and on every rank. Array data move to the device
    # once (a no-op on the CPU): on a GPU, indexing and augmenting there spares a host-to-device
    # copy of every batch and the CPU work that would otherwise starve the GPU. Lazy sets are
    # read on the host, one batch ahead in a background thread.
    gen = torch.Generator().manual_seed(seed)
    to_input = normalizer(norm, device)
    xs, ys = _Rows(id_x, device), torch.from_numpy(id_y).to(device)
    xo = None if outlier_x is None else _Rows(outlier_x, device)
    # pretraining has one batch size; fine-tuning zips an ID batch with an outlier batch
    bs_in = cfg["batch_size"] if xo is None else cfg["id_batch_size"]
    bs_out = 0 if xo is None else cfg["outlier_batch_size"]
    check_shards(cfg, ctx.world_size, outliers=xo is not None)
    steps_per_epoch = math.ceil(len(xs) / bs_in)
    if 0 < len(xs) % bs_in < ctx.world_size:
        steps_per_epoch -= 1
        if ctx.is_main:
            log.warning("%s: the last ID batch of each epoch (%d images) is skipped: fewer than %d ranks",
                        desc, len(xs) % bs_in, ctx.world_size)
    total_steps = schedule_steps(cfg, steps_per_epoch)
    state = None if resume is None else _load_resume(resume, cfg["epochs"], ctx, device, desc)
    if state is not None:  # before the DDP wrapper, which broadcasts rank 0's weights when built
        model.load_state_dict(state["model"])
    net = dist.wrap(model, ctx, device)  # forward through DDP; model.fc stays the classifier
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
        nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"],
    )
    aug = cfg["augment"]
    history, step, first_epoch = [], 0, 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        _set_rng_state(state["rng"][ctx.rank], device)
        if state["objective"] is not None:
            objective.load_state_dict(state["objective"])
        history, step, first_epoch = state["history"], state["step"], state["epoch"] + 1
    # a bar on an interactive terminal only (disable=None: off when stderr is not a TTY); elsewhere (a pipe,
    # a cluster's log) one line per epoch instead, so parallel jobs' output stays one line per job and epoch
    bar = tqdm(range(first_epoch, cfg["epochs"]), desc=desc, unit="epoch", mininterval=2.0,
               disable=None if ctx.is_main else True)
    lines = ctx.is_main and bar.disable
    with ThreadPoolExecutor(1, thread_name_prefix="fsood-prefetch") as prefetch:
        for epoch in bar:
            net.train()
            perm = torch.randperm(len(xs), generator=gen)
            perm_out = None if xo is None else torch.randperm(len(xo), generator=gen)
            pending = prefetch.submit(_fetch, 0, perm, perm_out, xs, xo, bs_in, bs_out, ctx) \
                if steps_per_epoch else None
            sums: dict[str, float] = {}
            correct = seen = 0
            for i in range(steps_per_epoch):
                n_global, idx, oidx, host_in, host_out = pending.result()
                if i + 1 < steps_per_epoch:
                    pending = prefetch.submit(_fetch, i + 1, perm, perm_out, xs, xo, bs_in, bs_out, ctx)
                idx = idx.to(device, non_blocking=True)
                batch, labels = xs.device_rows(idx, host_in), ys[idx]
                mine = dist.shard(torch.arange(n_global), ctx)
                if xo is not None:
                    batch = torch.cat([batch, xo.device_rows(oidx, host_out)])
                    mine = torch.cat([mine, n_global + dist.shard(torch.arange(bs_out), ctx)])
                draws = draw_augment(n_global + bs_out, aug["crop_padding"], aug["hflip"], gen)
                if ctx.distributed:
                    draws = draws.take(mine)
                batch = apply_augment(batch, draws, aug["crop_padding"])
                inputs = to_input(batch)
                if runtime["channels_last"]:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, total_steps, cfg["lr"], cfg["lr_min"])
                with rt.autocast(runtime, device):
                    logits, z = net(inputs, return_features=True)
                logits, z = logits.float(), z.float()
                loss, terms = objective(logits, z, labels, epoch)
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"{desc}: loss became {loss.item()} at epoch {epoch}, step {i}"
                                        + (f" on rank {ctx.rank}" if ctx.distributed else ""))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                n_in = len(labels)
                with torch.no_grad():
                    terms = dict(terms, total=loss)
                    if xo is not None:
                        terms["ood_abs_cos"] = cosine_to_classes(z[n_in:], model.fc.weight).abs().mean()
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) * n_in
                    correct += int((logits[:n_in].argmax(1) == labels).sum())
                    seen += n_in
            keys = sorted(sums)
            *totals, correct, seen = dist.all_reduce_sum([sums[k] for k in keys] + [correct, seen], ctx, device)
            row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "id_train_acc": correct / seen}
            row.update({k: v / seen for k, v in zip(keys, totals)})
            history.append(row)
            bar.set_postfix(loss=f"{row['total']:.3f}", acc=f"{row['id_train_acc']:.3f}")
            if lines:
                print(f"{desc}: epoch {epoch + 1}/{cfg['epochs']} loss {row['total']:.3f} "
                      f"acc {row['id_train_acc']:.3f}", file=sys.stderr, flush=True)
            if ctx.is_main:
                log.info("%s epoch %d: %s", desc, epoch, {k: round(v, 5) for k, v in row.items()})
            if resume is not None:
                _save_resume(resume, model, opt, gen, objective, epoch, step, history, ctx, device, desc)
    dist.broadcast_buffers(model, ctx)
    return history


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
            if runtime["channels_last"]:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with rt.autocast(runtime, device):
                out, z = model(batch, return_features=True)
            logits.append(out.float().cpu().numpy())
            feats.append(z.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(feats)

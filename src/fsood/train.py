"""Training loops for pretraining (CE) and fine-tuning with auxiliary outliers.

Data live in memory, on the training device, as uint8 tensors; batches are index slices of
a seeded permutation, augmentation runs on whole batches (no per-image Python, no DataLoader
workers).
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from fsood import runtime as rt
from fsood.losses import cosine_to_classes

log = logging.getLogger(__name__)

# objective(logits, z, labels, epoch) -> (total loss, {term: value})
Objective = Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, dict[str, Tensor]]]


class NonFiniteLoss(FloatingPointError):
    pass


def normalizer(norm: dict, device: torch.device) -> Callable[[Tensor], Tensor]:
    """uint8 (N, C, H, W) -> float, scaled to [0, 1] then standardised per channel."""
    mean = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    return lambda x: (x.float() / 255.0 - mean) / std


def augment_batch(x: Tensor, padding: int, hflip: bool, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding and horizontal flip, for a whole batch at once.

    The draws come from ``generator`` (a CPU generator) whatever ``x.device`` is, so a run
    draws the same numbers on any device; the drawn offsets then move to ``x.device``.
    ``non_blocking``: a blocking copy would wait for all queued GPU work, and this one is
    safe (CUDA stages a pageable source before returning; nothing writes to it anyway).
    """
    n, c, h, w = x.shape
    dev = x.device
    if padding:
        padded = F.pad(x, (padding, padding, padding, padding))
        di = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev, non_blocking=True)
        dj = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev, non_blocking=True)
        rows = (di[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dj[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(n, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(dev, non_blocking=True)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine annealing per step from lr to lr_min (the OE code's LambdaLR)."""
    return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def train(
    model: torch.nn.Module,
    id_x: np.ndarray,
    id_y: np.ndarray,
    cfg: dict,
    runtime: dict,
    device: torch.device,
    norm: dict,
    objective: Objective,
    seed: int,
    outlier_x: np.ndarray | None = None,
    desc: str = "train",
) -> list[dict]:
    """SGD (Nesterov) with per-step cosine LR; one outlier batch zipped with each ID batch.

    Returns one history row per epoch: LR, every loss term, ID train accuracy and the
    mean |cos(z, w_i)| of outlier features (how far they reach into span(W)).
    """
    # The seeded generator and every draw (permutations, crops, flips) stay on the CPU, so a
    # seed gives the same stream on any device. The uint8 data move to the device once (a
    # no-op on the CPU): on a GPU, indexing and augmenting there spares a host-to-device copy
    # of every batch and the CPU work that would otherwise starve the GPU.
    gen = torch.Generator().manual_seed(seed)
    to_input = normalizer(norm, device)
    xs, ys = torch.from_numpy(id_x).to(device), torch.from_numpy(id_y).to(device)
    xo = None if outlier_x is None else torch.from_numpy(outlier_x).to(device)
    # pretraining has one batch size; fine-tuning zips an ID batch with an outlier batch
    bs_in = cfg["batch_size"] if xo is None else cfg["id_batch_size"]
    bs_out = 0 if xo is None else cfg["outlier_batch_size"]
    steps_per_epoch = math.ceil(len(xs) / bs_in)
    total_steps = steps_per_epoch * cfg["epochs"]
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
        nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"],
    )
    aug = cfg["augment"]
    history, step = [], 0
    bar = tqdm(range(cfg["epochs"]), desc=desc, unit="epoch", mininterval=2.0)
    for epoch in bar:
        model.train()
        # drawn on the CPU, then one copy per epoch to where the data are (non_blocking: the
        # source is a fresh tensor that nothing writes to again)
        perm = torch.randperm(len(xs), generator=gen).to(xs.device, non_blocking=True)
        perm_out = None if xo is None else torch.randperm(len(xo), generator=gen).to(xo.device, non_blocking=True)
        sums: dict[str, float] = {}
        correct = seen = 0
        for i in range(steps_per_epoch):
            idx = perm[i * bs_in:(i + 1) * bs_in]
            batch, labels = xs[idx], ys[idx]
            if xo is not None:  # cycle through the outliers when they run out
                oidx = perm_out[(torch.arange(bs_out, device=xo.device) + i * bs_out) % len(xo)]
                batch = torch.cat([batch, xo[oidx]])
            batch = augment_batch(batch, aug["crop_padding"], aug["hflip"], gen)
            inputs = to_input(batch.to(device))  # a no-op: the batch is already on the device
            if runtime["channels_last"]:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total_steps, cfg["lr"], cfg["lr_min"])
            with rt.autocast(runtime, device):
                logits, z = model(inputs, return_features=True)
            logits, z = logits.float(), z.float()
            loss, terms = objective(logits, z, labels, epoch)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"{desc}: loss became {loss.item()} at epoch {epoch}, step {i}")
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
        row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "id_train_acc": correct / seen}
        row.update({k: v / seen for k, v in sorted(sums.items())})
        history.append(row)
        bar.set_postfix(loss=f"{row['total']:.3f}", acc=f"{row['id_train_acc']:.3f}")
        log.info("%s epoch %d: %s", desc, epoch, {k: round(v, 5) for k, v in row.items()})
    return history


@torch.no_grad()
def forward_pass(
    model: torch.nn.Module, x: np.ndarray, runtime: dict, device: torch.device, norm: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of a whole set (eval mode), as float32 numpy."""
    model.eval()
    to_input = normalizer(norm, device)
    logits, feats = [], []
    for start in range(0, len(x), runtime["eval_batch_size"]):
        batch = to_input(torch.from_numpy(x[start:start + runtime["eval_batch_size"]]).to(device))
        if runtime["channels_last"]:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with rt.autocast(runtime, device):
            out, z = model(batch, return_features=True)
        logits.append(out.float().cpu().numpy())
        feats.append(z.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(feats)

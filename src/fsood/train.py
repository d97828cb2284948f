"""Training loops for pretraining (CE) and fine-tuning with auxiliary outliers.

An image set is either a uint8 numpy array (N, C, H, W), which moves to the training device once,
or a lazily decoded set (ImageNet; :class:`ImageSet`) indexed on the host batch by batch, while one
background thread prefetches the next batch (fsood.batches). The run's batches are planned at its start
from generators of their own (fsood.batches.plan_batches: one permutation an epoch, or with
``steps_per_epoch`` short epochs of one stream over every image, and one stream of outliers); augmentation
runs on whole batches on the device (fsood.augment). The fast recipe's pieces (lookahead, Muon, the
whitening bias's epochs) and fine-tuning's BatchNorm settings come from fsood.recipe. With several
processes (fsood.distributed) each rank trains on its shard of every global batch. A run given a
:class:`Resume` (fsood.resume) saves its whole state after every epoch and, restarted after a crash
or a SIGKILL, continues from the last saved epoch to the same bytes as a run that was never
interrupted. Inference (``forward_pass``) is fsood.inference; the names stay importable from here.

The seeded generators and every draw (permutations, crops, flips) stay on the CPU, so a seed gives
the same stream on any device and on every rank. Array data move to the device once (a no-op on the
CPU): on a GPU, indexing and augmenting there spares a host-to-device copy of every batch and the
CPU work that would otherwise starve the GPU.
"""
from __future__ import annotations

import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from fsood import distributed as dist
from fsood import runtime as rt
from fsood.augment import AugmentDraws, apply_augment, augment_batch, draw_augment
from fsood.batches import Rows, check_shards, fetch_step, index_stream, plan_batches, stream_generator
from fsood.inference import ImageSet, forward_pass, host_rows, normalizer
from fsood.losses import cosine_to_classes
from fsood.recipe import (Lookahead, Optimizers, cosine_lr, freeze_batchnorm, lookahead_for, lr_at, optimizer,
                          set_batchnorm_momentum, set_epoch)
from fsood.resume import RESUME_DIR, RESUME_FORMAT, Resume, load_resume, save_resume, set_rng_state

log = logging.getLogger(__name__)

# objective(logits, z, labels, epoch) -> (total loss, {term: value})
Objective = Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, dict[str, Tensor]]]


class NonFiniteLoss(FloatingPointError):
    pass


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


@dataclass
class _Run:
    """What every step of one training run uses (built once by :func:`_start`)."""

    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped for data parallelism
    opt: Optimizers
    gen: torch.Generator
    objective: Objective
    cfg: dict
    runtime: dict
    device: torch.device
    ctx: dist.Context
    to_input: Callable[[Tensor], Tensor]
    xs: Rows
    ys: Tensor
    xo: Rows | None
    bs_in: int
    bs_out: int
    plan: list[list[Tensor]]  # the ID batches of every epoch (fsood.batches.plan_batches)
    outlier_plan: Tensor | None  # (steps trained, outlier batch size): the outliers of each global step
    total_steps: int  # of the LR schedule
    desc: str
    lookahead: Lookahead | None = None  # the fast recipe's weight averaging (fsood.recipe)
    flip_base: Tensor | None = None  # augment.hflip alternate: each ID image's flip in even epochs


def alternate_flips(n: int, augment: dict, seed: int) -> Tensor | None:
    """airbench's alternating flip (``augment.hflip: alternate``): a fixed random half of the ID images is
    flipped in even epochs and the other half in odd ones, so every image is seen both ways within two epochs
    (random flips repeat a side for a quarter of the images); None for random or no flips."""
    if augment["hflip"] != "alternate":
        return None
    return torch.rand(n, generator=stream_generator(seed, "flip")) < 0.5


def _plan(n: int, bs_in: int, cfg: dict, seed: int, ctx: dist.Context, desc: str) -> list[list[Tensor]]:
    """The run's ID batches (fsood.batches.plan_batches) from their own generator seeded by ``seed``."""
    steps_per_epoch = cfg.get("steps_per_epoch")
    if steps_per_epoch is None and 0 < n % bs_in < ctx.world_size and ctx.is_main:
        log.warning("%s: the last ID batch of each epoch (%d images) is skipped: fewer than %d ranks",
                    desc, n % bs_in, ctx.world_size)
    return plan_batches(n, bs_in, cfg["epochs"], steps_per_epoch, stream_generator(seed, "id"), ctx.world_size)


def _restore(run: _Run, state: dict | None) -> tuple[list[dict], int, int]:
    """(history, step, first epoch): from a resume state, or a fresh start."""
    if state is None:
        return [], 0, 0
    run.opt.load_state_dict(state["optimizer"])
    run.gen.set_state(state["generator"])
    set_rng_state(state["rng"][run.ctx.rank], run.device)
    if state["objective"] is not None:
        run.objective.load_state_dict(state["objective"])
    if run.lookahead is not None:
        run.lookahead.load_state_dict(state["lookahead"])
    return state["history"], state["step"], state["epoch"] + 1


def _inputs(run: _Run, fetched: tuple, batch_ids: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
    """The augmented, normalised model input of one fetched step and its ID labels (``batch_ids``: the global
    ID batch's indices, for the alternating flip)."""
    n_global, idx, oidx, host_in, host_out = fetched
    aug = run.cfg["augment"]
    idx = idx.to(run.device, non_blocking=True)
    batch, labels = run.xs.device_rows(idx, host_in), run.ys[idx]
    mine = dist.shard(torch.arange(n_global), run.ctx)
    if run.xo is not None:
        batch = torch.cat([batch, run.xo.device_rows(oidx, host_out)])
        mine = torch.cat([mine, n_global + dist.shard(torch.arange(run.bs_out), run.ctx)])
    draws = draw_augment(n_global + run.bs_out, aug["crop_padding"], bool(aug["hflip"]), run.gen)
    if run.flip_base is not None:  # alternating flip: each ID image flipped in every other epoch
        flips = draws.flip.clone()
        flips[:n_global] = run.flip_base[batch_ids] ^ bool(epoch % 2)
        draws = draws._replace(flip=flips)
    if run.ctx.distributed:
        draws = draws.take(mine)
    inputs = run.to_input(apply_augment(batch, draws, aug["crop_padding"], aug.get("padding_mode", "zeros")))
    if rt.channels_last(run.runtime):
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, labels


def _step(run: _Run, inputs: Tensor, labels: Tensor, epoch: int, i: int, step: int) -> tuple[Tensor, Tensor, Tensor,
                                                                                            dict[str, Tensor]]:
    """One SGD step at global step ``step``: (logits, features, loss, terms)."""
    base_lr = lr_at(step, run.total_steps, run.cfg)
    for group in run.opt.param_groups:
        group["lr"] = base_lr * group["lr_scale"]
    with rt.autocast(run.runtime, run.device):
        logits, z = run.net(inputs, return_features=True)
    logits, z = logits.float(), z.float()
    loss, terms = run.objective(logits, z, labels, epoch)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"{run.desc}: loss became {loss.item()} at epoch {epoch}, step {i}"
                            + (f" on rank {run.ctx.rank}" if run.ctx.distributed else ""))
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    if run.lookahead is not None:
        run.lookahead.update(run.model, step + 1)
    return logits, z, loss, terms


def _epoch(run: _Run, epoch: int, step: int, prefetch: ThreadPoolExecutor) -> tuple[dict, int]:
    """Train one epoch from global step ``step``: (its history row, summed over ranks; the next step)."""
    run.net.train()
    set_epoch(run.model, run.cfg, epoch)
    freeze_batchnorm(run.model, run.cfg)
    batches, first = run.plan[epoch], step

    def fetch(i: int):
        outliers = None if run.outlier_plan is None else run.outlier_plan[first + i]
        return fetch_step(batches[i], outliers, run.xs, run.xo, run.ctx)

    pending = prefetch.submit(fetch, 0) if batches else None
    sums: dict[str, float] = {}
    correct = seen = 0
    for i in range(len(batches)):
        fetched = pending.result()
        if i + 1 < len(batches):
            pending = prefetch.submit(fetch, i + 1)
        inputs, labels = _inputs(run, fetched, batches[i], epoch)
        logits, z, loss, terms = _step(run, inputs, labels, epoch, i, step)
        if step == 0 and run.ctx.is_main and (age := rt.process_age()) is not None:
            log.info("%s: first training step done %.2f s after the process started", run.desc, age)
        step += 1
        n_in = len(labels)
        with torch.no_grad():
            terms = dict(terms, total=loss)
            if run.xo is not None:
                terms["ood_abs_cos"] = cosine_to_classes(z[n_in:], run.model.fc.weight).abs().mean()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n_in
            correct += int((logits[:n_in].argmax(1) == labels).sum())
            seen += n_in
    keys = sorted(sums)
    *totals, correct, seen = dist.all_reduce_sum([sums[k] for k in keys] + [correct, seen], run.ctx, run.device)
    row = {"epoch": epoch, "lr": run.opt.param_groups[0]["lr"], "id_train_acc": correct / seen}
    row.update({k: v / seen for k, v in zip(keys, totals)})
    return row, step


def _start(model, id_x, id_y, cfg, runtime, device, norm, objective, seed, outlier_x, desc, ctx, resume):
    """The run's state (:class:`_Run`) and the resume file's content (None: start at epoch 0), in the order
    that fixes the generator's draws: the model takes a resumed state before the DDP wrapper broadcasts it."""
    gen = torch.Generator().manual_seed(seed)
    xs, xo = Rows(id_x, device), None if outlier_x is None else Rows(outlier_x, device)
    # pretraining has one batch size; fine-tuning zips an ID batch with an outlier batch
    bs_in = cfg["batch_size"] if xo is None else cfg["id_batch_size"]
    check_shards(cfg, ctx.world_size, outliers=xo is not None)
    plan = _plan(len(xs), bs_in, cfg, seed, ctx, desc)
    total_steps = schedule_steps(cfg, len(plan[0]) if plan else 0)
    bs_out = 0 if xo is None else cfg["outlier_batch_size"]
    trained = sum(len(batches) for batches in plan)
    outlier_plan = None if xo is None else index_stream(len(xo), trained * bs_out,
                                                        stream_generator(seed, "outliers")).view(trained, bs_out)
    state = None if resume is None else load_resume(resume, cfg["epochs"], ctx, device, desc)
    if state is not None:  # before the DDP wrapper, which broadcasts rank 0's weights when built
        model.load_state_dict(state["model"])
    net = dist.wrap(model, ctx, device)  # forward through DDP; model.fc stays the classifier
    opt = optimizer(model, cfg)
    run = _Run(model, net, opt, gen, objective, cfg, runtime, device, ctx, normalizer(norm, device), xs,
               torch.from_numpy(id_y).to(device), xo, bs_in, bs_out, plan, outlier_plan, total_steps, desc,
               lookahead_for(model, cfg, total_steps), alternate_flips(len(xs), cfg["augment"], seed))
    set_batchnorm_momentum(model, cfg)
    return run, state


def _announce(run: _Run, bar: tqdm, lines: bool, epoch: int, row: dict) -> None:
    """An epoch's loss and accuracy: the bar's postfix, or (``lines``: no terminal) one stderr line; the log."""
    bar.set_postfix(loss=f"{row['total']:.3f}", acc=f"{row['id_train_acc']:.3f}")
    if lines:
        print(f"{run.desc}: epoch {epoch + 1}/{run.cfg['epochs']} loss {row['total']:.3f} "
              f"acc {row['id_train_acc']:.3f}", file=sys.stderr, flush=True)
    if run.ctx.is_main:
        log.info("%s epoch %d: %s", run.desc, epoch, {k: round(v, 5) for k, v in row.items()})


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
    after_epoch: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """SGD (Nesterov) with a per-step LR (fsood.recipe: cosine, or the fast recipe's); one outlier batch
    zipped with each ID batch.

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

    ``after_epoch(epoch, row)``: called after each epoch (and its resume file), e.g. to evaluate the model.
    """
    run, state = _start(model, id_x, id_y, cfg, runtime, device, norm, objective, seed, outlier_x, desc, ctx, resume)
    history, step, first_epoch = _restore(run, state)
    # a bar on an interactive terminal only (disable=None: off when stderr is not a TTY); elsewhere (a pipe,
    # a cluster's log) one line per epoch instead, so parallel jobs' output stays one line per job and epoch
    bar = tqdm(range(first_epoch, cfg["epochs"]), desc=desc, unit="epoch", mininterval=2.0,
               disable=None if ctx.is_main else True)
    lines = ctx.is_main and bar.disable
    with ThreadPoolExecutor(1, thread_name_prefix="fsood-prefetch") as prefetch:
        for epoch in bar:
            row, step = _epoch(run, epoch, step, prefetch)
            if run.lookahead is not None and epoch == cfg["epochs"] - 1:
                run.lookahead.finish(model)  # the model is the average from here on (airbench's final update)
            history.append(row)
            _announce(run, bar, lines, epoch, row)
            if resume is not None:
                save_resume(resume, model, run.opt, run.gen, objective, epoch, step, history, ctx, device, desc,
                            run.lookahead)
            if after_epoch is not None:  # e.g. benchmarks/pretrain_recipes.py's test accuracy; must not train
                after_epoch(epoch, row)
    dist.broadcast_buffers(model, ctx)
    return history


__all__ = ["RESUME_DIR", "RESUME_FORMAT", "AugmentDraws", "ImageSet", "NonFiniteLoss", "Objective", "Resume",
           "apply_augment", "augment_batch", "check_shards", "cosine_lr", "draw_augment", "forward_pass",
           "host_rows", "normalizer", "schedule_steps", "train"]

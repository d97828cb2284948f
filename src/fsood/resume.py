"""Resuming a training run: its checkpoint file, and the global RNG states it saves and restores.

A run given a :class:`Resume` saves its whole state after every epoch (fsood.train.train) and,
restarted after a crash or a SIGKILL, continues from the last saved epoch to the same bytes as a
run that was never interrupted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from fsood import distributed as dist
from fsood.io import file_sha256

log = logging.getLogger(__name__)

RESUME_DIR = ".fsood/resume"  # outside every DVC output and dependency (gitignored, dvcignored)
RESUME_FORMAT = 2  # 2: the optimizer state of fsood.recipe.Optimizers, the lookahead average


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
        """``.fsood/resume/<stage>-<cell>.pt`` (e.g. ``finetune-digits-0-sep-1.pt``), keyed by what the stage's
        contract (fsood.contract) says decides its outputs: its declared params and the sha256 of its
        input files, plus ``extra`` (the number of ranks), the torch version and the file format."""
        from fsood import contract

        spec = contract.stage(stage)
        inputs = [p for paths in contract.input_paths(spec, params, tracked=True, **wildcards).values() for p in paths]
        fingerprint = {"stage": stage, "cell": wildcards, "settings": spec.param_values(params, **wildcards),
                       "extra": extra or {}, "torch": torch.__version__, "format": RESUME_FORMAT,
                       "inputs": {str(p): file_sha256(p) for p in inputs}}
        key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        return cls(Path(RESUME_DIR) / f"{stage}-{spec.cell(**wildcards)}.pt", key)

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


def rng_state(device: torch.device) -> dict:
    """The global RNGs (dropout and anything else drawing from them), in types ``weights_only`` loads."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                      has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.getrng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_resume(resume: Resume, epochs: int, ctx: dist.Context, device: torch.device, desc: str) -> dict | None:
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


def save_resume(resume: Resume, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                 objective, epoch: int, step: int, history: list[dict], ctx: dist.Context,
                 device: torch.device, desc: str, lookahead=None) -> None:
    """Rank 0 writes the state after ``epoch`` (every rank's RNG states, gathered); weights that are no
    longer finite are not saved, so the last good file stays and a rerun never resumes into NaN."""
    rng = rng_state(device)
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
                 "optimizer": opt.state_dict(), "objective": objective_state,
                 "lookahead": None if lookahead is None else lookahead.state_dict()})

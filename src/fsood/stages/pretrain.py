"""Stage 2, pretrain: train the ID classifier with cross-entropy.

Training saves a resume file after every epoch (``.fsood/resume/``, fsood.train.Resume): a killed
job, rerun, continues from its last epoch.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from fsood import distributed as dist
from fsood import contract
from fsood import runtime as rt
from fsood.inference import normalizer
from fsood.io import save_state_dict
from fsood.methods import pretrain_objective
from fsood.stages.common import (benchmark_data, model_for, normalization, prepared, published_checkpoint,
                                 write_history)
from fsood.train import Resume, train

log = logging.getLogger(__name__)

WHITENING_IMAGES = 5000  # as many as airbench whitens with (its first 5,000; here every k-th, over all classes)


def run(params: dict, benchmark: str, pretrain_seed: int) -> None:
    ctx = dist.from_environment()
    if ctx is not None and ctx.distributed:  # every rank would train the same model and write the same file
        raise ValueError(f"pretrain runs in one process; it was started as rank {ctx.rank} of {ctx.world_size} "
                         "(data-parallel training is for the finetune stage: benchmarks.B.finetune.processes)")
    bench = params["benchmarks"][benchmark]
    out = contract.outs("pretrain", benchmark=benchmark, pretrain_seed=pretrain_seed)
    data = benchmark_data(benchmark)
    published = published_checkpoint(params, benchmark, data)
    if published is not None:  # the paper fine-tunes from a published model (energy_ood's WRN, torchvision's ResNet-50)
        model, loaded = published
        log.info("pretrained model: %s (no training)", loaded)
        write_history(out["history"], [{"epoch": 0, **loaded}])  # the checkpoint's hash, git-tracked
        save_state_dict(out["model"], {k: v.cpu() for k, v in model.state_dict().items()})
        return
    seed = pretrain_seed  # one model a pretraining seed, shared by every fine-tuning cell of it
    device = rt.configure(params["runtime"], seed)
    x, y = data.load("id_train")
    norm = normalization(params, benchmark, data)
    model = model_for(params, benchmark, data)
    if hasattr(model, "init_whitening"):  # CompactNet: its first layer whitens the training images' patches
        model.init_whitening(whitening_sample(x, norm))
    model = prepared(model, params, data, device)
    resume = Resume.for_job("pretrain", params, benchmark=benchmark, pretrain_seed=pretrain_seed)
    fast = bench["pretrain"]["fast_recipe"] or {}
    history = train(model, x, y, bench["pretrain"], params["runtime"], device, norm,
                    pretrain_objective(fast.get("label_smoothing", 0.0)), seed,
                    desc=f"pretrain {benchmark} seed {seed}", resume=resume)
    write_history(out["history"], history)
    save_state_dict(out["model"], {k: v.cpu() for k, v in model.state_dict().items()})
    resume.clear()  # only now: a kill before the outputs are in place still resumes


def whitening_sample(x: np.ndarray, norm: dict, n: int = WHITENING_IMAGES) -> torch.Tensor:
    """``n`` training images spread evenly over the set (every k-th), as normalised model inputs."""
    step = max(1, len(x) // n)
    return normalizer(norm, torch.device("cpu"))(torch.as_tensor(np.asarray(x[::step][:n])))


"""Stage 4, finetune: OE, Energy-OE or the paper's separation fine-tuning ("none" keeps the model).

``benchmarks.B.finetune.processes`` > 1 trains data-parallel on one node (fsood.distributed): this
command spawns the workers itself, or, started by ``torchrun`` (RANK / WORLD_SIZE set), is one of them.
Rank 0 alone writes the history and the checkpoint. Training saves a resume file after every epoch
(``.fsood/resume/``, fsood.train.Resume): a killed job, rerun, continues from its last epoch.
"""
from __future__ import annotations

import numpy as np
import torch

from fsood import distributed as dist
from fsood import contract
from fsood import runtime as rt
from fsood.config import method_params
from fsood.io import load_npz, save_state_dict, write_bytes
from fsood.methods import make_objective
from fsood.stages.common import benchmark_data, load_model, normalization, write_history
from fsood.subsets import balanced_subset
from fsood.train import Resume, check_shards, train


def run(params: dict, benchmark: str, method: str, seed: int) -> None:
    ctx = dist.from_environment()  # set when a launcher (torchrun) started this process
    if method == "none":  # the pretrained model as is, with its own training curve
        if ctx is None or ctx.is_main:
            pre = contract.outs("pretrain", benchmark=benchmark)
            out = contract.outs("finetune", benchmark=benchmark, method=method, seed=seed)
            write_bytes(out["history"], pre["history"].read_bytes())
            write_bytes(out["model"], pre["model"].read_bytes())
        return
    cfg = params["benchmarks"][benchmark]["finetune"]
    processes = cfg["processes"]
    check_shards(cfg, processes)
    if ctx is None and processes > 1:
        # fail before spawning if the backend cannot work on this device
        device_type = rt.device_type(params["runtime"]["device"])
        dist.resolve_backend(params["runtime"]["ddp_backend"], torch.device(device_type))
        dist.launch(finetune, (params, benchmark, method, seed), processes)
        return
    ctx = ctx or dist.SINGLE
    if ctx.world_size != processes:
        raise ValueError(f"the launcher started {ctx.world_size} processes (WORLD_SIZE) but "
                         f"benchmarks.{benchmark}.finetune.processes is {processes}; set them equal")
    dist.quiet_other_ranks(ctx)
    finetune(ctx, params, benchmark, method, seed)


def build_objective(params: dict, benchmark: str, method: str, seed: int, model: torch.nn.Module,
                    device: torch.device):
    """The fine-tuning objective: the one place it is built. ``model`` is the plain module (never the
    DDP wrapper), so ``model.fc`` is the classifier every rank trains."""
    mcfg = method_params(params, benchmark, method)  # the global values with the benchmark's overrides
    if mcfg.get("weight_source") == "pretrained":
        basis = contract.out("subspace", "basis", benchmark=benchmark)
        frozen = torch.from_numpy(load_npz(basis)["weight"]).float().to(device)
        weight_fn = lambda: frozen  # noqa: E731
    else:
        weight_fn = lambda: model.fc.weight  # noqa: E731
    stage2_epoch = params["benchmarks"][benchmark]["finetune"]["stage2_epoch"]
    return make_objective(method, mcfg, stage2_epoch, weight_fn, head_fn=lambda: model.fc, seed=seed)


def id_train_subset(data, cap: int | None):
    """The ID images fine-tuning trains on: all, or a fixed class-balanced ``finetune.id_samples`` of them
    (the same for every cell, so cells differ by their seed only)."""
    x, y = data.load("id_train")
    if cap is None or cap >= len(y):
        return x, y
    if not isinstance(x, np.ndarray):
        raise ValueError(f"finetune.id_samples={cap} needs an ID set held as an array; this one is decoded lazily "
                         "(set id_samples: null)")
    keep = balanced_subset(y, cap)
    return x[keep], y[keep]


def resume_for(params: dict, benchmark: str, method: str, seed: int, world_size: int) -> Resume:
    """The cell's resume file, keyed by the stage's declared params and input files and the number of ranks."""
    return Resume.for_job("finetune", params, {"world_size": world_size}, benchmark=benchmark, method=method,
                          seed=seed)


def finetune(ctx: dist.Context, params: dict, benchmark: str, method: str, seed: int) -> None:
    """Train one cell on this rank (the only one when ``ctx`` is ``dist.SINGLE``)."""
    bench = params["benchmarks"][benchmark]
    pre = contract.outs("pretrain", benchmark=benchmark)
    out = contract.outs("finetune", benchmark=benchmark, method=method, seed=seed)
    device = rt.configure(params["runtime"], seed, ctx.world_size, ctx.rank, ctx.local_rank)
    backend = dist.resolve_backend(params["runtime"]["ddp_backend"], device) if ctx.distributed else None
    data = benchmark_data(benchmark)
    model = rt.prepare_model(load_model(params, benchmark, data, pre["model"]), params["runtime"], device)
    objective = build_objective(params, benchmark, method, seed, model, device)
    x, y = id_train_subset(data, bench["finetune"]["id_samples"])
    outliers, _ = data.load("outliers")
    resume = resume_for(params, benchmark, method, seed, ctx.world_size)
    with dist.process_group(ctx, backend, device):
        history = train(model, x, y, bench["finetune"], params["runtime"], device, normalization(params, benchmark, data),
                        objective, seed, outlier_x=outliers, desc=f"finetune {benchmark} {method} seed {seed}",
                        ctx=ctx, resume=resume)
    if ctx.is_main:
        write_history(out["history"], history)
        save_state_dict(out["model"], {k: v.cpu() for k, v in model.state_dict().items()})
        resume.clear()  # only now: a kill before the outputs are in place still resumes

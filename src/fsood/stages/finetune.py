"""Stage 4, finetune: OE, Energy-OE, DAL or the paper's separation fine-tuning of one pretrained model.

``benchmarks.B.finetune.processes`` > 1 trains data-parallel on one node (fsood.distributed): this
command spawns the workers itself, or, started by ``torchrun`` (RANK / WORLD_SIZE set), is one of them.
Rank 0 alone writes the history and the checkpoint. Training saves a resume file after every epoch
(``.fsood/resume/``, fsood.train.Resume): a killed job, rerun, continues from its last epoch.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from fsood import distributed as dist
from fsood import contract
from fsood import runtime as rt
from fsood.config import method_params
from fsood.io import load_npz, read_json, save_state_dict
from fsood.margins import margins
from fsood.methods import make_objective
from fsood.stages.common import benchmark_data, load_pretrained, normalization, write_history
from fsood.subsets import balanced_subset
from fsood.train import Resume, check_shards, train

log = logging.getLogger(__name__)


def run(params: dict, benchmark: str, pretrain_seed: int, method: str, seed: int) -> None:
    ctx = dist.from_environment()  # set when a launcher (torchrun) started this process
    cell = {"benchmark": benchmark, "pretrain_seed": pretrain_seed, "method": method, "seed": seed}
    cfg = params["benchmarks"][benchmark]["finetune"]
    processes = cfg["processes"]
    check_shards(cfg, processes)
    if ctx is None and processes > 1:
        # fail before spawning if the backend cannot work on this device
        device_type = rt.device_type(params["runtime"]["device"])
        dist.resolve_backend(params["runtime"]["ddp_backend"], torch.device(device_type))
        dist.launch(finetune, (params, cell), processes)
        return
    ctx = ctx or dist.SINGLE
    if ctx.world_size != processes:
        raise ValueError(f"the launcher started {ctx.world_size} processes (WORLD_SIZE) but "
                         f"benchmarks.{benchmark}.finetune.processes is {processes}; set them equal")
    dist.quiet_other_ranks(ctx)
    finetune(ctx, params, cell)


def build_objective(params: dict, cell: dict, model: torch.nn.Module, device: torch.device):
    """The fine-tuning objective: the one place it is built. ``model`` is the plain module (never the
    DDP wrapper), so ``model.fc`` is the classifier every rank trains."""
    benchmark, method = cell["benchmark"], cell["method"]
    mcfg = method_params(params, benchmark, method)  # the global values with the benchmark's overrides
    subspace = contract.outs("subspace", benchmark=benchmark, pretrain_seed=cell["pretrain_seed"])
    if mcfg.get("weight_source") == "pretrained":
        frozen = torch.from_numpy(load_npz(subspace["basis"])["weight"]).float().to(device)
        weight_fn = lambda: frozen  # noqa: E731
    else:
        weight_fn = lambda: model.fc.weight  # noqa: E731
    if "margins" in mcfg:  # Energy-OE's margins: fixed, or from the pretrained model's energies (fsood.margins)
        energies = read_json(subspace["energies"]) if mcfg["margins"] == "pretrained" else None
        m_in, m_out = margins(mcfg, energies)
        log.info("%s: Energy-OE margins (%s) m_in %.4f, m_out %.4f", contract.cell_name(*cell.values()),
                 mcfg["margins"], m_in, m_out)
        mcfg = {**mcfg, "m_in": m_in, "m_out": m_out}
    ft = params["benchmarks"][benchmark]["finetune"]
    return make_objective(method, mcfg, ft["stage2_epoch"], weight_fn, head_fn=lambda: model.fc, seed=cell["seed"],
                          label_smoothing=ft["label_smoothing"])


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


def finetune(ctx: dist.Context, params: dict, cell: dict) -> None:
    """Train one cell on this rank (the only one when ``ctx`` is ``dist.SINGLE``)."""
    benchmark, seed = cell["benchmark"], cell["seed"]
    bench = params["benchmarks"][benchmark]
    out = contract.outs("finetune", **cell)
    device = rt.configure(params["runtime"], seed, ctx.world_size, ctx.rank, ctx.local_rank)
    backend = dist.resolve_backend(params["runtime"]["ddp_backend"], device) if ctx.distributed else None
    data = benchmark_data(benchmark)
    model = load_pretrained(params, benchmark, cell["pretrain_seed"], data, device)
    objective = build_objective(params, cell, model, device)
    x, y = id_train_subset(data, bench["finetune"]["id_samples"])
    outliers, _ = data.load("outliers")
    # the resume file is keyed by the stage's declared params and input files and the number of ranks
    resume = Resume.for_job("finetune", params, {"world_size": ctx.world_size}, **cell)
    with dist.process_group(ctx, backend, device):
        history = train(model, x, y, bench["finetune"], params["runtime"], device, normalization(params, benchmark, data),
                        objective, seed, outlier_x=outliers, desc=f"finetune {contract.cell_name(*cell.values())}",
                        ctx=ctx, resume=resume)
    if ctx.is_main:
        write_history(out["history"], history)
        save_state_dict(out["model"], {k: v.cpu() for k, v in model.state_dict().items()})
        resume.clear()  # only now: a kill before the outputs are in place still resumes

"""``runtime.precision: auto`` and ``runtime.channels_last: auto``: chosen by measurement, per machine and model.

Whether bf16 autocast and the channels_last memory format pay depends on the CPU and the model: on a
Xeon with AMX bf16 trains cifar10-mini's compact net 3.3x faster than fp32; on an EPYC with AVX512-BF16
and no AMX it helps the 64-256-256 net (1.8x) and slows the 64-128-128 one (0.7x); on a CPU without bf16
instructions it is emulated and always slower (docs/performance.md). So no rule of thumb holds on every
machine: the first job that prepares a model here times a few training steps (forward and backward) of a
copy of it at the benchmark's input shape in each combination, and the choice is kept in
``.fsood/autotune.json`` under a key naming the CPU, its bf16 flags, torch, the thread count, the model and
the shape, so that every later job of that model on this machine makes the same choice. bf16 is taken only
where it is at least ``BF16_MARGIN`` times faster than fp32 (it changes the numbers; a near tie is not worth
it); channels_last where it is faster at the chosen precision. The log and each cell's provenance.json
record the choice and the measured rates.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CACHE = Path(".fsood/autotune.json")  # in the workspace, beside the resume files (gitignored, dvcignored)
BF16_MARGIN = 1.1
BATCH = 128
WARMUP, STEPS = 1, 3


def _key(model: torch.nn.Module, shape: tuple[int, ...], threads: int, cpu: str, flags: set[str],
         precisions: list[str], formats: list[bool]) -> str:
    params = sum(p.numel() for p in model.parameters())
    spec = {"cpu": cpu, "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
            "torch": torch.__version__, "threads": threads, "model": type(model).__name__, "parameters": params,
            "shape": list(shape), "batch": BATCH, "margin": BF16_MARGIN, "precisions": precisions,
            "formats": formats}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16] + f" {type(model).__name__}"


def _rate(model: torch.nn.Module, shape: tuple[int, ...], bf16: bool, channels_last: bool) -> float:
    """Images per second of forward + backward on a copy of ``model`` (train mode, random inputs). The global
    RNG is restored afterwards (dropout draws from it): a measured run and a cached one train alike."""
    with torch.random.fork_rng(devices=[]):
        return _timed(copy.deepcopy(model).train(), torch.randn(BATCH, *shape, generator=torch.Generator()
                                                               .manual_seed(0)), bf16, channels_last)


def _timed(net: torch.nn.Module, x: torch.Tensor, bf16: bool, channels_last: bool) -> float:
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().square().mean().backward()
        net.zero_grad(set_to_none=True)
    return STEPS * BATCH / (time.perf_counter() - start)


def measure(model: torch.nn.Module, shape: tuple[int, ...], precisions: list[str],
            formats: list[bool]) -> dict[str, float]:
    """{``<precision>/<cl|nchw>``: images/s} for each precision and memory format."""
    return {f"{p}/{'cl' if cl else 'nchw'}": round(_rate(model, shape, p == "bf16", cl), 1)
            for p in precisions for cl in formats}


def choose(rates: dict[str, float]) -> dict:
    """The choice from measured rates: bf16 when its best format beats fp32's best by ``BF16_MARGIN``."""
    best = {p: max((r, k) for k, r in rates.items() if k.startswith(p + "/")) for p in {k.split("/")[0] for k in rates}}
    if len(best) == 1:  # one precision allowed (fixed in params, or no native bf16)
        precision = next(iter(best))
    else:
        precision = "bf16" if best["bf16"][0] >= BF16_MARGIN * best["fp32"][0] else "fp32"
    return {"precision": precision, "channels_last": best[precision][1].endswith("/cl"), "rates": rates}


def resolve(model: torch.nn.Module, shape: tuple[int, ...], cpu: str, flags: set[str], precisions: list[str],
            formats: list[bool]) -> dict:
    """The kept choice for this machine and model among ``precisions`` x ``formats`` (channels_last or not),
    measuring it first where there is none."""
    key = _key(model, shape, torch.get_num_threads(), cpu, flags, precisions, formats)
    try:
        kept = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    except (OSError, ValueError):
        kept = {}
    if key in kept:
        return kept[key]
    rates = measure(model, shape, precisions, formats)
    chosen = choose(rates)
    log.info("runtime auto: measured %s (images/s, %d threads, batch %d): %s with%s channels_last",
             rates, torch.get_num_threads(), BATCH, chosen["precision"], "" if chosen["channels_last"] else "out")
    try:  # another job may have written meanwhile: keep its entries
        kept = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    except (OSError, ValueError):
        kept = {}
    from fsood.io import write_text

    CACHE.parent.mkdir(parents=True, exist_ok=True)
    write_text(CACHE, json.dumps({**kept, key: chosen}, indent=1, sort_keys=True) + "\n")
    return chosen

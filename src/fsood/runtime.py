"""Device, precision, threads and determinism: one place that sets them for every stage."""
from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")


def device_type(want: str) -> str:
    """``runtime.device`` -> 'cpu' | 'cuda'. 'auto' takes the GPU when there is one and falls back to the
    CPU otherwise (configure() warns); an explicit 'cuda' without a GPU is an error, never a silent
    fallback: a run meant for a GPU must not quietly take a hundred times longer."""
    if want not in DEVICES:
        raise ValueError(f"runtime.device {want!r} is not known; valid: {list(DEVICES)}")
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available "
                           "(use 'auto' to fall back to the CPU with a warning, or 'cpu')")
    return want


def configure(runtime: dict, seed: int, processes: int = 1, rank: int = 0, local_rank: int = 0) -> torch.device:
    """Seed everything, pin the thread count, pick the device.

    Snakemake exports a rule's ``threads:`` as OMP_NUM_THREADS; we pass it on to torch
    explicitly so parallel jobs do not fight over the cores. Without it (``dvc repro``,
    a plain shell) ``runtime.threads`` from params.yaml applies. Data-parallel workers
    (``processes`` > 1) share those threads: ``threads // processes`` each, at least 1; each
    takes GPU ``local_rank``, and rank r > 0 seeds the global RNGs (dropout) from (seed, r) so
    ranks draw different masks for their different shards (rank 0 keeps ``seed``).
    """
    threads = max(int(os.environ.get("OMP_NUM_THREADS") or runtime["threads"]) // processes, 1)
    torch.set_num_threads(threads)
    rng_seed = seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(rng_seed)
    np.random.seed(rng_seed)
    torch.manual_seed(rng_seed)
    want = device_type(runtime["device"])
    if runtime["device"] == "auto" and want == "cpu":
        log.warning("runtime.device is 'auto' and no CUDA device is available: running on the CPU")
    device = torch.device(want)
    if want == "cuda" and processes > 1:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"data-parallel rank with LOCAL_RANK={local_rank} has no GPU of its own "
                               f"({torch.cuda.device_count()} visible); use at most that many processes")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if runtime["deterministic"] and want == "cuda":
        # CPU kernels are deterministic for a fixed thread count (tests/test_determinism.py);
        # the global switch costs ~2 s of imports (torch._inductor) per job, so only on GPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    log.info("device=%s threads=%d precision=%s seed=%d rank=%d/%d", device, threads, precision(runtime, device),
             seed, rank, processes)
    return device


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU instructions that compute bf16 natively


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo, its value; None where there is no such line or file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where there are none: then no native bf16 is assumed)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), "unknown" where there is none."""
    return _cpuinfo("model name") or "unknown"


def precision(runtime: dict, device: torch.device) -> str:
    """``runtime.precision`` resolved: 'auto' is bf16 where the device computes bf16 natively (a CPU with
    AVX512-BF16 or AMX, a GPU that supports it), else fp32. Measured (docs/performance.md): bf16 autocast
    trains cifar10-mini's compact net faster than fp32 on both CPUs with those flags seen here, but a
    WRN-16-2 slower on one of them: the global default stays fp32, a benchmark opts in."""
    want = runtime["precision"]
    if want != "auto":
        return want
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_flags() & set(BF16_CPU_FLAGS) else "fp32"


def autocast(runtime: dict, device: torch.device):
    """bf16 autocast when the resolved precision (:func:`precision`) is bf16."""
    if precision(runtime, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, runtime: dict, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if runtime["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model

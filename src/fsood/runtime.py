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


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), for the per-job start cost; None elsewhere."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where there are none: then no native bf16 is assumed)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), "unknown" where there is none."""
    return _cpuinfo("model name") or "unknown"


_AUTO: dict = {}  # this process's measured choice for its model (fsood.autotune), once prepare_model made it


def precision(runtime: dict, device: torch.device) -> str:
    """``runtime.precision`` resolved. 'auto': on a GPU, bf16 where it supports it; on a CPU, the choice
    :func:`prepare_model` measured for this machine and model (fsood.autotune), and before any model is
    prepared, bf16 where the CPU computes it natively (AVX512-BF16 or AMX) else fp32."""
    want = runtime["precision"]
    if want != "auto":
        return want
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if "precision" in _AUTO:
        return _AUTO["precision"]
    return "bf16" if cpu_flags() & set(BF16_CPU_FLAGS) else "fp32"


def channels_last(runtime: dict) -> bool:
    """``runtime.channels_last`` resolved: 'auto' is the measured choice (fsood.autotune), else True."""
    want = runtime["channels_last"]
    return _AUTO.get("channels_last", True) if want == "auto" else bool(want)


def auto_choice() -> dict:
    """What 'auto' resolved to in this process and the rates it rests on (provenance.json); {} if nothing."""
    return dict(_AUTO)


def autocast(runtime: dict, device: torch.device):
    """bf16 autocast when the resolved precision (:func:`precision`) is bf16."""
    if precision(runtime, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, runtime: dict, device: torch.device,
                  shape: tuple[int, ...] | None = None) -> torch.nn.Module:
    """``model`` on ``device`` in the run's memory format. Where ``runtime.precision`` or ``channels_last`` is
    'auto' on a CPU and the input ``shape`` (C, H, W) is given, the choice is measured for this machine and
    model, or read from the previous measurement (fsood.autotune), and logged."""
    model = model.to(device)
    auto = [k for k in ("precision", "channels_last") if runtime[k] == "auto"]
    if auto and device.type == "cpu" and shape is not None:
        from fsood import autotune

        native = bool(cpu_flags() & set(BF16_CPU_FLAGS))
        precisions = (["fp32", "bf16"] if native else ["fp32"]) if "precision" in auto else [runtime["precision"]]
        formats = [False, True] if "channels_last" in auto else [bool(runtime["channels_last"])]
        _AUTO.update(autotune.resolve(model, tuple(shape), cpu_model(), cpu_flags(), precisions, formats))
        log.info("runtime auto on %s: precision %s, channels_last %s (measured images/s: %s)", cpu_model(),
                 _AUTO["precision"], _AUTO["channels_last"], _AUTO["rates"])
    if channels_last(runtime):
        model = model.to(memory_format=torch.channels_last)
    return model

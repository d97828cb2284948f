"""Device, precision, threads and determinism: one place that sets them for every stage."""
from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def configure(runtime: dict, seed: int) -> torch.device:
    """Seed everything, pin the thread count, pick the device.

    Snakemake exports a rule's ``threads:`` as OMP_NUM_THREADS; we pass it on to torch
    explicitly so parallel jobs do not fight over the cores. Without it (``dvc repro``,
    a plain shell) ``runtime.threads`` from params.yaml applies.
    """
    threads = int(os.environ.get("OMP_NUM_THREADS") or runtime["threads"])
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    want = runtime["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if runtime["deterministic"] and want == "cuda":
        # CPU kernels are deterministic for a fixed thread count (tests/test_determinism.py);
        # the global switch costs ~2 s of imports (torch._inductor) per job, so only on GPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    log.info("device=%s threads=%d precision=%s seed=%d", want, threads, runtime["precision"], seed)
    return torch.device(want)


def autocast(runtime: dict, device: torch.device):
    """bf16 autocast when ``runtime.precision == 'bf16'`` (pays off for convolutions on AVX512-BF16)."""
    if runtime["precision"] == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, runtime: dict, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if runtime["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model

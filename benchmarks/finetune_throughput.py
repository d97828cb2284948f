"""Fine-tuning throughput: fsood's training data path vs. the paper's original PyTorch style.

    python benchmarks/finetune_throughput.py [--steps 30] [--threads 2] [--depth 40 --widen 2]
        [--workers 0] [--original-workers 4 ...] [--device cpu|cuda] [--precision fp32 [bf16]]

Images/s, where an image is one ID or one outlier image processed in a training step
(128 ID + 256 outliers per step, the paper's batches). Both paths train the same WRN from
the same init on the same seeded synthetic uint8 CIFAR-shaped data for one epoch of
``--steps`` steps, with the paper's objective (CE + 0.5 OE + L_clu + L_sep, stage II on)
and SGD (lr 0.07, momentum 0.9, Nesterov, wd 5e-4, cosine LR per step):

- fsood: ``fsood.train.train`` (uint8 batches in memory, batched augmentation,
  channels_last, vectorised losses);
- baseline: a Dataset that runs PIL + torchvision transforms per image, two zipped
  DataLoaders, NCHW model, L_clu as a Python loop over the batch (OE / energy-OOD style).
  Worker start-up is timed too: the original scripts re-create the iterators every epoch.

The "data path" rows time loading + augmentation + normalisation to a model-ready float
batch without the model, to show where the time goes (on a CPU the model dominates).

``--device cuda``: fsood keeps the uint8 data on the GPU and augments there (``train``);
the baseline runs the model on the GPU (NCHW, ``cudnn.benchmark`` as the original scripts)
and its DataLoaders pin memory, batches going over with ``non_blocking=True``. Timers are
read after ``torch.cuda.synchronize()``. ``--precision fp32 bf16`` times every path in each
precision (bf16: autocast, fsood through ``runtime.precision``); the original code is fp32,
so ratios are to the fp32 baseline with ``--workers`` workers. The "deterministic" fsood row
is fsood as its pipeline runs on CUDA with ``runtime.deterministic: true``.

``--concurrent 1 2 4``: N processes run fsood's fine-tuning epoch at once on the same device (N cells of
a grid sharing it, as ``resources.cells_per_gpu`` lets Snakemake do); each builds its own model and data,
waits at a barrier, then trains. Aggregate images/s = all images / (last end - first start). On the CPU
each process gets ``max(1, threads // N)`` threads (the cores are shared); on CUDA ``--threads`` each.
``--compile`` also times fsood's path with ``torch.compile`` (the compile time is excluded: it happens in
the warm-up step; reported on its own line).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # train()'s progress bar would clutter the table

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fsood.methods import make_objective
from fsood.models import WideResNet
from fsood.runtime import prepare_model
from fsood.train import augment_batch, normalizer, train

NORM = {"mean": [125.3 / 255, 123.0 / 255, 113.9 / 255], "std": [63.0 / 255, 62.1 / 255, 66.7 / 255]}
SEP = {"oe_weight": 0.5, "alpha": 1.0, "beta": 1.0, "detach_weight": True, "mean_over_classes": False}
RUNTIME = {"device": "cpu", "precision": "fp32", "channels_last": True, "deterministic": True,
           "threads": 2, "eval_batch_size": 512}
BS_IN, BS_OUT, LR, LR_MIN = 128, 256, 0.07, 1e-6
CPU = torch.device("cpu")


def sync(device: torch.device) -> None:
    """CUDA runs asynchronously: wait for the queued work before reading a timer."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def finetune_cfg() -> dict:
    return {"epochs": 1, "id_batch_size": BS_IN, "outlier_batch_size": BS_OUT, "lr": LR, "lr_min": LR_MIN,
            "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "augment": {"crop_padding": 4, "hflip": True}}


# ---- baseline: the original scripts' way --------------------------------------------------

class ImageSet(Dataset):
    """uint8 HWC images in memory, one PIL image per item (as torchvision.datasets.CIFAR10)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def original_transform(padding: int = 4, hflip: bool = True) -> T.Compose:
    ops = [T.RandomCrop(32, padding=padding)] if padding else []
    ops += [T.RandomHorizontalFlip()] if hflip else []
    return T.Compose(ops + [T.ToTensor(), T.Normalize(NORM["mean"], NORM["std"])])


def original_loaders(id_hwc, id_y, out_hwc, workers: int, bs_in: int = BS_IN, bs_out: int = BS_OUT,
                     pin_memory: bool = False):
    tf = original_transform()
    # pin_memory=True in the original; without CUDA it only warns, so pass it where it means something
    kw = {"shuffle": True, "num_workers": workers, "pin_memory": pin_memory}
    return (DataLoader(ImageSet(id_hwc, id_y, tf), batch_size=bs_in, **kw),
            DataLoader(ImageSet(out_hwc, np.zeros(len(out_hwc), np.int64), tf), batch_size=bs_out, **kw))


def looped_clustering_loss(z_in: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """L_clu as the authors' loop: one cosine per ID sample, W detached (fc.weight.data)."""
    w, loss = weight.detach(), 0.0
    for i in range(len(labels)):
        loss = loss - F.cosine_similarity(z_in[i], w[labels[i]], dim=0)
    return loss / len(labels)


def looped_separation_loss(z_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """L_sep = sum_i |cos(z_out, w_i)| (no 1/C), mean over outliers, one class at a time."""
    w, loss = weight.detach(), 0.0
    for i in range(len(w)):
        loss = loss + F.cosine_similarity(z_out, w[i][None], dim=1).abs().mean()
    return loss


def train_original(model: torch.nn.Module, in_loader: DataLoader, out_loader: DataLoader,
                   device: torch.device = CPU, precision: str = "fp32") -> int:
    """One epoch of the OE-style loop; returns the number of images processed."""
    total = len(in_loader)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    cosine = lambda s: LR_MIN / LR + (1 - LR_MIN / LR) * 0.5 * (1 + math.cos(math.pi * s / total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    model.train()
    loss_avg, seen = 0.0, 0
    for (x_in, y), (x_out, _) in zip(in_loader, out_loader):
        # to the device one pinned batch at a time (a torch.cat of pinned tensors is not
        # pinned); on the CPU these are no-ops
        x_in, x_out = x_in.to(device, non_blocking=True), x_out.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        data = torch.cat((x_in, x_out), 0)
        with amp(device, precision):
            logits, z = model(data, return_features=True)
        logits, z = logits.float(), z.float()  # no-ops in fp32
        k = len(x_in)
        loss = F.cross_entropy(logits[:k], y)
        loss += 0.5 * -(logits[k:].mean(1) - torch.logsumexp(logits[k:], dim=1)).mean()
        loss += looped_clustering_loss(z[:k], y, model.fc.weight) + looped_separation_loss(z[k:], model.fc.weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_avg = loss_avg * 0.8 + float(loss.detach()) * 0.2  # the original's running average (a sync per step)
        seen += len(data)
    return seen


def original_data_path(in_loader: DataLoader, out_loader: DataLoader, device: torch.device = CPU) -> int:
    seen = 0
    for (x_in, _), (x_out, _) in zip(in_loader, out_loader):
        seen += len(torch.cat((x_in.to(device, non_blocking=True), x_out.to(device, non_blocking=True)), 0))
    return seen


# ---- fsood --------------------------------------------------------------------------------

def fsood_data_path(id_x: np.ndarray, out_x: np.ndarray, steps: int, seed: int, device: torch.device = CPU) -> int:
    """The per-step data work of fsood.train.train, without the model (data moved once, draws on the CPU)."""
    gen, to_input = torch.Generator().manual_seed(seed), normalizer(NORM, device)
    xs, xo = torch.from_numpy(id_x).to(device), torch.from_numpy(out_x).to(device)
    perm = torch.randperm(len(xs), generator=gen).to(device, non_blocking=True)
    perm_out = torch.randperm(len(xo), generator=gen).to(device, non_blocking=True)
    seen = 0
    for i in range(steps):
        batch = torch.cat([xs[perm[i * BS_IN:(i + 1) * BS_IN]], xo[perm_out[i * BS_OUT:(i + 1) * BS_OUT]]])
        x = to_input(augment_batch(batch, 4, True, gen)).contiguous(memory_format=torch.channels_last)
        seen += len(x)
    return seen


def run_fsood(model: torch.nn.Module, id_x, id_y, out_x, seed: int, device: torch.device = CPU,
              precision: str = "fp32", compile_model: bool = False, barrier=None) -> tuple[int, float]:
    """fsood's epoch after a warm-up step; with ``barrier`` (concurrent runs), the timed epoch starts when
    every process is ready and the wall-clock start and end are returned instead of a duration."""
    runtime = dict(RUNTIME, device=device.type, precision=precision)
    model = prepare_model(model, runtime, device)
    net = torch.compile(model) if compile_model else model  # shares model's parameters
    objective = make_objective("sep", SEP, 0, lambda: model.fc.weight)  # stage2_epoch=0: L_clu, L_sep on
    fit = lambda x, y, o: train(net, x, y, finetune_cfg(), runtime, device, NORM, objective, seed, outlier_x=o)
    warm = time.perf_counter()
    fit(id_x[:BS_IN], id_y[:BS_IN], out_x[:BS_OUT])  # warm-up step (and the compilation)
    sync(device)
    if compile_model:
        print(f"torch.compile warm-up step: {time.perf_counter() - warm:.1f} s", flush=True)
    if barrier is not None:
        barrier.wait()
    start, wall_start = time.perf_counter(), time.time()
    fit(id_x, id_y, out_x)
    sync(device)
    if barrier is not None:
        return len(id_x) + len(out_x), (wall_start, time.time())
    return len(id_x) + len(out_x), time.perf_counter() - start


def _concurrent_cell(args, threads: int, barrier, results) -> None:
    """One of N concurrent processes: its own model and data (the same seed), then one timed epoch."""
    torch.set_num_threads(threads)
    RUNTIME["threads"] = threads
    device = torch.device(args.device)
    id_x, id_y, out_x = synthetic_data(args.seed, args.steps)
    torch.manual_seed(args.seed)
    model = WideResNet(3, 10, args.depth, args.widen, args.dropout)
    results.put(run_fsood(model, id_x, id_y, out_x, args.seed, device, args.concurrent_precision,
                          args.compile, barrier))


def concurrent_throughput(args, n: int) -> tuple[int, float]:
    """Images and wall seconds of ``n`` processes each training one epoch at once."""
    ctx = torch.multiprocessing.get_context("spawn")  # CUDA cannot be forked
    barrier, results = ctx.Barrier(n), ctx.Queue()
    threads = args.threads if args.device == "cuda" else max(1, args.threads // n)
    procs = [ctx.Process(target=_concurrent_cell, args=(args, threads, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    done = []
    while len(done) < n:  # a process that dies before reporting must not leave this waiting forever
        try:
            done.append(results.get(timeout=5))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise SystemExit("a concurrent process failed (its traceback is above)") from None
    for p in procs:
        p.join()
    images = sum(k for k, _ in done)
    return images, max(end for _, (_, end) in done) - min(start for _, (start, _) in done)


def synthetic_data(seed: int, steps: int):
    """Seeded uint8 CIFAR-shaped ID images, labels and outliers for ``steps`` steps."""
    rng = np.random.default_rng(seed)
    id_x = rng.integers(0, 256, (BS_IN * steps, 3, 32, 32), dtype=np.uint8)
    id_y = rng.integers(0, 10, len(id_x)).astype(np.int64)
    out_x = rng.integers(0, 256, (BS_OUT * steps, 3, 32, 32), dtype=np.uint8)
    return id_x, id_y, out_x


@contextlib.contextmanager
def deterministic_cuda():
    """What fsood.runtime.configure switches on for CUDA with runtime.deterministic: true."""
    bench = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = bench


def timed(fn, *args, device: torch.device = CPU) -> tuple[int, float]:
    sync(device)
    start = time.perf_counter()
    n = fn(*args)
    sync(device)
    return n, time.perf_counter() - start


def print_concurrent(args) -> None:
    """The aggregate throughput of N concurrent fine-tuning processes, for each N of ``--concurrent``."""
    rows = [(n, *concurrent_throughput(args, n)) for n in args.concurrent]
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu: {cpu_model()}, {os.cpu_count()} cores"
    print(f"\nconcurrent cells: WRN-{args.depth}-{args.widen} (dropout {args.dropout}), {args.concurrent_precision}"
          f"{', torch.compile' if args.compile else ''}, {args.steps} steps each, {where}, threads {args.threads} "
          f"{'each' if args.device == 'cuda' else 'shared'}\n")
    print("| processes at once | aggregate images/s | per process | seconds |\n|---:|---:|---:|---:|")
    for n, images, secs in rows:
        print(f"| {n} | {images / secs:.1f} | {images / secs / n:.1f} | {secs:.2f} |", flush=True)
    print()


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30, help="training steps per path (one epoch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--widen", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=0, help="baseline DataLoader workers (the reference row)")
    parser.add_argument("--original-workers", type=int, nargs="*", default=[4],
                        help="also time the baseline with these worker counts (the original scripts: 4)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], nargs="+", default=["fp32"],
                        help="time every path in each of these (the reference baseline row is always fp32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrent", type=int, nargs="*", default=[],
                        help="also time N processes training at once on the device, for each N given (e.g. 1 2 4)")
    parser.add_argument("--concurrent-precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="also time fsood's path with torch.compile")
    parser.add_argument("--only-concurrent", action="store_true", help="skip the fsood / baseline rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device available")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # for the deterministic row
        torch.backends.cudnn.benchmark = True  # as the original scripts; fixed shapes
    torch.set_num_threads(args.threads)
    RUNTIME["threads"] = args.threads
    precisions = list(dict.fromkeys(["fp32", *args.precision]))  # fp32 first: the reference
    load_before = os.getloadavg()  # other jobs on the machine skew the figures: report the load

    if args.concurrent:
        print_concurrent(args)
        if args.only_concurrent:
            return
    id_x, id_y, out_x = synthetic_data(args.seed, args.steps)
    # the original keeps CIFAR as HWC uint8 (PIL's layout); converting once is not timed
    id_hwc, out_hwc = id_x.transpose(0, 2, 3, 1).copy(), out_x.transpose(0, 2, 3, 1).copy()

    def build() -> torch.nn.Module:  # same init for every path
        torch.manual_seed(args.seed)
        return WideResNet(3, 10, args.depth, args.widen, args.dropout)

    workers = list(dict.fromkeys([args.workers, *args.original_workers]))

    def loaders(w: int, warm_up: bool = False):  # warm-up: one step's images
        n_in, n_out = (BS_IN, BS_OUT) if warm_up else (None, None)
        return original_loaders(id_hwc[:n_in], id_y[:n_in], out_hwc[:n_out], w, pin_memory=device.type == "cuda")

    rows = []  # (name, kind, precision, images, seconds)

    def add(name: str, kind: str, p: str, n: int, secs: float) -> None:
        rows.append((name, kind, p, n, secs))
        print(f"{name}: {n / secs:.1f} images/s ({secs:.2f} s)", flush=True)  # progress, kept if a later row fails

    for p in precisions:
        add(f"fsood train step ({p})", "train", p, *run_fsood(build(), id_x, id_y, out_x, args.seed, device, p))
        if args.compile:
            add(f"fsood train step ({p}, torch.compile)", "train", p,
                *run_fsood(build(), id_x, id_y, out_x, args.seed, device, p, compile_model=True))
    if device.type == "cuda":
        with deterministic_cuda():
            try:
                n, secs = run_fsood(build(), id_x, id_y, out_x, args.seed, device, "fp32")
                add("fsood train step (fp32, deterministic)", "train", "fp32", n, secs)
            except RuntimeError as e:  # report, don't lose the other rows
                print(f"fsood deterministic row failed: {e}", flush=True)
    for p in precisions:
        for w in workers:
            model = build().to(device)
            train_original(model, *loaders(0, warm_up=True), device, p)  # warm-up step (cudnn autotuning on CUDA)
            torch.manual_seed(args.seed)
            add(f"baseline train step ({p}, workers={w})", "train", p,
                *timed(train_original, model, *loaders(w), device, p, device=device))
    add("fsood data path only", "data", "-",
        *timed(fsood_data_path, id_x, out_x, args.steps, args.seed, device, device=device))
    for w in workers:
        add(f"baseline data path only (workers={w})", "data", "-",
            *timed(original_data_path, *loaders(w), device, device=device))
    print()
    # ratios are to the fp32 baseline with --workers (default 0), per kind of row
    ref = {kind: n / s for name, kind, p, n, s in rows
           if name.startswith("baseline") and p in ("fp32", "-") and f"workers={args.workers})" in name}
    where = f"cpu: {cpu_model()}, {os.cpu_count()} cores"
    if device.type == "cuda":
        where = (f"gpu: {torch.cuda.get_device_name(device)}, cuda {torch.version.cuda}, "
                 f"cudnn.benchmark={torch.backends.cudnn.benchmark}, "
                 f"tf32 conv/matmul={torch.backends.cudnn.allow_tf32}/{torch.backends.cuda.matmul.allow_tf32}, {where}")
    print(f"torch {torch.__version__}, threads={args.threads}, device={args.device}, {where}, "
          f"load avg 1/5/15 min before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {'/'.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"model WRN-{args.depth}-{args.widen} (dropout {args.dropout}), {'+'.join(precisions)}, {args.steps} steps "
          f"of {BS_IN} ID + {BS_OUT} outliers = {(BS_IN + BS_OUT) * args.steps} images per path\n")
    print(f"| path | images/s | seconds | ratio to fp32 baseline (workers={args.workers}) |\n|---|---:|---:|---:|")
    for name, kind, p, n, s in rows:
        print(f"| {name} | {n / s:.1f} | {s:.2f} | {n / s / ref[kind]:.2f}x |")
    fsood = {p: n / s for name, kind, p, n, s in rows if name == f"fsood train step ({p})"}
    print()
    for name, kind, p, n, s in rows:
        if name.startswith("baseline train"):
            print(f"fsood ({p}) / {name}: {fsood[p] / (n / s):.2f}x")
    ratio = fsood["fp32"] / ref["train"]
    print(f"\nfsood (fp32) / fp32 baseline (workers={args.workers}), training: {ratio:.2f}x "
          f"(target >= 3x: {'met' if ratio >= 3 else 'not met'})")


if __name__ == "__main__":
    main()

"""Training-step throughput on this CPU: fp32 vs bf16 autocast, with and without channels_last.

    python benchmarks/precision_speed.py [--threads 1] [--steps 20]

Measures images/s of forward+backward+SGD for the digits model (SmallCNN, 8x8, batch
64+128), a WRN-16-2 and cifar10-mini's compact nets (64-128-128, 64-256-256) at CIFAR shape
(32x32, batch 128+256, a fine-tuning step), so the runtime defaults in params.yaml rest on
numbers, not belief. ``--cases compact`` runs only the cases whose name holds that text.
Quote the CPU it prints beside the figures.
"""
from __future__ import annotations

import argparse
import time

import torch

from fsood.compact_net import CompactNet
from fsood.losses import FeatureSeparationLoss
from fsood.models import SmallCNN, WideResNet
from fsood.runtime import cpu_model


def throughput(model, shape, batch_in, batch_out, precision, channels_last, steps):
    torch.manual_seed(0)
    x = torch.randn(batch_in + batch_out, *shape)
    y = torch.randint(0, 5, (batch_in,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = FeatureSeparationLoss()
    def step():
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, z = model(x, return_features=True)
        else:
            logits, z = model(x, return_features=True)
        loss, _ = crit(logits.float(), z.float(), y, model.fc.weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(x) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", default="", help="only the cases whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [
        ("SmallCNN 1x8x8, batch 64+128", lambda: SmallCNN(1, 5, 32, 64), (1, 8, 8), 64, 128),
        ("WRN-16-2 3x32x32, batch 128+256", lambda: WideResNet(3, 10, 16, 2, 0.3), (3, 32, 32), 128, 256),
        ("compact 64-128-128, batch 128+256", lambda: CompactNet(3, 10, (64, 128, 128), True), (3, 32, 32), 128, 256),
        ("compact 64-256-256, batch 128+256", lambda: CompactNet(3, 10, (64, 256, 256), True), (3, 32, 32), 128, 256),
    ]
    print(f"CPU: {cpu_model()}, threads={args.threads}, torch {torch.__version__}")
    for name, build, shape, bi, bo in [c for c in cases if args.cases in c[0]]:
        steps = args.steps if "Small" in name else max(3, args.steps // 5)
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                ips = throughput(build(), shape, bi, bo, precision, cl, steps)
                print(f"{name:34s} {precision:5s} channels_last={str(cl):5s} {ips:9.0f} img/s")


if __name__ == "__main__":
    main()

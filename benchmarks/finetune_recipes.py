"""Fine-tuning protocols at CPU scale, judged on ID data and training losses only (never an OOD test set).

    python benchmarks/finetune_recipes.py --data DIR --model FILE [--candidates A,B] [--methods oe,sep]
                                          [--threads 2] [--seed 0]

Starts every candidate (a change of ``benchmarks.cifar10-mini.finetune``, below) from one pretrained model
(``--model``: a state dict of cifar10-mini's net, e.g. from ``benchmarks/pretrain_recipes.py --save`` or a
run's ``results/cifar10-mini/model0/pretrain/model.pt``) and fine-tunes it with each method through fsood's
own training loop. Prints per candidate and method: the ID test accuracy of the fine-tuned model (one view),
the pretrained model's for reference, the training losses of the first and the last epoch, the ID-train
accuracy and the wall time. The choice of protocol rests on these columns alone: the OOD test sets are not
loaded. Energy-OE's margins come from the pretrained model's energies (fsood.margins) as in the pipeline.
Quote the CPU (printed) beside the times. Results go to ``benchmarks/out/finetune_recipes.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from fsood import runtime as rt  # noqa: E402
from fsood.config import method_params  # noqa: E402
from fsood.datasets import BenchmarkData  # noqa: E402
from fsood.inference import forward_pass, take  # noqa: E402
from fsood.margins import ENERGY_SAMPLES, energy_summary, margins  # noqa: E402
from fsood.methods import make_objective  # noqa: E402
from fsood.models import build_model, load_state  # noqa: E402
from fsood.subsets import balanced_subset  # noqa: E402
from fsood.train import NonFiniteLoss, train  # noqa: E402

BENCHMARK = "cifar10-mini"
# Each candidate is a change of the finetune section of params.yaml; the first is cifar10-mini's protocol before
# (a fixed 3,000-image subset), the others build on "stream" (all 50,000 images, 24 steps an epoch).
SUBSET = {"epochs": 6, "stage2_epoch": 3, "id_samples": 3000, "steps_per_epoch": None, "lr": 0.07,
          "augment": {"crop_padding": 4, "hflip": True, "padding_mode": "zeros"}, "batchnorm": "train",
          "bn_momentum": None, "label_smoothing": 0.0}
STREAM = {**SUBSET, "id_samples": None, "steps_per_epoch": 24}
AUGMENT = {**STREAM, "augment": {"crop_padding": 2, "hflip": True, "padding_mode": "reflect"}}  # pretraining's
CANDIDATES = {
    "subset": SUBSET,
    "stream": STREAM,
    "pretrain-augment": AUGMENT,
    "bn-frozen": {**AUGMENT, "batchnorm": "frozen"},
    "bn-momentum-0.1": {**AUGMENT, "bn_momentum": 0.1},
    "label-smoothing": {**AUGMENT, "label_smoothing": 0.2},
    "lr-0.02": {**AUGMENT, "lr": 0.02},
    "lr-0.01": {**AUGMENT, "lr": 0.01},
    "lr-0.01-bn-frozen": {**AUGMENT, "lr": 0.01, "batchnorm": "frozen"},
    "lr-0.01-label-smoothing": {**AUGMENT, "lr": 0.01, "label_smoothing": 0.2},
}


def finetune_cfg(base: dict, names: list[str]) -> dict[str, dict]:
    """Each candidate's whole finetune section: ``base`` (params.yaml's) with the candidate's values."""
    return {name: {**base, **CANDIDATES[name]} for name in names}


def energies(model, data: BenchmarkData, x, runtime, device, norm) -> dict:
    """energies.json as the subspace stage writes it (fsood.stages.subspace), for Energy-OE's margins."""
    from fsood.stages.subspace import OUTLIER_SAMPLE_SEED

    xo, _ = data.load("outliers")
    keep = np.sort(np.random.default_rng(OUTLIER_SAMPLE_SEED).choice(len(xo), min(ENERGY_SAMPLES, len(xo)),
                                                                      replace=False))
    return {"id_train": energy_summary(forward_pass(model, x, runtime, device, norm)[0]),
            "outliers": energy_summary(forward_pass(model, take(xo, keep), runtime, device, norm)[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cifar10-mini's data folder (the data stage's)")
    parser.add_argument("--model", type=Path, required=True, help="the pretrained model's state dict")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"of: {', '.join(CANDIDATES)}")
    parser.add_argument("--methods", default="oe,sep")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--energy-quantiles", default="",
                        help="energy_oe only: 'qin:qout,qin:qout' margin quantile pairs to try (fsood.margins)")
    args = parser.parse_args()
    names, methods = args.candidates.split(","), args.methods.split(",")
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; valid: {list(CANDIDATES)}")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    bench = params["benchmarks"][BENCHMARK]
    norm = bench["data"]["normalize"]
    runtime = {**params["runtime"], **bench["runtime"], "threads": args.threads}
    os.environ.pop("OMP_NUM_THREADS", None)
    device = rt.configure(runtime, args.seed)
    data = BenchmarkData(args.data)
    x, y = data.load("id_train")
    xt, yt = data.load("id_test")
    outliers, _ = data.load("outliers")

    def fresh():
        model = build_model(bench["model"], data.in_channels, data.num_classes)
        return rt.prepare_model(load_state(model, args.model), runtime, device)

    def accuracy(model) -> float:
        return float((forward_pass(model, xt, runtime, device, norm)[0].argmax(1) == yt).mean())

    start_model = fresh()
    start_acc = accuracy(start_model)
    energy = energies(start_model, data, x, runtime, device, norm)
    print(f"CPU: {rt.cpu_model()}, {args.threads} threads, precision {rt.precision(runtime, device)}; pretrained "
          f"model {args.model.name}: ID test accuracy {start_acc:.4f}; energies: ID-train median "
          f"{energy['id_train']['quantiles'][50]:.3f}, outlier median {energy['outliers']['quantiles'][50]:.3f}",
          flush=True)
    rows = []
    for name, cfg in finetune_cfg(bench["finetune"], names).items():
        keep = balanced_subset(y, cfg["id_samples"]) if cfg["id_samples"] else np.arange(len(y))
        variants = [(m, {}) for m in methods if not (m == "energy_oe" and args.energy_quantiles)]
        variants += [("energy_oe", {"margins": "pretrained", "m_in_quantile": float(a), "m_out_quantile": float(b)})
                     for a, b in (pair.split(":") for pair in args.energy_quantiles.split(",") if pair)]
        for method, change in variants:
            mcfg = {**method_params(params, BENCHMARK, method), **change}
            if "margins" in mcfg:
                m_in, m_out = margins(mcfg, energy)
                mcfg = {**mcfg, "m_in": m_in, "m_out": m_out}
            torch.manual_seed(args.seed)
            model = fresh()
            objective = make_objective(method, mcfg, cfg["stage2_epoch"], lambda: model.fc.weight,
                                       head_fn=lambda: model.fc, seed=args.seed,
                                       label_smoothing=cfg["label_smoothing"])
            began = time.perf_counter()
            try:
                history = train(model, x[keep], y[keep], cfg, runtime, device, norm, objective, args.seed,
                                outlier_x=outliers, desc=f"{name} {method}")
            except NonFiniteLoss as err:  # a candidate that diverges is a result too
                rows.append({"candidate": name, "method": method, "diverged": str(err), "finetune": cfg})
                print(f"{name:18s} {method:10s} DIVERGED: {err}", flush=True)
                continue
            wall = time.perf_counter() - began
            acc = accuracy(model)
            terms = [k for k in ("ce", "oe", "energy", "clu", "sep", "ood_abs_cos") if k in history[-1]]
            row = {"candidate": name, "method": method, "margins": {k: mcfg[k] for k in ("m_in", "m_out")
                                                                   if k in mcfg}, "id_test_acc": round(acc, 4),
                   "pretrained_acc": round(start_acc, 4), "id_train_acc_last_epoch": round(history[-1]["id_train_acc"], 4),
                   "first_epoch": {k: round(history[0][k], 4) for k in terms},
                   "last_epoch": {k: round(history[-1][k], 4) for k in terms},
                   "steps": sum(1 for _ in range(cfg["epochs"])) * (cfg["steps_per_epoch"] or -(-len(keep) // cfg["id_batch_size"])),
                   "wall_s": round(wall, 1), "finetune": cfg}
            rows.append(row)
            label = method + (f" m_in {mcfg['m_in']:.2f} m_out {mcfg['m_out']:.2f}" if "m_in" in mcfg else "")
            print(f"{name:18s} {label:10s} ID test acc {acc:.4f} ({acc - start_acc:+.4f})  train acc "
                  f"{row['id_train_acc_last_epoch']:.4f}  first {row['first_epoch']}  last {row['last_epoch']}  "
                  f"{row['steps']} steps, {wall:.0f} s", flush=True)
    out = ROOT / "benchmarks/out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "finetune_recipes.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    record = {"cpu": rt.cpu_model(), "threads": args.threads, "model": str(args.model), "energies": energy,
              "rows": rows}
    path.write_text(json.dumps({"runs": old + [record]}, indent=1) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()

"""ID test accuracy and NC1 against CPU-minutes, for the pretraining recipes tried on CIFAR-10.

    python benchmarks/pretrain_recipes.py [--data DIR] [--candidates A,B] [--epochs N] [--threads 2]

Trains each candidate (a model and a pretraining section of params.yaml, below) with fsood's own
training loop on all 50,000 CIFAR-10 training images (the JPEG copy), to the end of an N-epoch
schedule, and after every epoch prints: training seconds so far (wall and process CPU, evaluation
excluded), accuracy on the 10,000 test images, and NC1 of the ID-train features (a fixed
class-balanced 10,000 of them). ``--data`` is a data folder the data stage wrote for a benchmark whose
``id.count`` is null (all images); without it the data stage builds one in a temporary workspace
(about 30 s from the mirror). Quote the CPU (``lscpu``) beside the figures: they hold for this CPU only.
Results go to ``benchmarks/out/pretrain_recipes.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from _workspace import edit_params, make_workspace, mirror_dir  # noqa: E402

from fsood import nc  # noqa: E402
from fsood import runtime as rt  # noqa: E402
from fsood.datasets import BenchmarkData  # noqa: E402
from fsood.inference import forward_pass  # noqa: E402
from fsood.io import save_state_dict  # noqa: E402
from fsood.methods import pretrain_objective  # noqa: E402
from fsood.models import build_model  # noqa: E402
from fsood.stages.pretrain import whitening_sample  # noqa: E402
from fsood.subsets import balanced_subset  # noqa: E402
from fsood.train import train  # noqa: E402

BENCHMARK = "cifar10-mini"
NC1_SAMPLES = 10_000
# airbench94's optimiser in mean-loss terms (fsood/recipe.py): lr 1.5 and weight decay 0.0020 / 1.5 per
# 1,024 images, momentum 0.85, label smoothing 0.2, warmup over 23 % of the steps from 0.2 to 1, then
# linearly to 0.07; BatchNorm shifts at 64 times the LR; translate by 2 pixels and flip.
FAST = {"label_smoothing": 0.2, "warmup_fraction": 0.23, "lr_start_factor": 0.2, "lr_end_factor": 0.07,
        "bn_bias_lr_scale": 64.0, "lookahead": None, "whiten_bias_epochs": None, "muon": None}
FAST_SGD = {"batch_size": 1024, "lr": 1.5, "lr_min": 0.0, "momentum": 0.85, "nesterov": True,
            "weight_decay": 0.0020 / 1.5, "augment": {"crop_padding": 2, "hflip": True, "padding_mode": "zeros"},
            "fast_recipe": FAST}
# airbench94's remaining pieces: lookahead (every 5 steps, decay 0.95 ** 5 x (step / total) ** 3), the whitening
# bias trained for 3 epochs, translation by reflection
AIRBENCH = {**FAST, "lookahead": {"every": 5, "decay": 0.95 ** 5, "power": 3.0}, "whiten_bias_epochs": 3}
AIRBENCH_SGD = {**FAST_SGD, "augment": {"crop_padding": 2, "hflip": True, "padding_mode": "reflect"},
                "fast_recipe": AIRBENCH}
MUON = {"lr": 0.24, "momentum": 0.6}
# the plain recipe cifar10-mini used before (OE / energy-OOD's pretraining: lr 0.1, batch 128, cosine)
PLAIN_SGD = {"batch_size": 128, "lr": 0.1, "lr_min": 0.0, "momentum": 0.9, "nesterov": True,
             "weight_decay": 5e-4, "augment": {"crop_padding": 4, "hflip": True, "padding_mode": "zeros"},
             "fast_recipe": None}
COMPACT = {"arch": "compact", "widths": [64, 256, 256], "dropout": 0.0, "flip_average": True}
CANDIDATES = {
    "wrn-10-1-plain": ({"arch": "wrn", "depth": 10, "widen": 1, "dropout": 0.0}, PLAIN_SGD),
    "compact-64-128-128-fast": ({"arch": "compact", "widths": [64, 128, 128], "dropout": 0.0, "flip_average": False},
                                FAST_SGD),
    "compact-64-128-128-fast-flip": ({"arch": "compact", "widths": [64, 128, 128], "dropout": 0.0,
                                      "flip_average": True}, FAST_SGD),
    "compact-64-256-256-fast-flip": ({"arch": "compact", "widths": [64, 256, 256], "dropout": 0.0,
                                      "flip_average": True}, FAST_SGD),
    "compact-64-256-256-airbench": (COMPACT, AIRBENCH_SGD),
    # airbench94_muon.py's optimiser for the filters (Muon, lr 0.24, momentum 0.6); SGD for the rest as above
    "compact-64-256-256-airbench-muon": (COMPACT, {**AIRBENCH_SGD, "fast_recipe": {**AIRBENCH, "muon": MUON}}),
    "compact-64-256-256-airbench-muon-no-lookahead": (COMPACT, {**AIRBENCH_SGD, "fast_recipe": {
        **AIRBENCH, "muon": MUON, "lookahead": None}}),
    "compact-64-256-256-airbench-muon-altflip": (COMPACT, {
        **AIRBENCH_SGD, "fast_recipe": {**AIRBENCH, "muon": MUON},
        "augment": {"crop_padding": 2, "hflip": "alternate", "padding_mode": "reflect"}}),
    "compact-64-256-256-airbench-muon-bs512": (COMPACT, {
        **AIRBENCH_SGD, "fast_recipe": {**AIRBENCH, "muon": MUON}, "batch_size": 512, "lr": 1.5 / 2 ** 0.5}),
    "compact-64-256-256-airbench-no-lookahead": (COMPACT, {**AIRBENCH_SGD, "fast_recipe": {**AIRBENCH, "lookahead": None}}),
    "compact-64-256-256-airbench-zero-pad": (COMPACT, {**AIRBENCH_SGD, "augment": FAST_SGD["augment"]}),
    "compact-64-256-256-airbench-whiten-bias-all": (COMPACT, {**AIRBENCH_SGD,
                                                              "fast_recipe": {**AIRBENCH, "whiten_bias_epochs": None}}),
    "compact-64-128-128-plain": ({"arch": "compact", "widths": [64, 128, 128], "dropout": 0.0, "flip_average": True},
                                 {**FAST_SGD, "fast_recipe": None, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
}


def build_data(tmp: Path) -> Path:
    """All of CIFAR-10 (the cifar10-mini declaration with ``id.count`` null), built by the data stage."""
    ws = make_workspace(tmp / "ws", git=False)
    edit_params(ws, **{"grid.benchmarks": [BENCHMARK],
                       f"benchmarks.{BENCHMARK}.data.id.count": {"train": None, "test": None}})
    env = dict(os.environ, PYTHONPATH=str(ws / "src"))
    if mirror_dir() is not None:
        env["FSOOD_MIRROR"] = str(mirror_dir())
    subprocess.run([sys.executable, "-m", "fsood", "data", "--benchmark", BENCHMARK], cwd=ws, env=env, check=True)
    return ws / "data" / BENCHMARK


def test_views(model, xt, runtime, device, norm) -> dict:
    """Test logits with one view, the mean over the image and its mirror image, and airbench's 6-view TTA
    (``tta_level=2``: half the flip mean, a quarter each of the flip means of the image translated by one
    pixel up-left and down-right, reflect-padded)."""
    had = getattr(model, "flip_average", None)
    out = {}
    for name, flip in (("single", False), ("flip", True)):
        if had is not None:
            model.flip_average = flip
        out[name] = forward_pass(model, xt, runtime, device, norm)[0]
    padded = np.pad(xt, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = xt.shape[2:]
    shifted = [forward_pass(model, np.ascontiguousarray(padded[:, :, r:r + h, c:c + w]), runtime, device, norm)[0]
               for r, c in ((0, 0), (2, 2))]
    out["flip_translate"] = 0.5 * out["flip"] + 0.25 * (shifted[0] + shifted[1])
    if had is not None:
        model.flip_average = had
    return out


def run_candidate(name: str, data: BenchmarkData, norm: dict, epochs: int, runtime: dict, seed: int,
                  save: Path | None = None) -> list[dict]:
    model_cfg, sgd = CANDIDATES[name]
    cfg = {**copy.deepcopy(sgd), "epochs": epochs, "schedule_epochs": epochs, "checkpoint": None}
    device = rt.configure(runtime, seed)
    x, y = data.load("id_train")
    xt, yt = data.load("id_test")
    nc_rows = balanced_subset(y, NC1_SAMPLES)
    model = build_model(model_cfg, data.in_channels, data.num_classes)
    if hasattr(model, "init_whitening"):
        model.init_whitening(whitening_sample(x, norm))
    model = rt.prepare_model(model, runtime, device)
    label_smoothing = (cfg["fast_recipe"] or {}).get("label_smoothing", 0.0)
    rows: list[dict] = []
    clock = {"wall": time.perf_counter(), "cpu": time.process_time(), "eval_wall": 0.0, "eval_cpu": 0.0}

    def evaluate(epoch: int, history_row: dict) -> None:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        views = test_views(model, xt, runtime, device, norm)
        logits = views["flip"] if model_cfg.get("flip_average") else views["single"]
        train_logits, feats = forward_pass(model, x[nc_rows], runtime, device, norm)
        weight = model.fc.weight.detach().cpu().double().numpy()
        metrics = nc.nc_metrics(feats, y[nc_rows], weight, model.fc.bias.detach().cpu().double().numpy())
        row = {"candidate": name, "epoch": epoch + 1, "of": epochs,
               "train_wall_s": round(start_wall - clock["wall"] - clock["eval_wall"], 1),
               "train_cpu_s": round(start_cpu - clock["cpu"] - clock["eval_cpu"], 1),
               "test_acc": round(float((logits.argmax(1) == yt).mean()), 4),
               **{f"test_acc_{k}": round(float((v.argmax(1) == yt).mean()), 4) for k, v in views.items()},
               "train_acc_subset": round(float((train_logits.argmax(1) == y[nc_rows]).mean()), 4),
               "nc1": round(metrics["nc1"], 3)}
        clock["eval_wall"] += time.perf_counter() - start_wall
        clock["eval_cpu"] += time.process_time() - start_cpu
        rows.append(row)
        print(f"{name:26s} epoch {row['epoch']:>2}/{epochs}  {row['train_wall_s'] / 60:6.2f} min wall "
              f"({row['train_cpu_s'] / 60:6.2f} CPU-min)  test acc {row['test_acc']:.4f} (one view "
              f"{row['test_acc_single']:.4f}, flip {row['test_acc_flip']:.4f}, flip + translate "
              f"{row['test_acc_flip_translate']:.4f})  NC1 {row['nc1']:.3f}",
              flush=True)

    train(model, x, y, cfg, runtime, device, norm, pretrain_objective(label_smoothing), seed, desc=name,
          after_epoch=evaluate)
    if save is not None:  # e.g. to try fine-tuning recipes on it (benchmarks/finetune_recipes.py)
        save.mkdir(parents=True, exist_ok=True)
        save_state_dict(save / f"{name}-seed{seed}.pt", {k: v.cpu() for k, v in model.state_dict().items()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a data folder of all CIFAR-10 (default: build one)")
    parser.add_argument("--candidates", default="compact-64-128-128-fast",
                        help=f"comma-separated, of: {', '.join(CANDIDATES)}")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="write each trained model here as <candidate>-seed<S>.pt")
    args = parser.parse_args()
    names = args.candidates.split(",")
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; valid: {list(CANDIDATES)}")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    norm = params["benchmarks"][BENCHMARK]["data"]["normalize"]
    runtime = {**params["runtime"], "threads": args.threads, "precision": args.precision, "channels_last": True}
    os.environ.pop("OMP_NUM_THREADS", None)  # --threads decides
    with tempfile.TemporaryDirectory(prefix="fsood-recipes-") as tmp:
        data = BenchmarkData(args.data or build_data(Path(tmp)))
        if len(data.load("id_train")[1]) != 50_000:
            raise SystemExit(f"{data.folder}: id_train must hold all 50,000 CIFAR-10 images (id.count null)")
        model_name = rt.cpu_model()
        print(f"CPU: {model_name}, {args.threads} threads, precision {args.precision} "
              f"(resolved: {rt.precision(runtime, torch.device('cpu'))}), torch {torch.__version__}", flush=True)
        rows = [r for name in names for r in run_candidate(name, data, norm, args.epochs, runtime, args.seed, args.save)]
    out = ROOT / "benchmarks/out"
    out.mkdir(parents=True, exist_ok=True)
    record = {"cpu": model_name, "machine": platform.machine(), "threads": args.threads,
              "precision": rt.precision(runtime, torch.device("cpu")), "rows": rows}
    path = out / "pretrain_recipes.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    path.write_text(json.dumps({"runs": old + [record]}, indent=1) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()

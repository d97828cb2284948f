"""Prepared GPU check: the `cifar10-tin` benchmark for `none`, `oe` and `sep`, one seed, through Snakemake.

Here (a machine with the mirror), once:

    python benchmarks/gpu_check.py --prepare            # copy the two archives into .gpu-mirror/, verify them

On the GPU machine (a copy of the checkout plus .gpu-mirror/, no ../shared):

    python benchmarks/gpu_check.py --device cuda [--epoch-scale 0.1] [--cells-per-gpu 2] [--budget-s 540]

The GPU machine gets 64 MiB: the two archives take 59.2 MiB, and Snakemake's wheels with the ones it
imports that its image lacks (pulp's 16.4 MB, SQLAlchemy's 3.4 MB, pydantic-core's 2 MB, ...) would not fit
beside them. There `--runner auto` runs the stage contract's commands (the ones Snakemake's rules run) stage
by stage, `--cells-per-gpu` jobs at once, and says so; where Snakemake is installed it runs Snakemake.

It makes a throw-away workspace (`.gpu-check/`: Snakefile, workflow, profiles, src, and params.yaml with
the edits below), runs `snakemake --cores C --resources gpu_slots=S all` there, and writes its small outputs
to `reports/gpu-check/` (summary.md / .json, metrics.json of every cell, nc.json, timings.json, check.txt;
no checkpoints). What it changes in `cifar10-tin`, all printed:

- the grid: cifar10-tin x {none, oe, sep} x seed 0;
- the OOD sets: textures (DTD-10, 119 MB) is dropped, the GPU machine gets only CIFAR-10 and Tiny ImageNet
  (Fig. 2 then shows tin_holdout); the other sets come from those two archives, the bundled digits and the
  synthetic generators;
- `--epoch-scale s` (1 = the paper's schedule): pretraining stops after round(100 s) epochs of a
  round(200 s)-epoch cosine schedule, fine-tuning runs round(50 s) epochs with stage II from round(25 s);
- `--cap N` (tests only): at most N images in each set; `--depth/--widen`: the WRN (paper: 40, 2);
- `--cells-per-gpu N`: benchmarks.cifar10-tin.resources.cells_per_gpu, N cells share the GPU.

The archives are verified against the registry's sha256 before anything runs (a missing or altered copy
is an error naming the file).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the GPU machine has no fsood installed: the checkout's copy

from fsood import contract  # noqa: E402
from fsood.contract import GPU_SLOTS  # noqa: E402
from fsood.datasets import registry  # noqa: E402
from fsood.io import write_json, write_text  # noqa: E402

BENCH = "cifar10-tin"
METHODS = ["oe", "sep"]  # and the pretrained model as it is (none), scored once
SOURCES = ("cifar10-jpg", "tinyimagenet32")  # what the GPU machine gets (62 MB of the 64 MiB it may carry)
DROPPED = ("textures",)  # DTD-10, 119 MB: stays out
PROJECTION = "tin_holdout"
FULL = {"pretrain": 100, "schedule": 200, "finetune": 50, "stage2": 25}  # the paper's text (params.yaml)
WORKSPACE_FILES = ["Snakefile", "params.yaml"]
WORKSPACE_DIRS = ["workflow", "profiles", "src"]


class CheckError(SystemExit):
    """A refusal with its reason (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"gpu_check: error: {message}")


# ---------------------------------------------------------------------------- archives

def prepare(source_mirror: Path, dest: Path) -> None:
    """Copy the two archives from ``source_mirror`` into ``dest`` (skipped when already there and
    verified), then verify them by the registry's sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        source = registry.get_source(name)
        src, target = source_mirror / source.filename, dest / source.filename
        if not src.is_file():
            raise CheckError(f"{src}: not found (the mirror must hold {source.filename})")
        if not target.is_file() or target.stat().st_size != src.stat().st_size:
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(src, partial)
            partial.replace(target)
    verify(dest)


def verify(mirror: Path) -> list[str]:
    """Each archive's sha256 against the registry; returns one line a source."""
    lines = []
    for name in SOURCES:
        source = registry.get_source(name)
        path = mirror / source.filename
        if not path.is_file():
            raise CheckError(f"{path}: missing; run `python benchmarks/gpu_check.py --prepare` where the mirror is")
        try:
            how = registry.verify(source, path)
        except Exception as e:  # the registry names the expected and actual digests
            raise CheckError(f"{path}: {e}") from None
        lines.append(f"{name}: {path.name} ({path.stat().st_size / 1e6:.1f} MB) verified by {how}")
    return lines


# ---------------------------------------------------------------------------- params

def scaled_schedule(scale: float) -> dict[str, int]:
    """Epoch counts at ``scale`` of the paper's schedule (at least one epoch each)."""
    if not 0 < scale <= 1:
        raise CheckError(f"--epoch-scale must be in (0, 1], got {scale}")
    pre = max(1, round(FULL["pretrain"] * scale))
    fine = max(1, round(FULL["finetune"] * scale))
    return {"pretrain": pre, "schedule": max(pre, round(FULL["schedule"] * scale)), "finetune": fine,
            "stage2": min(fine - 1, round(FULL["stage2"] * scale)) if fine > 1 else 0}


def check_params(params: dict, args: argparse.Namespace, mirror: Path) -> dict:
    """params.yaml edited for the check (see the module docstring)."""
    bench = params["benchmarks"][BENCH]
    sched = scaled_schedule(args.epoch_scale)
    params["grid"] = {"benchmarks": [BENCH], "pretrain_seeds": [0], "methods": METHODS, "seeds": [0]}
    params["runtime"].update(device=args.device, precision=args.precision, threads=args.threads)
    params["datasets"] = {"mirrors": [str(mirror)], "download_dir": "data/downloads"}
    sets = bench["data"]["ood_sets"]
    for name in DROPPED:
        sets.pop(name, None)
    params["report"]["projection_ood"][BENCH] = PROJECTION
    bench["pretrain"].update(epochs=sched["pretrain"], schedule_epochs=sched["schedule"])
    bench["finetune"].update(epochs=sched["finetune"], stage2_epoch=sched["stage2"])
    bench["model"].update(depth=args.depth, widen=args.widen)
    bench.setdefault("resources", {})["cells_per_gpu"] = args.cells_per_gpu
    if args.cap:
        data = bench["data"]
        data["id"]["count"] = {"train": args.cap, "test": args.cap}
        data["outliers"]["count"] = args.cap
        for spec in sets.values():
            spec["count"] = args.cap
    return params


def make_workspace(ws: Path, params: dict) -> None:
    """A fresh copy of what Snakemake needs (never the checkout's results) with the check's params."""
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    for name in WORKSPACE_FILES:
        shutil.copy2(ROOT / name, ws / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in WORKSPACE_DIRS:
        shutil.copytree(ROOT / name, ws / name, ignore=skip)
    write_text(ws / "params.yaml", yaml.safe_dump(params, sort_keys=False))


# ---------------------------------------------------------------------------- run

def job_env(ws: Path, mirror: Path) -> dict:
    return dict(os.environ, FSOOD_MIRROR=str(mirror), TQDM_DISABLE="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def run_snakemake(ws: Path, args: argparse.Namespace, mirror: Path) -> float:
    """Snakemake on the workspace; returns its wall time. Past ``--budget-s`` it is stopped."""
    # one GPU: GPU_SLOTS slots; each job takes GPU_SLOTS // cells_per_gpu of them (fsood.contract.gpu_slots).
    # The target first: --resources and --quiet take every word after them.
    cmd = [sys.executable, "-m", "snakemake", "all", "--cores", str(args.cores), "--resources", f"gpu_slots={GPU_SLOTS}",
           "--quiet", "rules"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ws, env=job_env(ws, mirror), timeout=args.budget_s, capture_output=True,
                              text=True)
    except subprocess.TimeoutExpired:
        raise CheckError(f"snakemake ran past --budget-s {args.budget_s}: lower --epoch-scale") from None
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise CheckError(f"snakemake failed (exit {proc.returncode}); logs in {ws / 'logs'}")
    return time.perf_counter() - start


def direct_plan(params: dict) -> list[list[tuple[str, str]]]:
    """The contract's jobs (the commands Snakemake's rules run), one list a stage in stage order:
    (log file, command). A stage's jobs only read earlier stages' outputs."""
    waves: dict[str, list] = {}
    for stage_, cell in contract.jobs(params):
        waves.setdefault(stage_.name, []).append((stage_.log(**cell), stage_.command(**cell)))
    return list(waves.values())


def run_direct(ws: Path, args: argparse.Namespace, mirror: Path, params: dict) -> float:
    """Without Snakemake (the GPU machine cannot carry it beside the archives: docs/benchmarks.md): the same commands,
    stage by stage, ``--cells-per-gpu`` jobs of a stage at once. Returns the wall time."""
    why = "snakemake is not installed" if not has_snakemake() else "--runner direct"
    print(f"{why}: running the contract's commands directly, {args.cells_per_gpu} at once", flush=True)
    start, env = time.perf_counter(), job_env(ws, mirror)
    for wave in direct_plan(params):
        for i in range(0, len(wave), args.cells_per_gpu):
            batch = wave[i:i + args.cells_per_gpu]
            for log, _ in batch:
                (ws / log).parent.mkdir(parents=True, exist_ok=True)
            procs = [(cmd, subprocess.Popen(cmd, shell=True, cwd=ws, env=env)) for _, cmd in batch]
            left = args.budget_s - (time.perf_counter() - start)
            for cmd, proc in procs:
                try:
                    code = proc.wait(timeout=max(1.0, left))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise CheckError(f"ran past --budget-s {args.budget_s}: lower --epoch-scale") from None
                if code:
                    raise CheckError(f"`{cmd}` failed (exit {code}); logs in {ws / 'logs'}")
    return time.perf_counter() - start


def has_snakemake() -> bool:
    return importlib.util.find_spec("snakemake") is not None


STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def job_seconds(log: Path) -> float | None:
    """From a job's first to its last timestamped log line (the job's work, torch import excluded)."""
    stamps = [m.group(1) for line in log.read_text().splitlines() if (m := STAMP.match(line))]
    if len(stamps) < 2:
        return None
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in (stamps[0], stamps[-1]))
    return round((last - first).total_seconds(), 1)


def timings(ws: Path, wall: float, sched: dict, args: argparse.Namespace) -> dict:
    jobs = {f"{log.parent.name}/{log.stem}": job_seconds(log) for log in sorted((ws / "logs").glob("*/*.log"))}
    per_epoch = {}
    pre = jobs.get(f"pretrain/{BENCH}-0")  # the log of pretrained model 0
    if pre:
        per_epoch["pretrain"] = pre / sched["pretrain"]
    fine = [jobs[k] for k in jobs if k.startswith("finetune/") and jobs[k]]
    if fine:
        per_epoch["finetune"] = max(fine) / sched["finetune"]
    full = (per_epoch.get("pretrain", 0) * FULL["pretrain"] + per_epoch.get("finetune", 0) * FULL["finetune"])
    return {"wall_s": round(wall, 1), "epoch_scale": args.epoch_scale, "schedule": sched,
            "cells_per_gpu": args.cells_per_gpu, "runner": args.runner, "device": args.device, "precision": args.precision,
            "model": f"WRN-{args.depth}-{args.widen}", "cap": args.cap, "jobs_s": jobs,
            "seconds_per_epoch": {k: round(v, 2) for k, v in per_epoch.items()},
            # pretraining then the slowest fine-tuning cell (the others run beside it)
            "full_schedule_estimate_s": round(full, 1) if per_epoch else None}


# ---------------------------------------------------------------------------- outputs

def metrics_file(method: str) -> Path:
    """A cell's metrics.json: the pretrained model's own (none) or a fine-tuned one of seed 0."""
    if method == "none":
        return contract.out("score_pretrained", "metrics", benchmark=BENCH, pretrain_seed=0)
    return contract.out("score", "metrics", benchmark=BENCH, pretrain_seed=0, method=method, seed=0)


def collect(ws: Path, out: Path, timing: dict, header: list[str]) -> str:
    """Copy the small outputs to ``out`` and return the printed report."""
    out.mkdir(parents=True, exist_ok=True)
    reports = ws / contract.out("report", "summary", benchmark=BENCH).parent
    for name in ("summary.md", "summary.json"):
        shutil.copyfile(reports / name, out / name)
    metrics = {m: json.loads((ws / metrics_file(m)).read_text()) for m in ["none", *METHODS]}
    nc = json.loads((ws / contract.out("subspace", "nc", benchmark=BENCH, pretrain_seed=0)).read_text())
    write_json(out / "metrics.json", metrics)
    write_json(out / "nc.json", nc)
    write_json(out / "timings.json", timing)
    text = "\n".join(header + [""] + report_lines(metrics, nc, timing)) + "\n"
    write_text(out / "check.txt", text)
    return text


def report_lines(metrics: dict, nc: dict, timing: dict) -> list[str]:
    """ID accuracy, NC1, and FPR95 / AUROC (mean over the OOD sets) in the paper's pairing (baselines
    with MSP, the paper's method with Eq. 6's `fs`; Appendix A.8), and `fs` for every method."""
    lines = [f"NC1 of the pretrained model (ID train features): {nc['nc1']:.4f}",
             "| method | ID accuracy | score | FPR95 | AUROC | fs FPR95 | fs AUROC |", "|---|---:|---|---:|---:|---:|---:|"]
    for method, m in metrics.items():
        paired = "fs" if method == "sep" else "msp"
        pair, fs = m["scores"][paired]["mean"], m["scores"]["fs"]["mean"]
        lines.append(f"| {method} | {m['id_accuracy']:.2f} | {paired} | {pair['fpr95']:.2f} | {pair['auroc']:.2f} | "
                     f"{fs['fpr95']:.2f} | {fs['auroc']:.2f} |")
    lines.append(f"wall time ({timing['runner']}, all jobs): {timing['wall_s']:.1f} s")
    if timing["full_schedule_estimate_s"]:
        lines.append(f"the full schedule (pretraining 100 epochs, fine-tuning 50) would take about "
                     f"{timing['full_schedule_estimate_s'] / 60:.1f} min of training at these speeds (this data "
                     f"size and model)")
    return lines


def schedule_lines(args: argparse.Namespace, sched: dict) -> list[str]:
    lines = [f"cifar10-tin, methods {', '.join(METHODS)}, seed 0, WRN-{args.depth}-{args.widen}, device {args.device}, "
             f"{args.precision}, {args.cells_per_gpu} cell(s) per GPU, OOD sets without {', '.join(DROPPED)}"]
    if args.epoch_scale == 1:
        lines.append("schedule: the paper's (pretraining 100 of 200 epochs, fine-tuning 50, stage II from 25)")
    else:
        lines.append(f"EPOCHS SCALED by --epoch-scale {args.epoch_scale}: pretraining {sched['pretrain']} of a "
                     f"{sched['schedule']}-epoch schedule (paper: 100 of 200), fine-tuning {sched['finetune']} "
                     f"epochs, stage II from {sched['stage2']} (paper: 50, 25)")
    if args.cap:
        lines.append(f"DATA CAPPED by --cap {args.cap}: at most {args.cap} images in each set")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepare", action="store_true", help="copy and verify the archives, then stop")
    p.add_argument("--source-mirror", type=Path, default=ROOT.parent / "shared" / "data" / "mirror")
    p.add_argument("--mirror", type=Path, default=ROOT / ".gpu-mirror", help="the archives' folder")
    p.add_argument("--workspace", type=Path, default=ROOT / ".gpu-check")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "gpu-check")
    p.add_argument("--device", choices=["cuda", "cpu", "auto"], default="cuda")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--epoch-scale", type=float, default=0.1, help="1 = the paper's schedule")
    p.add_argument("--cells-per-gpu", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=1, help="runtime.threads of each job")
    p.add_argument("--budget-s", type=float, default=540, help="stop snakemake after this many seconds")
    p.add_argument("--cap", type=int, default=None, help="(tests) at most this many images in each set")
    p.add_argument("--runner", choices=["auto", "snakemake", "direct"], default="auto",
                   help="auto: snakemake where it is installed, else the contract's commands directly")
    p.add_argument("--depth", type=int, default=40)
    p.add_argument("--widen", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.prepare:
        prepare(args.source_mirror, args.mirror)
        print("\n".join(verify(args.mirror)))
        return
    if args.cells_per_gpu < 1:
        raise CheckError(f"--cells-per-gpu must be >= 1, got {args.cells_per_gpu}")
    mirror = args.mirror.resolve()
    header = verify(mirror)
    sched = scaled_schedule(args.epoch_scale)
    header += schedule_lines(args, sched)
    print("\n".join(header), flush=True)
    params = check_params(yaml.safe_load((ROOT / "params.yaml").read_text()), args, mirror)
    make_workspace(args.workspace, params)
    if args.runner == "auto":
        args.runner = "snakemake" if has_snakemake() else "direct"
    if args.runner == "direct":
        wall = run_direct(args.workspace, args, mirror, params)
    else:
        wall = run_snakemake(args.workspace, args, mirror)
    print(collect(args.workspace, args.out, timings(args.workspace, wall, sched, args), header), flush=True)


if __name__ == "__main__":
    main()

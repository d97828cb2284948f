"""Wall time of a benchmark's whole pipeline, from nothing to the report.

    python benchmarks/pipeline_time.py [--cores 2] [--benchmark digits] [--set KEY=YAML ...] [--keep]

Copies the workflow (no results) into a temporary folder, sets ``grid.benchmarks`` to the
one benchmark (and any ``--set`` dotted keys), runs ``snakemake --cores N all`` there, and
prints the wall time, the jobs run and the per-stage time each job's log reports.
Also: per stage, the seconds from a training job's process start to its first training step (the job's
start cost: interpreter, imports, data loading and verification), from the jobs' logs.
Targets on 2 cores: digits <= 180 s; cifar10-mini <= 2700 s from the mirror on the Intel Xeon with AMX
(3600 s on the AMD EPYC kind, which is about five times slower in training: docs/performance.md).
The mirror is passed on as ``$FSOOD_MIRROR`` (the copy's relative ``../shared`` would miss it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
from _workspace import edit_params, make_workspace, mirror_dir  # noqa: E402

TARGET_S = {"digits": 180, "cifar10-mini": 2700}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--benchmark", default="digits", choices=sorted(TARGET_S))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="override a dotted params key, e.g. benchmarks.cifar10-mini.pretrain.epochs=1")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsood-bench-"))
    ws = make_workspace(tmp / "ws")
    changes = {"grid.benchmarks": [args.benchmark]}
    changes.update((k, yaml.safe_load(v)) for k, v in (item.split("=", 1) for item in args.set))
    edit_params(ws, **changes)
    # run the workspace's own copy of fsood, not an editable install that may change meanwhile
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])))
    mirror = mirror_dir()
    if mirror is not None:
        env["FSOOD_MIRROR"] = str(mirror)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(args.cores), "all"], cwd=ws,
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"snakemake failed (exit {proc.returncode}); run folder kept at {ws}")
    per_stage: dict[str, list[float]] = defaultdict(list)
    start_cost: dict[str, list[float]] = defaultdict(list)
    for log in sorted((ws / "logs").rglob("*.log")):
        text = log.read_text()
        m = re.search(r"(\w+) done in ([\d.]+) s", text)
        if m:
            per_stage[m.group(1)].append(float(m.group(2)))
        first = re.search(r"first training step done ([\d.]+) s after the process started", text)
        if first:
            start_cost[log.parent.name].append(float(first.group(1)))
    target = TARGET_S[args.benchmark]
    summary = {
        "benchmark": args.benchmark,
        "overrides": changes,
        "cores": args.cores,
        "wall_s": round(wall, 1),
        "jobs": sum(len(v) for v in per_stage.values()),
        "stage_seconds_in_process": {k: {"jobs": len(v), "total": round(sum(v), 1), "max": round(max(v), 1)}
                                     for k, v in per_stage.items()},
        "seconds_to_first_training_step": {k: {"jobs": len(v), "median": round(sorted(v)[len(v) // 2], 2),
                                               "max": round(max(v), 2)} for k, v in start_cost.items()},
    }
    print(json.dumps(summary, indent=2))
    print(f"snakemake --cores {args.cores} all ({args.benchmark}): {wall:.1f} s wall for {summary['jobs']} jobs "
          f"(target <= {target} s): {'PASS' if wall <= target else 'FAIL'}")
    out = ROOT / "benchmarks/out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pipeline_time_{args.benchmark}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.keep:
        print(f"run folder: {ws}")
    else:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

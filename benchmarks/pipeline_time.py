"""Wall time of the default pipeline, from nothing to the report.

    python benchmarks/pipeline_time.py [--cores 2] [--keep]

Copies the workflow (no results) into a temporary folder, runs
``snakemake --cores N all`` there, and prints the wall time, the jobs run and the
per-stage time each job's log reports. Target (issue 2): <= 180 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import make_workspace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsood-bench-"))
    ws = make_workspace(tmp / "ws")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(args.cores), "all"], cwd=ws,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"snakemake failed (exit {proc.returncode}); run folder kept at {ws}")
    per_stage: dict[str, list[float]] = defaultdict(list)
    for log in sorted((ws / "logs").rglob("*.log")):
        m = re.search(r"(\w+) done in ([\d.]+) s", log.read_text())
        if m:
            per_stage[m.group(1)].append(float(m.group(2)))
    summary = {
        "cores": args.cores,
        "wall_s": round(wall, 1),
        "jobs": sum(len(v) for v in per_stage.values()),
        "stage_seconds_in_process": {k: {"jobs": len(v), "total": round(sum(v), 1), "max": round(max(v), 1)}
                                     for k, v in per_stage.items()},
    }
    print(json.dumps(summary, indent=2))
    print(f"snakemake --cores {args.cores} all: {wall:.1f} s wall for {summary['jobs']} jobs "
          f"(target <= 180 s): {'PASS' if wall <= 180 else 'FAIL'}")
    out = ROOT / "benchmarks/out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_time.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.keep:
        print(f"run folder: {ws}")
    else:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

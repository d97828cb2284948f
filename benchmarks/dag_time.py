"""How long Snakemake and DVC take to plan the paper's grid (nothing is run).

    python benchmarks/dag_time.py [--repeat 5]

Copies the workflow into a temporary git workspace, enables the paper's grid (``PAPER_GRID``:
cifar10, cifar100 and imagenet x every method of Tables 1, 2, 5 and 9 x three seeds), then times
``snakemake -n --cores 8 all`` and ``dvc status`` (each the median of ``--repeat`` runs) and
counts the jobs and stages they list. Targets (issue 4): snakemake -n <= 2 s, dvc status <= 3 s.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import edit_params, git_init, make_workspace  # noqa: E402

PAPER_GRID = {
    "grid.benchmarks": ["cifar10", "cifar100", "imagenet"],
    "grid.methods": ["none", "oe", "energy_oe", "dal", "sep", "oe_clu", "oe_sep", "sep_energy"],
    "grid.seeds": [0, 1, 2],
}
TARGETS = {"snakemake -n": 2.0, "dvc status": 3.0}


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return took, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ws = make_workspace(Path(tempfile.mkdtemp(prefix="fsood-dag-")) / "ws", git=False)
    edit_params(ws, **PAPER_GRID)
    git_init(ws)
    env = dict(os.environ, DVC_NO_ANALYTICS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])))
    commands = {
        "snakemake -n": [sys.executable, "-m", "snakemake", "-n", "--cores", "8", "all"],
        "dvc status": [sys.executable, "-m", "dvc", "status"],
    }
    print(f"grid: {PAPER_GRID}")
    for label, cmd in commands.items():
        times, out = [], ""
        for _ in range(args.repeat):
            took, out = timed(cmd, ws, env)
            times.append(took)
        if label == "snakemake -n":
            jobs = re.search(r"^total\s+(\d+)", out, re.M)
            count = f"{jobs.group(1) if jobs else '?'} jobs"
            cells = sorted(set(re.findall(r"results/(\w+)/(\w+)/seed(\d+)/metrics\.json", out)))
            count += f", {len(cells)} scored cells"
        else:
            stages = re.findall(r"^[\w-]+@[^:]+:", out, re.M)
            count = f"{len(stages)} stages listed"
        median = statistics.median(times)
        verdict = "ok" if median <= TARGETS[label] else "OVER TARGET"
        print(f"{label:14s} median {median:.2f} s (min {min(times):.2f}, max {max(times):.2f}, n={len(times)}); "
              f"{count}; target <= {TARGETS[label]:.0f} s: {verdict}")


if __name__ == "__main__":
    main()

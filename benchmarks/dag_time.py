"""How long Snakemake and DVC take to plan the paper's grid (nothing is run).

    python benchmarks/dag_time.py [--repeat 5] [--python .venv/bin/python]

Copies the workflow into a temporary git workspace, enables the paper's grid (``PAPER_GRID``:
cifar10, cifar100 and imagenet x every method of Tables 1, 2, 5 and 9 x three seeds), then times
``snakemake -n --cores 8 all`` and ``dvc status`` (each the median of ``--repeat`` runs) and
counts the jobs and stages they list. Targets (issue 4): snakemake -n <= 2 s, dvc status <= 3 s.
``--python`` times the tools of another environment (e.g. one installed from requirements.lock
alone, without the test-only SLURM plugin that Snakemake imports at every start).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from _workspace import edit_params, git_init, make_workspace  # noqa: E402

PAPER_GRID = {
    "grid.benchmarks": ["cifar10", "cifar100", "imagenet"],
    "grid.methods": ["none", "oe", "energy_oe", "dal", "sep", "oe_clu", "oe_sep", "sep_energy"],
    "grid.seeds": [0, 1, 2],
}
TARGETS = {"snakemake -n": 2.0, "dvc status": 3.0}


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + sys of the child) and stdout of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, cpu, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--python", default=sys.executable, help="interpreter whose snakemake and dvc to time")
    args = parser.parse_args()
    ws = make_workspace(Path(tempfile.mkdtemp(prefix="fsood-dag-")) / "ws", git=False)
    edit_params(ws, **PAPER_GRID)
    git_init(ws)
    env = dict(os.environ, DVC_NO_ANALYTICS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])))
    commands = {
        "snakemake -n": [args.python, "-m", "snakemake", "-n", "--cores", "8", "all"],
        "dvc status": [args.python, "-m", "dvc", "status"],
    }
    print(f"grid: {PAPER_GRID}; interpreter: {args.python}")
    for label, cmd in commands.items():
        times, cpus, out = [], [], ""
        for _ in range(args.repeat):
            took, cpu, out = timed(cmd, ws, env)
            times.append(took)
            cpus.append(cpu)
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
        print(f"{label:14s} median {median:.2f} s (min {min(times):.2f}, max {max(times):.2f}, n={len(times)}; "
              f"CPU median {statistics.median(cpus):.2f} s); {count}; target <= {TARGETS[label]:.0f} s: {verdict}")


if __name__ == "__main__":
    main()

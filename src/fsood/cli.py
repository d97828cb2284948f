"""Command line: one subcommand per pipeline stage, shared by Snakemake and DVC.

    python -m fsood <stage> --benchmark B [--pretrain-seed K] [--method M] [--seed S] [--params params.yaml] [--log FILE]

Every call validates params.yaml first, so a bad value is refused before any work,
whichever tool started the job. Heavy imports (torch) happen inside the stage.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path

from fsood.config import ParamsError, check_cell, for_benchmark, load_params
from fsood.contract import INT_WILDCARDS, STAGES, cell_name, option
from fsood.lock import WorkspaceBusy, check_orchestrator

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsood", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, stage in STAGES.items():  # one subcommand a stage, with the wildcards its contract names
        p = sub.add_parser(name, help=stage.summary)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        for wildcard in stage.wildcards:
            p.add_argument(option(wildcard), dest=wildcard, required=True, type=int if wildcard in INT_WILDCARDS else str)
        p.add_argument("--log", help="also write the log to this file")
    v = sub.add_parser("validate", help="check params.yaml and list the grid's cells")
    v.add_argument("--params", default="params.yaml")
    d = sub.add_parser("dvc-yaml", help="write dvc.yaml from the stage contracts (fsood.contract)")
    d.add_argument("--output", default="dvc.yaml", help="where to write it (default: dvc.yaml); - for stdout")
    r = sub.add_parser("rebuild", help="rerun one cell from its provenance.json and compare its outputs' hashes")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--benchmark", required=True)
    r.add_argument("--pretrain-seed", dest="pretrain_seed", type=int, required=True)
    r.add_argument("--method", required=True)
    r.add_argument("--seed", type=int, help="the fine-tuning seed (not for method none)")
    r.add_argument("--use-current-params", action="store_true", help="rebuild even if params.yaml changed")
    r.add_argument("--keep", action="store_true", help="keep the temporary workspace (its path is printed)")
    return parser


def _setup_logging(log_file: str | None) -> None:
    """The full log goes to ``--log``; the terminal then shows progress bars and warnings only
    (parallel jobs would otherwise interleave their per-epoch lines)."""
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    if log_file and os.environ.get("RANK", "0") != "0":
        log_file = None  # under torchrun only rank 0 writes the job's log (mode "w" would wipe its lines)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
        console.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dvc-yaml":  # from the contracts alone: its stages read the grid through ${grid.*}
        from fsood.dvcyaml import write

        write(args.output)
        return 0
    try:
        params = load_params(args.params)
        if args.command == "validate":
            from fsood.config import grid_cells

            cells, grid = grid_cells(params), params["grid"]
            models = [(b, k) for b in grid["benchmarks"] for k in grid["pretrain_seeds"]]
            print(f"{args.params}: valid; {len(models)} pretrained model(s), each scored as it is (none), and "
                  f"{len(cells)} fine-tuned cells")
            for b, k in models:
                print(f"  {cell_name(b, k, 'none')}")
            for cell in cells:
                print(f"  {cell.name}")
            return 0
        check_cell(params, **{w: getattr(args, w) for w in ("benchmark", "pretrain_seed", "method", "seed")
                              if getattr(args, w, None) is not None and not (w == "method" and args.method == "none")})
        if args.command == "rebuild":  # writes only in a temporary workspace (fsood/rebuild.py)
            from fsood.rebuild import main as rebuild

            return rebuild(params, args)
    except ParamsError as err:
        print(f"fsood: error: {err}", file=sys.stderr)
        return 2
    try:  # Snakemake and `dvc repro` must not run in one workspace at once (fsood/lock.py)
        check_orchestrator()
    except WorkspaceBusy as err:
        print(f"fsood: error: {err}", file=sys.stderr)
        return 3
    _setup_logging(args.log)
    log = logging.getLogger("fsood")
    kwargs = {k: getattr(args, k) for k in STAGES[args.command].wildcards}
    log.info("fsood %s %s", args.command, kwargs)
    start = time.perf_counter()
    try:
        # a stage sees `runtime` with its benchmark's overrides (benchmarks.<b>.runtime) applied
        importlib.import_module(f"fsood.stages.{args.command}").run(for_benchmark(params, args.benchmark), **kwargs)
    except (OSError, ValueError, RuntimeError, FloatingPointError) as err:  # OSError: FileNotFound, disk full
        log.error("%s failed: %s", args.command, err)
        print(f"fsood: error: {err}", file=sys.stderr)
        return 1
    log.info("%s done in %.1f s", args.command, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: one subcommand per pipeline stage, shared by Snakemake and DVC.

    python -m fsood <stage> --benchmark B [--method M] [--seed S] [--params params.yaml] [--log FILE]

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

from fsood.config import ParamsError, check_cell, load_params

STAGES = {
    # stage: (needs method, needs seed)
    "data": (False, False),
    "pretrain": (False, True),
    "subspace": (False, True),
    "finetune": (True, True),
    "score": (True, True),
    "report": (False, False),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsood", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage, (needs_method, needs_seed) in STAGES.items():
        p = sub.add_parser(stage, help=f"run the {stage} stage")
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument("--benchmark", required=True)
        if needs_method:
            p.add_argument("--method", required=True)
        if needs_seed:
            p.add_argument("--seed", type=int, required=True)
        p.add_argument("--log", help="also write the log to this file")
    v = sub.add_parser("validate", help="check params.yaml and list the grid's cells")
    v.add_argument("--params", default="params.yaml")
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
    try:
        params = load_params(args.params)
        if args.command == "validate":
            from fsood.config import grid_cells

            cells = grid_cells(params)
            print(f"{args.params}: valid; {len(cells)} cells")
            for cell in cells:
                print(f"  {cell.name}")
            return 0
        check_cell(params, args.benchmark, getattr(args, "method", None), getattr(args, "seed", None))
    except ParamsError as err:
        print(f"fsood: error: {err}", file=sys.stderr)
        return 2
    _setup_logging(args.log)
    log = logging.getLogger("fsood")
    kwargs = {k: getattr(args, k) for k in ("benchmark", "method", "seed") if hasattr(args, k)}
    log.info("fsood %s %s", args.command, kwargs)
    start = time.perf_counter()
    try:
        importlib.import_module(f"fsood.stages.{args.command}").run(params, **kwargs)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as err:
        log.error("%s failed: %s", args.command, err)
        print(f"fsood: error: {err}", file=sys.stderr)
        return 1
    log.info("%s done in %.1f s", args.command, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

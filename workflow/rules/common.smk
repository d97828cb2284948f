# Shared by all rules: validation, the grid, paths and resources.
from fsood import paths
from fsood.config import grid_cells, validate_params
from snakemake.utils import validate

# fsood's own check first (names the key and the valid choices, cross-field rules),
# then Snakemake's validate() against the same schema file.
validate_params(config, source="params.yaml")
validate(config, schema="../../src/fsood/params.schema.yaml", set_default=False)

GRID = config["grid"]
REPORT = paths.templates(paths.REPORT_DIR, paths.REPORT_FILES)
CELLS = grid_cells(config)
GPU = 1 if config["runtime"]["device"] in ("cuda", "auto") else 0
TRAIN_THREADS = config["runtime"]["threads"]


wildcard_constraints:
    benchmark="|".join(GRID["benchmarks"]),
    method="|".join(GRID["methods"]),
    seed=r"\d+",


# Cluster requests (SLURM) where a benchmark needs more than the rules' defaults: ImageNet's
# file lists, decoded batches and ResNet-50 (5 epochs of 1.28M images + as many outliers).
HEAVY = {"imagenet": {"mem_mb": 64000, "runtime": 2880}}


def scale(benchmark, resource, default):
    return HEAVY.get(benchmark, {}).get(resource, default)


def processes(benchmark):
    """Data-parallel processes of a benchmark's fine-tuning (finetune.processes; 1 without DDP)."""
    return config["benchmarks"][benchmark]["finetune"].get("processes", 1)


def log_path(stage, *parts):
    return paths.LOG.format(stage=stage, name="-".join(parts))


def all_targets():
    """The reports of every benchmark; they pull in every cell of the grid."""
    return [
        f
        for b in GRID["benchmarks"]
        for f in paths.files(paths.REPORT_DIR, paths.REPORT_FILES, benchmark=b).values()
    ]


def report_inputs(wildcards):
    """Every cell of this benchmark, listed from the grid (never a glob: no stale cell)."""
    b = wildcards.benchmark
    cells = [c for c in CELLS if c.benchmark == b]
    files = [paths.files(paths.CELL_DIR, paths.SCORE_FILES, benchmark=b, method=c.method, seed=c.seed)
             for c in cells]
    nc = [paths.files(paths.SUBSPACE_DIR, paths.SUBSPACE_FILES, benchmark=b, seed=s)["nc"] for s in GRID["seeds"]]
    history = [paths.files(paths.CELL_DIR, paths.FINETUNE_FILES, benchmark=b, method=c.method, seed=c.seed)["history"]
               for c in cells]
    return [str(f[k]) for f in files for k in ("cache", "metrics")] + [str(p) for p in nc + history]

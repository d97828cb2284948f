# Shared by all rules: validation, the grid, and the stage contracts (src/fsood/contract.py) turned
# into Snakemake's input, output, params, log, threads, resources and shell.
from fsood import contract
from fsood.config import validate_params

# Validated against src/fsood/params.schema.yaml (JSON Schema 2020-12) and the cross-field rules by
# fsood.config, the same check every CLI call makes: it names the key and the valid choices. (Not also
# Snakemake's validate() on the same schema: 0.2 s of every dry run, benchmarks/dag_time.py.)
validate_params(config, source="params.yaml")

GRID = config["grid"]
GPU = 1 if config["runtime"]["device"] in ("cuda", "auto") else 0


wildcard_constraints:
    benchmark="|".join(GRID["benchmarks"]),
    method="|".join(GRID["methods"]),
    pretrain_seed=r"\d+",
    seed=r"\d+",


def stage_inputs(stage):
    """{input key: [files]} of one job, listed from the grid (never a glob: no stale cell). A folder
    appears as its key file (the data manifest, which hashes every set), so that every input is a file
    whose content Snakemake checksums (profiles/default: max-checksum-file-size)."""
    return lambda wildcards: contract.input_paths(stage, config, tracked=True, **wildcards)


def stage_outputs(stage):
    """Output templates; figures and tables also go to `snakemake --report` with their captions."""
    outs = {}
    for key, o in stage.outputs.items():
        path = stage.tracked_template(key)
        if o.label:
            labels = {"benchmark": "{benchmark}", "figure" if o.figure else "kind": o.label}
            caption = f"../report/{o.figure}.rst" if o.figure else None
            path = report(path, caption=caption, category="Figures" if o.figure else "Tables", labels=labels)
        outs[key] = path
    return outs


def stage_params(stage):
    """What reruns the job when it changes (Snakemake records params and compares them): the value of
    every params key the stage declares, and the sha256 of each source file of its code. Two params a
    job, not one a key or a file: each param costs Snakemake a signature inspection per job, and the
    paper grid has 169 jobs (benchmarks/dag_time.py)."""
    return {
        "declared": lambda wildcards: stage.param_values(config, **wildcards),
        "code": lambda wildcards: stage.code_hash(),
    }


def stage_threads(stage):
    """`threads:` reaches torch.set_num_threads (Snakemake exports it as OMP_NUM_THREADS); a DDP
    fine-tuning job takes at least one thread a process."""
    def threads(wildcards):
        n = stage.resources.threads
        if n == "runtime.threads":  # the benchmark's override (benchmarks.<b>.runtime.threads), else the global one
            n = config["benchmarks"][wildcards.benchmark]["runtime"].get("threads", config["runtime"]["threads"])
        if stage.name == "finetune":
            n = max(n, processes(wildcards.benchmark))
        return n
    return threads


def processes(benchmark):
    """Data-parallel processes of a benchmark's fine-tuning (finetune.processes; 1 without DDP)."""
    return config["benchmarks"][benchmark]["finetune"].get("processes", 1)


def stage_resources(stage):
    """Memory and time from the contract, overridden per benchmark by `benchmarks.<b>.resources.<stage>`
    in params.yaml (ImageNet's fine-tuning); one GPU a process when runtime.device is cuda or auto."""
    def pick(key):
        default = getattr(stage.resources, key)
        return lambda wildcards: config["benchmarks"][wildcards.benchmark].get("resources", {}).get(
            stage.name, {}).get(key, default)

    out = {"mem_mb": pick("mem_mb"), "runtime": pick("runtime")}
    if stage.resources.gpu:
        n = (lambda w: processes(w.benchmark)) if stage.name == "finetune" else (lambda w: 1)
        out["gpu"] = lambda wildcards: GPU * n(wildcards)
        # cells_per_gpu jobs share one GPU: `--resources gpu_slots=12` (contract.GPU_SLOTS) is one GPU
        share = lambda w: contract.gpu_slots(config["benchmarks"][w.benchmark].get("resources", {}).get("cells_per_gpu", 1))
        out["gpu_slots"] = lambda wildcards: GPU * n(wildcards) * share(wildcards)
    return out


def all_targets():
    """The reports of every benchmark; they pull in every cell of the grid."""
    report_stage = contract.stage("report")
    return [str(p) for b in GRID["benchmarks"] for p in report_stage.outs(benchmark=b).values()]

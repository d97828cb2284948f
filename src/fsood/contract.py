"""Every pipeline stage's contract, declared once: the one place that says what a stage is.

For each stage: its wildcards, its command, the upstream outputs it reads, the files it writes,
the params keys it reads, the fsood code it runs, its resources. Everything else reads this:

- the Snakemake rules (``workflow/rules/stages.smk``: input, output, params, log, threads, resources, shell),
- ``dvc.yaml``, written from it by ``python -m fsood dvc-yaml`` (tests fail when the committed file differs),
- the CLI (one subcommand a stage, with the wildcards it needs),
- provenance and ``fsood rebuild`` (a cell's input and output files, the params that define it),
- the resume keys of the training stages (their params and input files).

Params keys are dotted templates (``benchmarks.{benchmark}.pretrain``): an edit of a key reruns exactly
the stages that declare it (or a key below or above it). ``tests/test_contract_audit.py`` runs every stage
of the digits benchmark with params that record each key read and proves that no stage reads a key, a
module or a package file it does not declare.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from fsood.closure import WHOLE_PACKAGES, code_hash, import_closure
LOG = "logs/{stage}/{name}.log"  # outside every DVC-tracked folder: a stray file would change an output's hash
# wildcard -> grid.<key>: a cell is benchmark x pretrained model (its pretraining seed) x method x fine-tuning seed
GRID_KEYS = {"benchmark": "benchmarks", "pretrain_seed": "pretrain_seeds", "method": "methods", "seed": "seeds"}
INT_WILDCARDS = ("pretrain_seed", "seed")
NONE = "none"  # the pretrained model scored as it is: one cell a pretrained model (stage score_pretrained)


@dataclass(frozen=True)
class Output:
    """One file a stage writes, ``name`` inside the stage's folder (``""``: the folder itself).

    ``kind``: ``out`` (DVC cache, or with ``cache=False`` a file kept in git), ``metrics`` (what ``dvc exp
    show`` and ``dvc metrics diff`` print by default: only the small headline files) or ``plots`` (``dvc
    plots``; ``plot`` names its x and y columns, ``template`` DVC's template, default ``linear``).
    A folder output names its ``key_file``: the file Snakemake tracks in its place (Snakemake writes a
    ``.snakemake_timestamp`` into directory outputs, which would change DVC's hash of the folder), and
    which holds a hash of every other file in the folder (the data manifest)."""

    name: str
    kind: str = "out"
    cache: bool = True
    key_file: str | None = None
    plot: tuple[str, str] | None = None  # (x, y) for dvc plots
    template: str | None = None  # dvc plots template (`dvc plots templates` lists them)
    figure: str | None = None  # caption file in workflow/report/ (Snakemake --report)
    label: str | None = None  # what the Snakemake report calls it


@dataclass(frozen=True)
class Input:
    """Output ``output`` of stage ``stage``; ``over``: wildcards taken over the whole grid (the report reads
    every cell of its benchmark, listed from the grid, never globbed: a stale cell cannot slip in)."""

    stage: str
    output: str
    over: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    threads: int | str = 1  # a number, or "runtime.threads" (the benchmark's override where it has one)
    mem_mb: int = 2000
    runtime: int = 60  # minutes
    gpu: bool = False  # one GPU a process when runtime.device is cuda or auto (and gpu_slots, below)


# Snakemake's resources are integers: a GPU is GPU_SLOTS `gpu_slots`, and a GPU job of a benchmark with
# `resources.cells_per_gpu: N` takes GPU_SLOTS // N of them a process, so that
# `snakemake --resources gpu_slots=12` runs N such jobs at once on one GPU (docs/benchmarks.md, "Several cells on one GPU").
GPU_SLOTS = 12


def gpu_slots(cells_per_gpu: int) -> int:
    """``gpu_slots`` one process of a GPU job takes when ``cells_per_gpu`` jobs share a GPU."""
    if not isinstance(cells_per_gpu, int) or cells_per_gpu < 1 or GPU_SLOTS % cells_per_gpu:
        divisors = [n for n in range(1, GPU_SLOTS + 1) if GPU_SLOTS % n == 0]
        raise ValueError(f"resources.cells_per_gpu: {cells_per_gpu!r} is not one of {divisors}")
    return GPU_SLOTS // cells_per_gpu


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    wildcards: tuple[str, ...]
    folder: str
    outputs: dict[str, Output]
    inputs: dict[str, Input] = field(default_factory=dict)
    params: tuple[str, ...] = ()  # dotted keys whose values define the outputs
    untracked: tuple[str, ...] = ()  # keys read that cannot change the outputs (where archives are looked up)
    entry: tuple[str, ...] = ()  # modules the stage runs; the code is their fsood import closure
    files: tuple[str, ...] = ()  # package data files read, relative to src/fsood
    resources: Resources = Resources()

    # ------------------------------------------------------------------ paths
    def out(self, key: str, **wildcards) -> Path:
        """Path of output ``key`` for concrete wildcards."""
        return Path(self.template(key).format(**wildcards))

    def outs(self, **wildcards) -> dict[str, Path]:
        return {key: self.out(key, **wildcards) for key in self.outputs}

    def template(self, key: str) -> str:
        name = self.outputs[key].name
        return f"{self.folder}/{name}" if name else self.folder

    def tracked_template(self, key: str) -> str:
        """What Snakemake tracks for output ``key`` (a folder's key file)."""
        o = self.outputs[key]
        return f"{self.template(key)}/{o.key_file}" if o.key_file else self.template(key)

    def log(self, **wildcards) -> str:
        return LOG.format(stage=self.name, name=self.cell(**wildcards))

    def cell(self, **wildcards) -> str:
        """The job's name within its stage: its wildcards' values joined by ``-`` (DVC's ``stage@<this>``)."""
        return cell_name(*(wildcards[w] for w in self.wildcards))

    def command(self, **wildcards) -> str:
        """The shell command both tools run (``python -m fsood <stage> ...``)."""
        args = " ".join(f"{option(w)} {wildcards[w]}" for w in self.wildcards)
        return f"python -m fsood {self.name} --params params.yaml {args} --log {self.log(**wildcards)}"

    # ------------------------------------------------------------------ params
    def param_keys(self, **wildcards) -> list[str]:
        return [key.format(**wildcards) for key in self.params]

    def param_values(self, params: dict, **wildcards) -> dict[str, object]:
        """``{dotted key: value}`` of every declared key (``None`` where the key is absent)."""
        return {key: lookup(params, key) for key in self.param_keys(**wildcards)}

    # ------------------------------------------------------------------ code
    def code_files(self) -> list[str]:
        """The fsood source the stage runs (relative to src/fsood): the import closure of ``entry`` plus
        the package data files it reads, with a package of ``WHOLE_PACKAGES`` named by its folder
        (``datasets/``) wherever the closure enters it."""
        files = set(import_closure(self.entry)) | set(self.files)
        whole = {f"{p}/" for p in WHOLE_PACKAGES if any(f.startswith(f"{p}/") for f in files)}
        return sorted(whole | {f for f in files if not any(f.startswith(w) for w in whole)})

    def runs(self, file: str) -> bool:
        """Is ``file`` (relative to src/fsood) part of the stage's code, itself or inside a folder of it?"""
        return any(file == f or (f.endswith("/") and file.startswith(f)) for f in self.code_files())

    def code_hash(self) -> dict[str, str]:
        """``{file: sha256[:16]}`` of the stage's code: an edit of one of them reruns the stage."""
        return code_hash(tuple(self.code_files()))


NORMALIZE = "benchmarks.{benchmark}.data.normalize"
MODEL = "benchmarks.{benchmark}.model"
DATA = Input("data", "data")
RUNTIME = "benchmarks.{benchmark}.runtime"  # the benchmark's overrides of `runtime` (fsood.config.runtime_params)
PRETRAINED = "results/{benchmark}/model{pretrain_seed}"  # one pretrained model's folder: its stages and cells
SCORE_OUTPUTS = {
    "cache": Output("cache.npz"),
    "scores": Output("scores.npz"),  # every score of ID test and each OOD set, per image
    "metrics": Output("metrics.json", cache=False),  # every score x set: by path, not a default metric
    # ROC of the method's paired score (score.pairing), ID test vs the natural OOD sets pooled
    "roc": Output("roc.csv", kind="plots", cache=False, plot=("fpr", "tpr"), template="simple"),
    # versions, device, seeds, params and input / output hashes, for `fsood rebuild`
    "provenance": Output("provenance.json", cache=False),
}
SCORE_PARAMS = (NORMALIZE, MODEL, "score", "benchmarks.{benchmark}.score", "runtime", RUNTIME)
OVER_CELLS = ("pretrain_seed", "method", "seed")  # every fine-tuned cell of a benchmark
OVER_MODELS = ("pretrain_seed",)  # every pretrained model of a benchmark

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage(
        "data", "Stage 1: materialise every set of a benchmark as uint8 arrays.",
        ("benchmark",), "data/{benchmark}",
        outputs={"data": Output("", key_file="manifest.json")},
        params=("benchmarks.{benchmark}.data",),
        untracked=("datasets",),
        # package files the shipped benchmarks name (cifar10-mini's class lists); a user's own folders and
        # class-list files are not tracked (docs/benchmarks.md, "Your own benchmark")
        entry=("fsood.stages.data",), files=("datasets/sources.yaml", "datasets/tinyimagenet_cifar10_overlap.tsv",
                                             "datasets/tinyimagenet32_holdout40.txt"),
        resources=Resources(mem_mb=2000, runtime=30),
    ),
    Stage(
        "pretrain", "Stage 2: train the ID classifier with cross-entropy (or load a published one).",
        # one pretrained model a pretraining seed (grid.pretrain_seeds), shared by every fine-tuning cell of that
        # model: the grid's seeds vary fine-tuning only, as the authors fine-tune one checkpoint
        ("benchmark", "pretrain_seed"), f"{PRETRAINED}/pretrain",
        outputs={"model": Output("model.pt"),
                 "history": Output("history.csv", kind="plots", cache=False, plot=("epoch", "total"))},
        inputs={"data": DATA},
        params=(NORMALIZE, MODEL, "benchmarks.{benchmark}.pretrain", "runtime", RUNTIME),
        untracked=("datasets",),
        entry=("fsood.stages.pretrain",), files=("datasets/sources.yaml",),
        resources=Resources(threads="runtime.threads", mem_mb=4000, runtime=240, gpu=True),
    ),
    Stage(
        "subspace", "Stage 3: ID training features, NC1-NC4, the basis of span(W) and the energies of the "
                    "pretrained model.",
        ("benchmark", "pretrain_seed"), f"{PRETRAINED}/subspace",
        outputs={"features": Output("features.npz"), "basis": Output("basis.npz"),
                 # by path: `dvc metrics show <path>` (docs/pipeline.md, "Comparing runs at a glance")
                 "nc": Output("nc.json", cache=False),
                 # energy quantiles on ID train and an outlier sample: Energy-OE's margins by rule (fsood.margins)
                 "energies": Output("energies.json", cache=False)},
        inputs={"data": DATA, "model": Input("pretrain", "model")},
        params=(NORMALIZE, MODEL, "runtime", RUNTIME),
        entry=("fsood.stages.subspace",),
        # every fine-tuning cell of the model waits for it: it takes the benchmark's threads
        resources=Resources(threads="runtime.threads", mem_mb=4000, runtime=60, gpu=True),
    ),
    Stage(
        "finetune", "Stage 4: fine-tune the pretrained model with auxiliary outliers.",
        ("benchmark", "pretrain_seed", "method", "seed"), PRETRAINED + "/{method}/seed{seed}",
        outputs={"model": Output("model.pt"),
                 "history": Output("history.csv", kind="plots", cache=False, plot=("epoch", "total"))},
        inputs={"data": DATA, "pretrained": Input("pretrain", "model"), "basis": Input("subspace", "basis"),
                "energies": Input("subspace", "energies")},
        params=(NORMALIZE, MODEL, "benchmarks.{benchmark}.finetune", "methods.{method}",
                "benchmarks.{benchmark}.methods", "runtime", RUNTIME),
        entry=("fsood.stages.finetune",),
        resources=Resources(threads="runtime.threads", mem_mb=4000, runtime=480, gpu=True),
    ),
    Stage(
        "score", "Stage 5: one forward pass per test set into the cache; every score from the cache.",
        ("benchmark", "pretrain_seed", "method", "seed"), PRETRAINED + "/{method}/seed{seed}",
        outputs=SCORE_OUTPUTS,
        inputs={"data": DATA, "model": Input("finetune", "model")},
        # its own keys, then the finetune keys provenance.json records (`fsood rebuild` reruns both)
        params=(*SCORE_PARAMS, "benchmarks.{benchmark}.finetune", "methods.{method}", "benchmarks.{benchmark}.methods"),
        entry=("fsood.stages.score",),
        resources=Resources(mem_mb=4000, runtime=60, gpu=True),
    ),
    Stage(
        "score_pretrained", "Stage 5, method none: the pretrained model scored as it is, once a pretrained model.",
        ("benchmark", "pretrain_seed"), f"{PRETRAINED}/{NONE}",
        outputs=SCORE_OUTPUTS,
        # the ID-train sample fitted scores learn from is taken from the subspace stage's features (no pass again)
        inputs={"data": DATA, "model": Input("pretrain", "model"), "features": Input("subspace", "features")},
        params=(*SCORE_PARAMS, "benchmarks.{benchmark}.pretrain"),  # the last for provenance.json
        entry=("fsood.stages.score_pretrained",),
        resources=Resources(mem_mb=4000, runtime=60, gpu=True),
    ),
    Stage(
        "verdict", "Stage 6a: does the paper's claim hold? A paired test across pretrained models.",
        ("benchmark",), "reports/{benchmark}",
        # by path (`dvc metrics show reports/<b>/verdict.json`); its headline numbers are in headline.json
        outputs={"verdict": Output("verdict.json", cache=False),
                 "forest": Output("verdict_forest.png", figure="forest", label="verdict forest plot")},
        inputs={"metrics": Input("score", "metrics", over=OVER_CELLS),
                "scores": Input("score", "scores", over=OVER_CELLS)},  # the bootstrap resamples test images
        params=("grid", "verdict", "score", "benchmarks.{benchmark}.score", "benchmarks.{benchmark}.data.ood_sets"),
        entry=("fsood.stages.verdict",),
        resources=Resources(mem_mb=4000, runtime=30),
    ),
    Stage(
        "report", "Stage 6: tables (mean +- std over cells) and figures of one benchmark.",
        ("benchmark",), "reports/{benchmark}",
        outputs={
            "table_md": Output("summary.md", cache=False, label="summary"),
            "table_csv": Output("summary.csv", cache=False),
            "summary": Output("summary.json", cache=False),  # every score: by path, not a default metric
            # the dozen numbers of the paper's tables: what `dvc exp show` / `dvc metrics diff` print
            "headline": Output("headline.json", kind="metrics", cache=False),
            "paper_md": Output("paper_comparison.md", cache=False, label="paper comparison"),
            "paper_csv": Output("paper_comparison.csv", cache=False),
            "histograms": Output("score_histograms.png", figure="histograms", label="score histograms"),
            "projection": Output("projection.png", figure="projection", label="Fig. 2 projection"),
            "heatmap": Output("fpr95_heatmap.png", figure="heatmap", label="FPR95 heatmap"),
            "nc": Output("nc_metrics.png", figure="nc", label="NC metrics"),
            "curves": Output("training_curves.png", figure="curves", label="training curves"),
        },
        inputs={"cache": Input("score", "cache", over=OVER_CELLS),  # features, for the projection
                "scores": Input("score", "scores", over=OVER_CELLS),  # for the histograms
                "metrics": Input("score", "metrics", over=OVER_CELLS),
                "none_scores": Input("score_pretrained", "scores", over=OVER_MODELS),
                "none_metrics": Input("score_pretrained", "metrics", over=OVER_MODELS),
                "nc": Input("subspace", "nc", over=OVER_MODELS),
                "history": Input("finetune", "history", over=OVER_CELLS),
                "verdict": Input("verdict", "verdict")},
        params=("grid", "report", "score", "benchmarks.{benchmark}.score", "benchmarks.{benchmark}.data.ood_sets",
                "benchmarks.{benchmark}.notes",
                # what the cells started from, named in the paper comparison
                "benchmarks.{benchmark}.pretrain.checkpoint", "benchmarks.{benchmark}.pretrain.epochs",
                "benchmarks.{benchmark}.pretrain.schedule_epochs", "benchmarks.{benchmark}.pretrain.fast_recipe"),
        entry=("fsood.stages.report",), files=("paper_results.yaml",),
        resources=Resources(mem_mb=2000, runtime=30),
    ),
)}


def cell_name(*values) -> str:
    """The one way a cell or job is named (logs, DVC's ``stage@name``, provenance, resume files, the report):
    its wildcards' values in contract order, joined by ``-`` (``digits-0-sep-1``)."""
    return "-".join(str(v) for v in values)


def option(wildcard: str) -> str:
    """A wildcard's command-line option: ``pretrain_seed`` -> ``--pretrain-seed``."""
    return "--" + wildcard.replace("_", "-")


def stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"no stage {name!r} (stages: {list(STAGES)})") from None


def out(stage_name: str, key: str, **wildcards) -> Path:
    """Shorthand: ``out("pretrain", "model", benchmark="digits")``."""
    return stage(stage_name).out(key, **wildcards)


def outs(stage_name: str, **wildcards) -> dict[str, Path]:
    return stage(stage_name).outs(**wildcards)


def manifest(benchmark: str) -> Path:
    """The data manifest: the data folder's key file (it holds the sha256 of every set)."""
    data = STAGES["data"]
    return data.out("data", benchmark=benchmark) / data.outputs["data"].key_file


# ---------------------------------------------------------------------------- params

def lookup(params: dict, dotted: str, default=None):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


# ---------------------------------------------------------------------------- inputs and jobs

def cells_of(stage_: Stage, params: dict) -> list[dict]:
    """Every wildcard combination of ``stage_`` in the grid."""
    grid = params["grid"]
    return [dict(zip(stage_.wildcards, combo))
            for combo in itertools.product(*[grid[GRID_KEYS[w]] for w in stage_.wildcards])]


def input_paths(stage_: Stage, params: dict, tracked: bool = False, **wildcards) -> dict[str, list[str]]:
    """``{input key: [paths]}`` of one job. ``tracked``: a folder as its key file (Snakemake's view)."""
    out: dict[str, list[str]] = {}
    for key, inp in stage_.inputs.items():
        up = stage(inp.stage)
        template = up.tracked_template(inp.output) if tracked else up.template(inp.output)
        combos = itertools.product(*[params["grid"][GRID_KEYS[w]] for w in inp.over])  # grid read only if used
        fixed = {w: wildcards[w] for w in up.wildcards if w not in inp.over}
        out[key] = [template.format(**fixed, **dict(zip(inp.over, combo))) for combo in combos]
    return out


def job_name(stage_: Stage, **wildcards) -> str:
    """DVC's name of one job of a matrix stage (``finetune@digits-0-sep-1``)."""
    return f"{stage_.name}@{stage_.cell(**wildcards)}"


def jobs(params: dict) -> list[tuple[Stage, dict]]:
    """Every job of the grid: (stage, wildcards), in stage order."""
    return [(s, cell) for s in STAGES.values() for cell in cells_of(s, params)]

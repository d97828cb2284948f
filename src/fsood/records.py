"""One record per name: every fine-tuning method and every built-in benchmark, in one place.

A method record says which loss terms the method adds to CE, which params keys its objective
reads and which table of the paper (arXiv 2405.17816v2) reports it; a benchmark record says which
builder makes its data, how many ID classes it has, its OOD sets in the paper and a note. Everything
else reads these: ``fsood.methods`` (objectives), ``fsood.config`` (class counts),
``fsood.datasets`` (builders), ``fsood.paper`` (the published numbers' names) and the name lists in
``params.schema.yaml``, which :func:`sync_schema` writes (``python -m fsood.records`` rewrites the
schema; tests/test_records.py fails when the schema and the records differ).

Adding a method: a ``Method(...)`` below, its objective terms in ``fsood.losses`` if new, its
params section in params.yaml and its key types in the schema's ``methods.<name>``; then
``python -m fsood.records``. Plain Python only: Snakemake and the report import this without torch.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: CE (weight 1) plus ``stage1`` terms, plus ``stage2`` terms from
    ``finetune.stage2_epoch`` on; each {term: params key of its weight}."""

    name: str
    stage1: dict[str, str] = field(default_factory=dict)
    stage2: dict[str, str] = field(default_factory=dict)
    config_keys: tuple[str, ...] = ()  # the keys make_objective reads from methods.<name>
    paper_table: str | None = None  # where the paper reports it (None: not in the paper)
    summary: str = ""


METHOD_RECORDS: tuple[Method, ...] = (
    Method("none", summary="no fine-tuning: the pretrained model is scored as is"),
    Method("oe", {"oe": "oe_weight"}, config_keys=("oe_weight",), paper_table="Table 1",
           summary="Outlier Exposure: CE + oe_weight L_OE"),
    Method("energy_oe", {"energy": "weight"}, config_keys=("weight", "m_in", "m_out"), paper_table="Table 1",
           summary="Energy-bounded OE (Liu et al. 2020)"),
    Method("sep", {"oe": "oe_weight"}, {"clu": "alpha", "sep": "beta"},
           ("oe_weight", "alpha", "beta", "detach_weight", "mean_over_classes"), "Table 1",
           "the paper (Eq. 5 with the authors' code): CE + 0.5 OE, stage II + alpha L_clu + beta L_sep"),
    Method("oe_clu", {"oe": "oe_weight"}, {"clu": "alpha"},
           ("oe_weight", "alpha", "detach_weight", "mean_over_classes"), "Table 5",
           'Table 5 "OE+Clu": stage II adds L_clu only'),
    Method("oe_sep", {"oe": "oe_weight"}, {"sep": "beta"},
           ("oe_weight", "beta", "detach_weight", "mean_over_classes"), "Table 5",
           'Table 5 "OE+Sep": stage II adds L_sep only'),
    Method("sep_energy", {"energy": "energy_weight"}, {"clu": "alpha", "sep": "beta"},
           ("energy_weight", "m_in", "m_out", "alpha", "beta", "detach_weight", "mean_over_classes"), "Table 9",
           "Table 9: the separation losses on top of Energy-OE instead of OE"),
    Method("dal", {"oe_aug": "oe_weight"},
           config_keys=("oe_weight", "gamma", "gamma_init", "beta", "rho", "iterations", "strength"),
           paper_table="Table 1", summary="DAL: OE on the DAL-perturbed outlier embeddings (DALAugmentation)"),
)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark with a builder of its own (any other name is declared from parts in params.yaml)."""

    name: str
    builder: str  # fsood.datasets.<builder>.build makes its sets
    data_schema: str  # the $defs entry of params.schema.yaml its data section follows
    num_classes: int | None  # fixed by its format; None: read from its params (digits' id_classes)
    paper_sets: tuple[str, ...] = ()  # the paper's OOD sets; their mean is its "Average"
    paper_hard_sets: tuple[str, ...] = ()  # Table 11's hard OOD sets
    notes: str = ""


_CIFAR_SETS = ("svhn", "lsun_crop", "isun", "textures", "places365")
BENCHMARK_RECORDS: tuple[Benchmark, ...] = (
    Benchmark("digits", "digits", "digits_data", None,
              notes="a CPU-sized analog from scikit-learn's digits (no download)"),
    Benchmark("cifar10", "cifar_paper", "paper_cifar_data", 10, _CIFAR_SETS,
              ("lsun_fix", "imagenet_resize", "cifar100", "tin"), "the paper's CIFAR-10 benchmark (Table 1)"),
    Benchmark("cifar100", "cifar_paper", "paper_cifar_data", 100, _CIFAR_SETS,
              ("lsun_fix", "imagenet_resize", "cifar10", "tin"), "the paper's CIFAR-100 benchmark (Table 2)"),
    Benchmark("imagenet", "imagenet", "imagenet_data", 1000, ("inaturalist", "textures", "sun", "places"),
              notes="the paper's ImageNet-1k benchmark (Table 3); the images are the user's (licence)"),
)

METHODS = {m.name: m for m in METHOD_RECORDS}
BENCHMARKS = {b.name: b for b in BENCHMARK_RECORDS}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
FINE_TUNED: tuple[str, ...] = tuple(name for name in METHODS if name != "none")  # what grid.methods may list
PAPER_METHODS: tuple[str, ...] = tuple(m.name for m in METHOD_RECORDS if m.paper_table in ("Table 1", "Table 5"))
PAPER_BENCHMARKS: tuple[str, ...] = tuple(b.name for b in BENCHMARK_RECORDS if b.paper_sets)


# ----------------------------------------------------------------------------- the schema's name lists

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")
_LIST_MARK = re.compile(r"^(?P<head>.*\[)[^\]]*(?P<tail>\].*# names: methods)$", re.M)
_TUNED_MARK = re.compile(r"^(?P<head>.*\[)[^\]]*(?P<tail>\].*# names: fine-tuned methods)$", re.M)
_BLOCK = re.compile(r"(?P<begin>^ *# BEGIN names: benchmarks[^\n]*\n).*?(?P<end>^ *# END names: benchmarks)",
                    re.M | re.S)


def _benchmark_block(indent: str = "      ") -> str:
    out = []
    for b in BENCHMARK_RECORDS:
        out += [f"{indent}{b.name}:", f'{indent}  allOf: [{{$ref: "#/$defs/benchmark"}}]',
                f'{indent}  properties: {{data: {{$ref: "#/$defs/{b.data_schema}"}}}}']
    return "\n".join(out) + "\n"


def sync_schema(text: str) -> str:
    """``text`` (params.schema.yaml) with its marked name lists written from the records."""
    names = ", ".join(METHOD_NAMES)
    text, n_lists = _LIST_MARK.subn(lambda m: f"{m['head']}{names}{m['tail']}", text)
    tuned = ", ".join(FINE_TUNED)  # grid.methods and the verdict's: `none` is one cell a pretrained model, always
    text, n_tuned = _TUNED_MARK.subn(lambda m: f"{m['head']}{tuned}{m['tail']}", text)
    text, n_blocks = _BLOCK.subn(lambda m: m["begin"] + _benchmark_block() + m["end"], text)
    if n_lists < 1 or n_tuned < 3 or n_blocks != 1:
        raise ValueError(f"params.schema.yaml: expected a list marked '# names: methods', 3 marked '# names: "
                         f"fine-tuned methods' and one '# BEGIN/END names: benchmarks' block, found {n_lists}, "
                         f"{n_tuned} and {n_blocks}")
    return text


if __name__ == "__main__":  # python -m fsood.records [--check]
    old = SCHEMA_PATH.read_text()
    new = sync_schema(old)
    if "--check" in sys.argv[1:]:
        sys.exit(0 if new == old else f"{SCHEMA_PATH} differs from fsood.records: run python -m fsood.records")
    if new != old:
        from fsood.io import write_text  # atomic
        write_text(SCHEMA_PATH, new)
        print(f"wrote {SCHEMA_PATH}")

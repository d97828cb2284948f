"""params.yaml: loading, validation against the JSON schema, and the benchmark grid."""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from fsood.records import BENCHMARK_RECORDS

SCHEMA_PATH = Path(str(resources.files("fsood") / "params.schema.yaml"))


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key and the valid choices."""


@dataclass(frozen=True, order=True)
class Cell:
    """One fine-tuned cell: (benchmark, pretrained model's seed, method, fine-tuning seed). ``name`` matches
    DVC's ``finetune@name``."""

    benchmark: str
    pretrain_seed: int
    method: str
    seed: int

    @property
    def name(self) -> str:
        from fsood.contract import cell_name

        return cell_name(self.benchmark, self.pretrain_seed, self.method, self.seed)


def _where(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p)))
    return "".join(parts) or "(top level)"


# libyaml's parser where PyYAML has it: the pure-Python one takes ~0.2 s for the schema, which
# every Snakemake dry run and every CLI call pays (benchmarks/dag_time.py).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.load(SCHEMA_PATH.read_text(), Loader=_LOADER)


def validate_params(params: dict, source: str = "params.yaml") -> dict:
    """Refuse params that break the schema or the cross-field rules; return them unchanged."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(params).__name__}")
    methods = params.get("grid", {}).get("methods") if isinstance(params.get("grid"), dict) else None
    if isinstance(methods, list) and "none" in methods:  # an older params.yaml: say why, not just "not one of"
        raise ParamsError(f"{source} is invalid: grid.methods lists 'none', but the pretrained model is scored as it "
                          "is once per pretrained model (results/<benchmark>/model<k>/none), always; remove 'none' "
                          "from grid.methods")
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = [f"  - at {_where(e)}: {_deepest(e).message}" for e in errors]
        raise ParamsError(f"{source} is invalid ({len(errors)} problem(s)):\n" + "\n".join(lines))
    _check_cross_fields(params, source)
    return params


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For allOf/if-then failures, the nested error says more than the wrapper."""
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    return error


# The paper's benchmarks, whose builders read fixed formats: their class counts are the formats'.
NUM_CLASSES = {b.name: b.num_classes for b in BENCHMARK_RECORDS if b.num_classes is not None}


def num_classes(benchmark: str, bench: dict) -> int | None:
    """ID classes of a benchmark, from its params alone (before any data exists); None where only
    the data stage can tell (a declared benchmark that keeps every class of its source, or names
    them in a file)."""
    data = bench["data"]
    if "id" in data:  # declared from parts
        classes = data["id"].get("classes")
        return len(classes) if classes and all(isinstance(c, str) for c in classes) else None
    if "id_classes" in data:  # the digits analog
        return len(data["id_classes"])
    return NUM_CLASSES[benchmark]


def ood_set_names(bench: dict) -> list[str]:
    """The OOD test sets of a benchmark: a builder's list, or a declared benchmark's mapping's keys."""
    return list(bench["data"]["ood_sets"])


def _merged(defaults: dict, overrides: dict) -> dict:
    """``defaults`` with ``overrides`` applied key by key, nested mappings merged (not replaced)."""
    out = dict(defaults)
    for key, value in overrides.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def method_params(params: dict, benchmark: str, method: str) -> dict:
    """``methods.<method>`` with the benchmark's overrides (``benchmarks.<b>.methods.<method>``) applied."""
    return _merged(params["methods"][method], params["benchmarks"][benchmark]["methods"].get(method, {}))


def score_params(params: dict, benchmark: str) -> dict:
    """The ``score`` section with the benchmark's overrides (``benchmarks.<b>.score``) applied."""
    return _merged(params["score"], params["benchmarks"][benchmark]["score"])


def natural_sets(params: dict, benchmark: str) -> list[str]:
    """The benchmark's natural OOD sets: its OOD sets but the synthetic sanity sets (``score.synthetic_sets``,
    with the benchmark's overrides). Their mean is the headline, as the paper's Tables 1-2 average the real
    sets; the synthetic ones are reported apart."""
    synthetic = set(score_params(params, benchmark)["synthetic_sets"])
    return [s for s in ood_set_names(params["benchmarks"][benchmark]) if s not in synthetic]


def synthetic_sets(params: dict, benchmark: str) -> list[str]:
    """The benchmark's OOD sets that are synthetic sanity sets (noise), in their order."""
    synthetic = set(score_params(params, benchmark)["synthetic_sets"])
    return [s for s in ood_set_names(params["benchmarks"][benchmark]) if s in synthetic]


def paired_score(score_cfg: dict, method: str) -> str:
    """The score a method is judged by (``score.pairing``). The paper's pairing (Appendix A.8): the
    auxiliary-data baselines with MSP, its own method and its Table 5 / 9 variants with Eq. 6 (``fs``)."""
    pairing = score_cfg["pairing"]
    return pairing["methods"].get(method, pairing["default"])


def runtime_params(params: dict, benchmark: str) -> dict:
    """The ``runtime`` section with the benchmark's overrides (``benchmarks.<b>.runtime``) applied."""
    return _merged(params["runtime"], params["benchmarks"][benchmark]["runtime"])


def for_benchmark(params: dict, benchmark: str) -> dict:
    """``params`` as a stage of ``benchmark`` sees them: ``runtime`` with the benchmark's overrides."""
    return {**params, "runtime": runtime_params(params, benchmark)}


def _check_overrides(name: str, section: str, overrides: dict, defaults: dict) -> list[str]:
    """An override may only change an existing key, to a value of the same type."""
    problems = []
    for key, value in overrides.items():
        where = f"benchmarks.{name}.{section}.{key}"
        if key not in defaults:
            problems.append(f"{where} overrides nothing (valid keys: {sorted(defaults)})")
        elif isinstance(defaults[key], dict) or isinstance(value, dict):
            if not (isinstance(defaults[key], dict) and isinstance(value, dict)):
                problems.append(f"{where} must be a mapping like the global value")
            else:
                problems += _check_overrides(name, f"{section}.{key}", value, defaults[key])
        elif value is None or defaults[key] is None or value == "auto":
            continue  # a cap (null = all) against a number, 'auto' against a setting: the schema check below decides
        elif type(value) is not type(defaults[key]) and not (
            isinstance(value, (int, float)) and isinstance(defaults[key], (int, float))
            and not isinstance(value, bool) and not isinstance(defaults[key], bool)
        ):
            problems.append(f"{where}={value!r} has type {type(value).__name__}, the global value "
                            f"{defaults[key]!r} has type {type(defaults[key]).__name__}")
    return problems


def _check_declared(name: str, data: dict) -> list[str]:
    """What the schema cannot say plainly about a declared benchmark's sets."""
    where = f"benchmarks.{name}.data"
    specs = [("id", data["id"])] + [(f"outliers.sources[{i}]", s) for i, s in enumerate(data["outliers"]["sources"])]
    specs += [(f"ood_sets.{k}", s) for k, s in data["ood_sets"].items()]
    problems = [f"{where}.{key} names both a source and a folder; give one" for key, spec in specs
                if "source" in spec and "folder" in spec]
    problems += [f"{where}.{key}.count: outlier sources are pooled, their cap is {where}.outliers.count"
                 for key, spec in specs if key.startswith("outliers.") and "count" in spec]
    return problems


def _check_benchmark(name: str, bench: dict, params: dict) -> list[str]:
    """What the schema cannot say about one benchmark: its epochs, sets and report settings."""
    problems = _check_declared(name, bench["data"]) if "id" in bench["data"] else []
    ft = bench["finetune"]
    if ft["stage2_epoch"] > ft["epochs"]:
        problems.append(f"benchmarks.{name}.finetune.stage2_epoch={ft['stage2_epoch']} exceeds epochs={ft['epochs']}")
    pre = bench["pretrain"]
    if pre["schedule_epochs"] < pre["epochs"]:
        problems.append(f"benchmarks.{name}.pretrain.schedule_epochs={pre['schedule_epochs']} is shorter than "
                        f"epochs={pre['epochs']}: the cosine schedule must cover every epoch trained")
    norm = bench["data"].get("normalize")  # a declared benchmark may leave it to the data stage
    if norm and len(norm["mean"]) != len(norm["std"]):
        problems.append(f"benchmarks.{name}.data.normalize: mean and std differ in length")
    problems += _check_overrides(name, "methods", bench["methods"], params["methods"])
    problems += _check_overrides(name, "score", bench["score"], params["score"])
    problems += _check_overrides(name, "runtime", bench["runtime"], params["runtime"])
    ood_sets = ood_set_names(bench) + bench["data"].get("hard_ood_sets", [])
    if not bench["data"]["ood_sets"]:
        problems.append(f"benchmarks.{name}.data.ood_sets is empty: the benchmark needs at least one OOD set")
    overlap = set(bench["data"]["ood_sets"]) & set(bench["data"].get("hard_ood_sets", []))
    if overlap:
        problems.append(f"benchmarks.{name}.data: {sorted(overlap)} listed in both ood_sets and hard_ood_sets")
    if name in ood_sets:
        problems.append(f"benchmarks.{name}.data lists {name!r}, its own in-distribution set, as OOD")
    synthetic = set(_merged(params["score"], bench["score"]).get("synthetic_sets", []))
    if bench["data"]["ood_sets"] and all(s in synthetic for s in ood_set_names(bench)):
        problems.append(f"benchmarks.{name}.data.ood_sets are all synthetic sanity sets (score.synthetic_sets): the "
                        "headline averages the natural ones, and the benchmark has none")
    generated = [k for k, spec in bench["data"]["ood_sets"].items() if "synthetic" in spec] \
        if isinstance(bench["data"]["ood_sets"], dict) else []
    problems += [f"benchmarks.{name}.data.ood_sets.{k} is generated noise: list it in score.synthetic_sets (or "
                 f"benchmarks.{name}.score.synthetic_sets) so that no mean counts it" for k in generated
                 if k not in synthetic]
    projection_ood = params["report"]["projection_ood"].get(name)
    if projection_ood not in ood_sets:
        problems.append(f"report.projection_ood.{name}={projection_ood!r} is not an OOD set of "
                        f"benchmark {name!r} (valid: {ood_sets})")
    n_classes = num_classes(name, bench)
    bad = [c for c in params["report"]["projection_classes"] if n_classes is not None and c >= n_classes]
    if bad:
        problems.append(f"report.projection_classes {bad} out of range for {n_classes} ID classes of {name!r}")
    return problems


def _check_merged(params: dict) -> list[str]:
    """Each benchmark's merged values must still satisfy the global sections' schema."""
    problems, schema = [], _schema()
    for name in params["benchmarks"]:
        merged = {"methods": {m: method_params(params, name, m) for m in params["methods"]},
                  "score": score_params(params, name), "runtime": runtime_params(params, name)}
        for section, value in merged.items():
            validator = jsonschema.Draft202012Validator({**schema["properties"][section], "$defs": schema["$defs"]})
            for err in validator.iter_errors(value):
                problems.append(f"benchmarks.{name}.{section} overrides give an invalid {section} section: "
                                f"at {_where(err) if err.absolute_path else '(top level)'}: {err.message}")
        if not problems:  # what the score stage and the report read is the merged section: its main and pairing
            problems += [f"benchmarks.{name}.score overrides: {p}"
                         for p in _check_scored(merged["score"], ["none", *params["grid"]["methods"]])]
    return problems


def _check_cross_fields(params: dict, source: str) -> None:
    grid = params["grid"]
    problems = [f"grid.benchmarks names {name!r} but benchmarks has no such entry "
                f"(defined: {sorted(params['benchmarks'])})" for name in grid["benchmarks"]
                if name not in params["benchmarks"]]
    for name, bench in params["benchmarks"].items():
        problems += _check_benchmark(name, bench, params)
    problems += _check_scored(params["score"], ["none", *grid["methods"]])
    published = [b for b in grid["benchmarks"] if b in params["benchmarks"]
                 and params["benchmarks"][b]["pretrain"]["checkpoint"] is not None]
    if published and len(grid["pretrain_seeds"]) > 1:
        problems.append(f"grid.pretrain_seeds {grid['pretrain_seeds']}: benchmark(s) {published} start from one "
                        "published checkpoint (pretrain.checkpoint), which no seed changes; give one pretrain seed")
    if params["verdict"]["method"] == params["verdict"]["baseline"]:
        problems.append(f"verdict.method and verdict.baseline are both {params['verdict']['method']!r}; the verdict "
                        "compares two methods")
    if params["report"]["projection_seed"] not in grid["seeds"]:
        problems.append(f"report.projection_seed={params['report']['projection_seed']} is not in grid.seeds "
                        f"{grid['seeds']}")
    if not problems:
        problems = _check_merged(params)
    if problems:
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


def _check_scored(score: dict, methods: list[str]) -> list[str]:
    """score.main (the report's histograms) and every grid method's paired score (score.pairing: the headline,
    roc.csv) must be among score.scores, the scores the score stage computes."""
    problems = [] if score["main"] in score["scores"] else [
        f"score.main={score['main']!r} is not in score.scores {score['scores']}"]
    pairing = score.get("pairing", {})
    paired = {m: pairing.get("methods", {}).get(m, pairing.get("default")) for m in methods}
    return problems + [f"score.pairing pairs method {m!r} with score {s!r}, which is not in score.scores "
                       f"{score['scores']}" for m, s in paired.items() if s is not None and s not in score["scores"]]


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read and validate a params file; raises ParamsError naming every problem."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        params = yaml.load(path.read_text(), Loader=_LOADER)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    return validate_params(params, str(path))


def grid_cells(params: dict) -> list[Cell]:
    """Every fine-tuned cell of the grid, in a fixed order (benchmark, pretrained model, method, seed); the
    pretrained models themselves (method ``none``) are one cell each beside them."""
    g = params["grid"]
    return [Cell(*combo) for combo in itertools.product(g["benchmarks"], g["pretrain_seeds"], g["methods"],
                                                        g["seeds"])]


def check_cell(params: dict, **wildcards) -> None:
    """Refuse a CLI call for a cell that is not in the grid (a typo would otherwise run)."""
    from fsood.contract import GRID_KEYS

    for key, value in wildcards.items():
        valid = params["grid"][GRID_KEYS[key]]
        if value is not None and value not in valid:
            raise ParamsError(f"{key.replace('_', ' ')} {value!r} is not in grid.{GRID_KEYS[key]} of params.yaml "
                              f"(valid: {valid})")

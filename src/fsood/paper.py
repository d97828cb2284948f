"""The paper's published numbers (``paper_results.yaml``) beside the measured ones.

``paper_results.yaml`` holds, per benchmark, one entry per (method, score, OOD set): the table
it comes from, the starting model it assumes (``start``, a checkpoint-registry name), FPR95 and
AUROC in percent (``null`` where the paper prints no value), the metric convention and the paper
version. :func:`load` checks every entry and names the bad
one. :func:`compare` puts each published number beside the mean ± std over the grid's seeds of
``scores.<score>.<set>.<metric>`` in the cells' metrics.json, with a status:

* ``measured``: both numbers exist; difference = measured - published;
* ``not run``: the method is not in grid.methods, or the cells lack that score / set / metric;
* ``not published``: the paper prints no value (null);
* ``not comparable``: the cells used the other metric convention: FPR95 is not the same
  quantity under ID-positive and OOD-positive metrics, so no difference is printed.

numpy / pandas / yaml only: the report stage uses this module without torch.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fsood import records
from fsood.metrics import CONVENTIONS

PAPER_RESULTS = Path(str(resources.files("fsood") / "paper_results.yaml"))

BENCHMARKS = records.PAPER_BENCHMARKS
METHODS = records.PAPER_METHODS  # fsood names; `sep` is the paper's "Ours"
SCORES = ("fs", "msp", "energy", "maxlogit", "abs_cos")  # fsood.detectors names; `fs` is Eq. 6
METRICS = ("fpr95", "auroc")
MAIN_SETS = {b: records.BENCHMARKS[b].paper_sets for b in BENCHMARKS}  # their mean is the paper's "Average"
HARD_SETS = {b: records.BENCHMARKS[b].paper_hard_sets for b in BENCHMARKS}  # Table 11
REQUIRED = ("table", "method", "score", "set", "start", "fpr95", "auroc", "convention", "source")
OPTIONAL = ("note",)
STATUSES = ("measured", "not run", "not comparable", "not published")
COLUMNS = ["table", "method", "score", "start", "set", "metric", "published", "measured_mean", "measured_std", "n_cells",
           "difference", "status", "detail", "note"]
POSITIVE = {"id_positive": "id", "ood_positive": "ood"}  # convention -> metrics.json convention.positive


class PaperResultsError(ValueError):
    """paper_results.yaml is malformed; the message names the entry and the valid choices."""


def valid_sets(benchmark: str) -> tuple[str, ...]:
    hard = HARD_SETS[benchmark]
    return (*MAIN_SETS[benchmark], "mean", *hard, *(("hard_mean",) if hard else ()))


# ----------------------------------------------------------------------------- loading

def load(path: str | Path | None = None) -> dict:
    """Read and check the published numbers (default: the packaged file); raises PaperResultsError."""
    path = Path(path if path is not None else PAPER_RESULTS)
    if not path.is_file():
        raise PaperResultsError(f"published numbers not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PaperResultsError(f"{path}: not valid YAML: {err}") from err
    return validate(data, str(path))


def validate(data, where: str = "paper_results.yaml") -> dict:
    """Return ``data`` unchanged if every entry is well formed, else raise with all problems."""
    if not isinstance(data, dict) or set(data) != {"source", "benchmarks"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise PaperResultsError(f"{where}: expected exactly the top-level keys ['benchmarks', 'source'], got {keys}")
    problems = []
    if not isinstance(data["source"], dict) or not _text(data["source"].get("version")):
        problems.append("source: needs a mapping with a non-empty 'version' (e.g. arXiv:2405.17816v2)")
    if not isinstance(data["benchmarks"], dict) or not data["benchmarks"]:
        raise PaperResultsError(f"{where}: 'benchmarks' must be a non-empty mapping of {list(BENCHMARKS)}")
    for bench, block in data["benchmarks"].items():
        if bench not in BENCHMARKS:
            problems.append(f"benchmarks.{bench}: unknown benchmark {bench!r} (valid: {list(BENCHMARKS)})")
            continue
        if not isinstance(block, dict) or not isinstance(block.get("entries"), list) or not block["entries"]:
            problems.append(f"benchmarks.{bench}: needs a non-empty list 'entries'")
            continue
        extra = sorted(set(block) - {"entries", "model"})
        if extra:
            problems.append(f"benchmarks.{bench}: unexpected key(s) {extra} (valid: ['entries', 'model'])")
        seen: dict[tuple, int] = {}
        for i, entry in enumerate(block["entries"]):
            label = f"benchmarks.{bench}.entries[{i}]"
            found = _entry_problems(entry, bench)
            if found:
                if isinstance(entry, dict):
                    label += f" ({entry.get('method')}/{entry.get('score')}/{entry.get('set')})"
                problems += [f"{label}: {p}" for p in found]
                continue
            key = (entry["method"], entry["score"], entry["set"])
            if key in seen:
                problems.append(f"{label}: duplicates entries[{seen[key]}] (method, score, set) = {key}")
            seen.setdefault(key, i)
    if problems:
        raise PaperResultsError(f"{where} is invalid ({len(problems)} problem(s)):\n"
                                + "\n".join(f"  - {p}" for p in problems))
    return data


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _entry_problems(entry, bench: str) -> list[str]:
    if not isinstance(entry, dict):
        return [f"expected a mapping, got {type(entry).__name__}"]
    problems = [f"missing field {k!r}" for k in REQUIRED if k not in entry]
    extra = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL))
    if extra:
        problems.append(f"unexpected field(s) {extra} (valid: {[*REQUIRED, *OPTIONAL]})")
    choices = {"method": METHODS, "score": SCORES, "set": valid_sets(bench), "convention": CONVENTIONS}
    for field, valid in choices.items():
        if field in entry and entry[field] not in valid:
            problems.append(f"{field} {entry[field]!r} is not valid for {bench} (valid: {list(valid)})")
    table = entry.get("table")
    if "table" in entry and (isinstance(table, bool) or not isinstance(table, int) or table < 1):
        problems.append(f"table {table!r} is not a positive table number")
    if "start" in entry and not _text(entry["start"]):
        problems.append(f"start {entry['start']!r} is not a non-empty starting-model name")
    if "source" in entry and not _text(entry["source"]):
        problems.append(f"source {entry['source']!r} is not a non-empty paper version")
    if "note" in entry and not _text(entry["note"]):
        problems.append(f"note {entry['note']!r} is not a non-empty text")
    for metric in METRICS:
        value = entry.get(metric)
        if value is None:
            if metric in entry and not _text(entry.get("note")):
                problems.append(f"{metric} is null: a 'note' must say why (e.g. 'not published: ...')")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
            problems.append(f"{metric} {value!r} is not a percentage in [0, 100] or null")
    return problems


def entries(data: dict, benchmark: str) -> list[dict]:
    """The published entries of one benchmark, in file order; [] if the paper has none."""
    block = data["benchmarks"].get(benchmark)
    return list(block["entries"]) if block else []


# ----------------------------------------------------------------------------- comparison

def compare(published: list[dict], metrics: dict, methods: list[str]) -> pd.DataFrame:
    """One row per published entry and metric (COLUMNS), measured = mean ± std over the method's cells.

    ``metrics`` maps a cell (method, pretrain_seed, seed) to its metrics.json; ``methods`` is grid.methods.
    std has ddof=1, and is 0 with a single cell (as in the summary table).
    """
    rows = []
    for entry in published:
        cells = {key[1:]: m for key, m in sorted(metrics.items(), key=lambda kv: str(kv[0]))
                 if key[0] == entry["method"]}
        for metric in METRICS:
            rows.append(_row(entry, metric, cells, methods))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(entry: dict, metric: str, cells: dict, methods: list[str]) -> dict:
    method, score, ood_set = entry["method"], entry["score"], entry["set"]
    row = {"table": entry["table"], "method": method, "score": score, "start": entry["start"], "set": ood_set,
           "metric": metric,
           "published": entry[metric], "measured_mean": None, "measured_std": None, "n_cells": 0,
           "difference": None, "note": entry.get("note", "")}
    if method not in methods and method != "none":
        return {**row, "status": "not run", "detail": f"method {method!r} is not in grid.methods {list(methods)}"}
    if not cells:
        return {**row, "status": "not run", "detail": f"no metrics.json of method {method!r} was read"}
    missing = _missing(cells, score, ood_set, metric)
    if missing:
        return {**row, "status": "not run", "detail": missing}
    values = np.array([float(m["scores"][score][ood_set][metric]) for m in cells.values()])
    row.update(measured_mean=float(values.mean()), n_cells=len(values),
               measured_std=float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    if entry[metric] is None:
        return {**row, "status": "not published", "detail": entry.get("note") or "the paper prints no value"}
    used = sorted({str(m["convention"]["positive"]) for m in cells.values()})
    if used != [POSITIVE[entry["convention"]]]:
        return {**row, "status": "not comparable",
                "detail": f"measured with {'/'.join(used)}-positive metrics, published {entry['convention']}: "
                          "FPR95 differs between the conventions"}
    return {**row, "difference": row["measured_mean"] - entry[metric], "status": "measured", "detail": ""}


def _missing(cells: dict, score: str, ood_set: str, metric: str) -> str:
    """Why the cells cannot give this number, naming the score / set / metric and the cells; '' if they can."""
    for what, lacks in (
        (f"score {score!r}", lambda m: score not in m["scores"]),
        (f"set {ood_set!r} under scores.{score}", lambda m: ood_set not in m["scores"][score]),
        (f"metric {metric!r} under scores.{score}.{ood_set}", lambda m: metric not in m["scores"][score][ood_set]),
    ):
        lacking = [cell for cell, m in cells.items() if lacks(m)]
        if lacking:
            return f"{what} is not in metrics.json of cell(s) (model, seed) {lacking}"
    return ""


# ----------------------------------------------------------------------------- outputs

def comparison_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _num(value, fmt: str = ".2f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _measured(r) -> str:
    return "–" if r.n_cells == 0 else f"{r.measured_mean:.2f} ± {r.measured_std:.2f}"


def comparison_markdown(frame: pd.DataFrame, data: dict, benchmark: str, design: str,
                        note: str | None = None, measured_start: str | None = None) -> str:
    """The averages first (method x metric), then every published entry; notes as footnotes.

    Each row names the score and the starting model (``start``) the published entry assumes;
    ``measured_start`` says what the measured cells started from.
    """
    title = f"# Paper comparison: benchmark `{benchmark}`"
    if frame.empty:
        lines = [title, "", f"The paper publishes no numbers for `{benchmark}`: `paper_results.yaml` holds "
                 f"{', '.join(f'`{b}`' for b in data['benchmarks'])} only, so there is nothing to compare."]
        return "\n".join(lines + ([note] if note else [])) + "\n"
    counts = frame["status"].value_counts()
    lines = [title, "",
             f"- Published: {data['source'].get('paper', 'the paper')}, {data['source']['version']}, tables "
             f"{sorted(set(frame['table']))} as transcribed in `src/fsood/paper_results.yaml`; percent.",
             f"- Measured: {design}, of each cell's metrics.json `scores.<score>.<set>.<metric>` (std with ddof=1; 0 "
             "for one cell); `mean` averages the natural OOD sets; difference = measured - published.",
             "- Published numbers are ID-positive (Hendrycks' FPR95); cells scored with OOD-positive metrics are "
             "`not comparable` and get no difference.",
             "- Each published entry names its score and the starting model it assumes (`start`, a name in "
             "fsood's checkpoint registry); a measured number is of the same score."]
    if measured_start:
        lines.append(f"- Measured cells start from: {measured_start}.")
    lines.append("- Rows: " + ", ".join(f"{s} {int(counts.get(s, 0))}" for s in STATUSES) + ".")
    if note:
        lines.append(f"- {note}")
    footnotes: dict[str, int] = {}

    def mark(note: str) -> str:
        """A footnote number for the entry's note (one per distinct text)."""
        return f" [{footnotes.setdefault(note, len(footnotes) + 1)}]" if note else ""

    means = frame[frame["set"] == "mean"]
    if not means.empty:
        lines += ["", "## Averages over the main OOD sets", "",
                  "| table | method | score | start | FPR95 published | FPR95 measured | Δ | AUROC published | "
                  "AUROC measured | Δ | status |", "|" + "---|" * 11]
        for (table, method, score, start), group in means.groupby(["table", "method", "score", "start"],
                                                                  sort=False):
            by = {r.metric: r for r in group.itertuples()}
            cells = [f"{_num(by[k].published)} | {_measured(by[k])} | {_num(by[k].difference, '+.2f')}"
                     for k in METRICS]
            status = "; ".join(dict.fromkeys(group["status"])) + mark(group["note"].iloc[0])
            lines.append(f"| {table} | {method} | {score} | {start} | {' | '.join(cells)} | {status} |")
    lines += ["", "## Every published entry", "",
              "| table | method | score | start | set | metric | published | measured | difference | status |",
              "|" + "---|" * 10]
    for r in frame.itertuples():
        status = r.status if r.status in ("measured", "not published") else f"{r.status}: {r.detail}"
        lines.append(f"| {r.table} | {r.method} | {r.score} | {r.start} | {r.set} | {r.metric} | {_num(r.published)} | "
                     f"{_measured(r)} | {_num(r.difference, '+.2f')} | {status}{mark(r.note)} |")
    if footnotes:
        lines += ["", "Notes:", ""] + [f"{i}. {text}" for text, i in footnotes.items()]
    return "\n".join(lines) + "\n"


def summary_section(frame: pd.DataFrame) -> dict:
    """DVC metrics: per method and score, the published and measured averages (numbers only)."""
    out: dict = {}
    for r in frame[frame["set"] == "mean"].itertuples():
        entry = out.setdefault(r.method, {}).setdefault(r.score, {})
        if r.published is not None and not (isinstance(r.published, float) and math.isnan(r.published)):
            entry.setdefault("published", {})[r.metric] = float(r.published)
        if r.n_cells:
            entry.setdefault("measured", {})[r.metric] = {"mean": round(r.measured_mean, 4),
                                                          "std": round(r.measured_std, 4)}
        if r.status == "measured":
            entry.setdefault("difference", {})[r.metric] = round(r.difference, 4)
    return out

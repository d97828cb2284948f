"""Stage 6, report: tables and figures of one benchmark from the grid's score outputs.

Reads only the cells that params.yaml's grid names (never a glob of results/: a stale cell
must not slip in). Every input is loaded and checked before anything is written; each output
is then written atomically. Torch is never imported, and nothing the score stage computed is
computed again: the histograms read its scores.npz, the projection its cache's features. The paper's published
numbers (``fsood.paper``) are set beside the measured ones in paper_comparison.md / .csv.
"""
from __future__ import annotations

import logging
from collections import ChainMap

import numpy as np
import pandas as pd
from tqdm import tqdm

from fsood import contract, nc, paper, plots
from fsood.comparison import feature_lines, paired_difference_lines
from fsood.config import ood_set_names, paired_score, score_params
from fsood.io import load_npz, read_json, write_bytes, write_json, write_text

log = logging.getLogger(__name__)

FINE_TUNED_FIRST = ("oe", "sep")  # the paper's Fig. 2 compares OE and feature separation
SUBSAMPLE_SEED = 0  # same points for every method: ID test and OOD sets are shared between cells
TABLE_METRICS = ("fpr95", "auroc")
NC_KEYS = ("nc1", "nc2_equinorm_means", "nc2_equiangular_means", "nc3", "nc4")


# ----------------------------------------------------------------------------- inputs

def _require(path, stage: str, how: str):
    if not path.is_file():
        raise FileNotFoundError(f"report needs {path}, made by the {stage} stage ({how}); run it first")
    return path


def _cell_file(benchmark: str, method: str, seed: int, key: str):
    path = contract.out("score", key, benchmark=benchmark, method=method, seed=seed)
    return _require(path, "score", f"fsood score --benchmark {benchmark} --method {method} --seed {seed}")


def _history_file(benchmark: str, method: str, seed: int):
    path = contract.out("finetune", "history", benchmark=benchmark, method=method, seed=seed)
    return _require(path, "finetune", f"fsood finetune --benchmark {benchmark} --method {method} --seed {seed}")


def _nc_file(benchmark: str):
    path = contract.out("subspace", "nc", benchmark=benchmark)
    return _require(path, "subspace", f"fsood subspace --benchmark {benchmark}")


def projection_methods(methods: list[str]) -> list[str]:
    """oe and sep when both are in the grid, else up to two fine-tuned methods present."""
    tuned = [m for m in methods if m != "none"]
    preferred = [m for m in FINE_TUNED_FIRST if m in tuned]
    return (preferred + [m for m in tuned if m not in preferred])[:2]


def load_inputs(params: dict, benchmark: str) -> dict:
    """Every file the report reads, checked for existence before any is loaded."""
    grid = params["grid"]
    cells = [(m, s) for m in grid["methods"] for s in grid["seeds"]]
    seed = params["report"]["projection_seed"]
    metric_files = {cell: _cell_file(benchmark, *cell, "metrics") for cell in cells}
    score_files = {m: _cell_file(benchmark, m, seed, "scores") for m in grid["methods"]}
    cache_files = {m: _cell_file(benchmark, m, seed, "cache") for m in projection_methods(grid["methods"])}
    nc_file = _nc_file(benchmark)  # of the one pretrained model every cell fine-tunes
    tuned = [(m, s) for m, s in cells if m != "none"]  # `none` carries the pretraining curve
    history_files = {cell: _history_file(benchmark, *cell) for cell in tuned}
    bar = dict(unit="cell", disable=None)  # a bar on a terminal only (not in a pipe or a cluster's log)
    metrics = {cell: read_json(p) for cell, p in tqdm(metric_files.items(), desc="report: metrics", **bar)}
    scores = {m: load_npz(p) for m, p in score_files.items()}
    caches = {m: load_npz(p) for m, p in tqdm(cache_files.items(), desc=f"report: caches seed {seed}", **bar)}
    nc_train = read_json(nc_file)
    history = [pd.read_csv(p).assign(method=m, seed=s) for (m, s), p in history_files.items()]
    _check_consistent(metrics, params, benchmark)
    ood_sets = ood_set_names(params["benchmarks"][benchmark])
    _check_stored(caches, [f"{name}__{kind}" for name in ["id_test", *ood_sets]
                           for kind in ("logits", "features", "labels")] + ["fc_weight"], "cache", benchmark, seed)
    _check_stored(scores, [f"{params['score']['main']}__{name}" for name in ["id_test", *ood_sets]], "scores",
                  benchmark, seed)
    published = paper.load()  # a malformed published entry stops the report before it writes anything
    return {"metrics": metrics, "caches": caches, "scores": scores, "nc": nc_train, "paper": published,
            "history": pd.concat(history, ignore_index=True) if history else pd.DataFrame()}


def _check_consistent(metrics: dict, params: dict, benchmark: str) -> None:
    """All cells share one metric convention and hold every score and OOD set of params."""
    conventions = {str(sorted(m["convention"].items())) for m in metrics.values()}
    if len(conventions) > 1:
        raise ValueError(f"cells of {benchmark} mix metric conventions; rerun the score stage for all of them")
    ood_sets = ood_set_names(params["benchmarks"][benchmark])
    for (method, seed), m in metrics.items():
        for score in params["score"]["scores"]:
            missing = [s for s in [*ood_sets, "mean"] if s not in m["scores"].get(score, {})]
            if missing:
                raise ValueError(f"{benchmark}/{method}/seed{seed} metrics.json lacks score {score!r} for "
                                 f"{missing}: it is stale, rerun its score stage")


def _check_stored(stored: dict, keys: list[str], output: str, benchmark: str, seed: int) -> None:
    """Each method's score-stage ``output`` (an npz, loaded into ``stored``) holds every one of ``keys``."""
    for method, arrays in stored.items():
        missing = [k for k in keys if k not in arrays]
        if missing:
            path = contract.out("score", output, benchmark=benchmark, method=method, seed=seed)
            raise ValueError(f"{path} lacks {missing}: it is stale, rerun its score stage")


# ----------------------------------------------------------------------------- tables

def metrics_frame(metrics: dict) -> pd.DataFrame:
    """Long DataFrame (method, seed, score, ood_set, metric, value) incl. ID accuracy rows."""
    rows = []
    for (method, seed), m in metrics.items():
        for score, per_set in m["scores"].items():
            for ood_set, values in per_set.items():
                rows += [(method, seed, score, ood_set, k, float(v)) for k, v in values.items()]
            rows.append((method, seed, score, "id_test", "id_accuracy", float(m["id_accuracy"])))
    return pd.DataFrame(rows, columns=["method", "seed", "score", "ood_set", "metric", "value"])


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds (ddof=1; 0 with a single seed) per (method, score, ood_set, metric)."""
    keys = ["method", "score", "ood_set", "metric"]
    out = frame.groupby(keys, sort=False)["value"].agg(mean="mean", std="std", n_seeds="count").reset_index()
    out["std"] = out["std"].where(out["n_seeds"] > 1, 0.0)
    return out


def _ordered(summary: pd.DataFrame, params: dict, benchmark: str) -> pd.DataFrame:
    """Keep params' scores / OOD sets / methods, ordered: main score first, methods in grid order."""
    main = params["score"]["main"]
    scores = [main] + [s for s in params["score"]["scores"] if s != main]
    sets = [*ood_set_names(params["benchmarks"][benchmark]), "mean", "id_test"]
    metrics = ["fpr95", "auroc", "aupr_in", "aupr_out", "id_accuracy"]
    df = summary[summary["score"].isin(scores) & summary["ood_set"].isin(sets)].copy()
    for col, order in (("score", scores), ("method", params["grid"]["methods"]), ("ood_set", sets),
                       ("metric", metrics)):
        df[col] = pd.Categorical(df[col], categories=order, ordered=True)
    return df.sort_values(["score", "method", "ood_set", "metric"]).reset_index(drop=True)


def summary_csv(summary: pd.DataFrame) -> str:
    df = summary.astype({c: str for c in ("method", "score", "ood_set", "metric")})
    return df.round(4).to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _convention_lines(convention: dict) -> list[str]:
    return [f"- Positive class: **{convention['positive'].upper()}**; scores: higher score = more ID.",
            f"- FPR95: {convention['fpr95']}.",
            f"- AUROC: {convention.get('auroc', 'area under ROC')}. All values in percent."]


def summary_markdown(summary: pd.DataFrame, params: dict, benchmark: str, convention: dict) -> str:
    """The paper's pairing first (one row per method, its paired score), then every (method, score):
    FPR95 / AUROC per OOD set and mean, then ID accuracy."""
    seeds = params["grid"]["seeds"]
    sets = [*ood_set_names(params["benchmarks"][benchmark]), "mean"]
    cell = {(r.method, r.score, r.ood_set, r.metric): f"{r.mean:.2f} ± {r.std:.2f}" for r in summary.itertuples()}
    header = ["method", "score"] + [f"{s} {k.upper()}" for s in sets for k in TABLE_METRICS] + ["ID acc."]

    def row(method: str, score: str, name: str) -> str:
        values = [cell.get((method, score, s, k), "n/a") for s in sets for k in TABLE_METRICS]
        acc = cell.get((method, score, "id_test", "id_accuracy"), "n/a")
        return "| " + " | ".join([method, name, *values, acc]) + " |"

    lines = [f"# Summary: benchmark `{benchmark}`", "",
             f"- {len(seeds)} seed(s) {seeds}; mean ± std over seeds (std with ddof=1; 0 for one seed).",
             *_convention_lines(convention)]
    notes = params["benchmarks"][benchmark].get("notes")  # benchmarks.<b>.notes: a caveat of the benchmark
    if notes:
        lines.append(f"- {notes}")
    lines += ["", "## The paper's pairing", "",
              "Each method with the score `score.pairing` gives it: by default each baseline with MSP, the "
              "paper's method (and its Table 5 / 9 variants) with Eq. 6 (`fs`), as the paper compares them "
              "(Appendix A.8). The same numbers, mean over the main OOD sets, are in `headline.json`.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paired = {m: paired_score(params["score"], m) for m in params["grid"]["methods"]}
    lines += [row(m, score, score) for m, score in paired.items()]
    lines += ["", "## Every score", "",
              f"Main score: `{params['score']['main']}` (listed first); methods in grid order.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (score, method), _ in summary.groupby(["score", "method"], sort=True, observed=True):
        lines.append(row(method, score, f"**{score}**" if score == params["score"]["main"] else score))
    return "\n".join(lines) + "\n"


def comparison_markdown(metrics: dict, nc_train: dict, params, benchmark: str) -> str:
    """The summary's last sections: paired per-seed differences to `oe` and each method's NC / span(W)."""
    grid = params["grid"]
    pairing = {m: paired_score(params["score"], m) for m in grid["methods"]}
    ood_sets = ood_set_names(params["benchmarks"][benchmark])
    lines = paired_difference_lines(metrics, grid["methods"], grid["seeds"], pairing, ood_sets=ood_sets)
    lines += feature_lines(metrics, grid["methods"], grid["seeds"], ood_sets, nc_train)
    return "\n".join(lines) + "\n"


def summary_json(summary: pd.DataFrame) -> dict:
    """DVC metrics: per method, ID accuracy and the mean-over-OOD-sets FPR95 / AUROC of every score."""
    out: dict = {}
    stat = lambda r: {"mean": round(float(r.mean), 4), "std": round(float(r.std), 4)}  # noqa: E731
    for r in summary.itertuples():
        entry = out.setdefault(str(r.method), {})
        if r.metric == "id_accuracy":
            entry["id_accuracy"] = stat(r)
        elif r.ood_set == "mean" and r.metric in TABLE_METRICS:
            entry.setdefault(str(r.score), {}).setdefault("mean", {})[r.metric] = stat(r)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and std over seeds (ddof=1, as the summary; 0 for one seed), rounded for a small file."""
    arr = np.asarray(values, dtype=np.float64)
    return round(float(arr.mean()), 4), round(float(arr.std(ddof=1)) if arr.size > 1 else 0.0, 4)


def headline_json(metrics: dict, nc_train: dict, params, benchmark: str) -> dict:
    """The dozen numbers of the paper's tables, DVC's default metrics (``dvc exp show``, ``dvc metrics diff``).

    Per method, keyed ``<method>.<paired score>``: mean FPR95 and AUROC over the main OOD sets (mean and
    std over seeds), ID accuracy, and cos-to-span(W) of the ID test and of the OOD test features (mean over
    the main OOD sets; Sec. 4.5: fine-tuning should keep ID near span(W) and push OOD off it), each a mean
    over seeds. ``nc1_pretrained``: NC1 of the (one) pretrained model's ID train features."""
    seeds, ood_sets = params["grid"]["seeds"], ood_set_names(params["benchmarks"][benchmark])
    out: dict = {"nc1_pretrained": round(float(nc_train["nc1"]), 4)}
    for method in params["grid"]["methods"]:
        cells = [metrics[method, s] for s in seeds]
        score = paired_score(params["score"], method)
        entry = {}
        for k in TABLE_METRICS:
            entry[k], entry[f"{k}_std"] = _mean_std([c["scores"][score]["mean"][k] for c in cells])
        entry["id_acc"] = _mean_std([c["id_accuracy"] for c in cells])[0]
        entry["cos_span_id"] = _mean_std([c["separation"]["id_test"]["cos_to_span"] for c in cells])[0]
        entry["cos_span_ood"] = _mean_std([np.mean([c["separation"][o]["cos_to_span"] for o in ood_sets])
                                           for c in cells])[0]
        out[method] = {score: entry}
    return out


# ----------------------------------------------------------------------------- figure data

def histogram_frame(scores: dict, methods: list[str], sets: list[str], main: str) -> pd.DataFrame:
    """Long DataFrame (method, set, score) of the main score for ID test and each OOD set, as each cell's
    score stage wrote it (scores.npz: fitted scores such as KNN learnt from that cell's ID-train subset)."""
    parts = [pd.DataFrame({"method": method, "set": name, "score": scores[method][f"{main}__{name}"]})
             for method in methods for name in ["id_test", *sets]]
    return pd.concat(parts, ignore_index=True)


def _subsample(x: np.ndarray, k: int) -> np.ndarray:
    if len(x) <= k:
        return x
    idx = np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(len(x), size=k, replace=False))
    return x[idx]


def projection_axes(weight: np.ndarray, c1: int, c2: int, ood_features: np.ndarray) -> np.ndarray:
    """Orthonormal (3, d): w1, w2 Gram-Schmidt-orthogonalised to w1, and u, the top principal
    direction of the OOD features' residual after removing their component in span(W)."""
    w = np.asarray(weight, dtype=np.float64)
    e1 = w[c1] / np.linalg.norm(w[c1])
    e2 = w[c2] - (w[c2] @ e1) * e1
    e2 /= np.linalg.norm(e2)
    basis = nc.principal_basis(w)
    z = np.asarray(ood_features, dtype=np.float64)
    resid = z - (z @ basis) @ basis.T
    u = np.linalg.svd(resid - resid.mean(axis=0), full_matrices=False)[2][0]
    u *= np.sign(resid.mean(axis=0) @ u) or 1.0  # fixed sign: OOD residuals project positively on average
    return np.stack([e1, e2, u])


def projection_panel(cache: dict, classes: list[int], ood: str, max_points: int) -> dict:
    """Points of the two ID classes and the OOD set in (w1, w2) and (w1, w2, u) coordinates."""
    c1, c2 = classes
    axes = projection_axes(cache["fc_weight"], c1, c2, cache[f"{ood}__features"])
    labels, feats = cache["id_test__labels"], cache["id_test__features"]
    sets = {f"ID class {c1}": feats[labels == c1], f"ID class {c2}": feats[labels == c2],
            f"OOD {ood}": cache[f"{ood}__features"]}
    coords = {k: _subsample(np.asarray(v, dtype=np.float64), max_points) @ axes.T for k, v in sets.items()}
    return {"2d": {k: v[:, :2] for k, v in coords.items()}, "3d": coords,
            "axes": (f"z·w1 (class {c1})", f"z·w2 (class {c2}, ⊥ w1)", "z·u (OOD residual PC1)")}


def _projection_figure(params: dict, benchmark: str, caches: dict):
    rep = params["report"]
    methods = projection_methods(params["grid"]["methods"])
    title = f"Fig. 2 analog, {benchmark}, seed {rep['projection_seed']}: ID classes vs OOD '{rep['projection_ood'][benchmark]}'"
    if not methods:
        return plots.message_figure("no fine-tuned methods in the grid", title)
    panels = {m: projection_panel(caches[m], rep["projection_classes"], rep["projection_ood"][benchmark],
                                 rep["max_points"])
              for m in methods}
    caption = (f"Raw penultimate features z projected onto w1 = W[{rep['projection_classes'][0]}]/||.|| and w2 = "
               f"W[{rep['projection_classes'][1]}] Gram-Schmidt-orthogonalised to w1 (rows of each model's own "
               "classifier W). 3-D: third axis u = top principal direction (numpy SVD) of the centred residual of "
               f"the OOD features after removing their component in span(W); u is orthogonal to span(W). "
               f"Up to {rep['max_points']} points per set (fixed subsample).")
    return plots.feature_projection(panels, caption, title)


def _separation_frame(metrics: dict, sets: list[str]) -> pd.DataFrame:
    """Long (method, seed, set, measure, value) of the figure's separation measures each cell holds."""
    rows = [(method, seed, name, k, float(v)) for (method, seed), m in metrics.items() for name in sets
            for k, v in m["separation"][name].items() if k in plots.SEPARATION_PANELS]
    return pd.DataFrame(rows, columns=["method", "seed", "set", "measure", "value"])


def start_description(pretrain: dict) -> str:
    """What the benchmark's cells start from: a registry checkpoint, or the schedule trained here."""
    if pretrain["checkpoint"]:
        return f"`{pretrain['checkpoint']}`"
    schedule = "warmup-then-linear (the fast recipe)" if pretrain["fast_recipe"] else "cosine"
    return (f"a CE model trained here, stopped after epoch {pretrain['epochs']} of a "
            f"{pretrain['schedule_epochs']}-epoch {schedule} schedule")


def _nc_frame(nc_train: dict) -> pd.DataFrame:
    return pd.DataFrame([(k, float(nc_train[k])) for k in NC_KEYS if k in nc_train], columns=["metric", "value"])


# ----------------------------------------------------------------------------- stage

def build_outputs(params: dict, benchmark: str, inputs: dict) -> dict[str, bytes | str | dict]:
    """Every report file's content, keyed as the report stage's outputs in fsood.contract (nothing written yet)."""
    grid, score_cfg = params["grid"], params["score"]
    main, seed = score_cfg["main"], params["report"]["projection_seed"]
    ood_sets = ood_set_names(params["benchmarks"][benchmark])
    metrics = inputs["metrics"]
    convention = next(iter(metrics.values()))["convention"]
    summary = _ordered(summarise(metrics_frame(metrics)), params, benchmark)
    conv_short = f"{convention['positive'].upper()} positive"
    sub = f"({benchmark}, {conv_short})"

    fpr = {(m, s): metrics[m, seed]["scores"][main][s]["fpr95"] for m in grid["methods"] for s in ood_sets}
    hist = plots.score_histograms(histogram_frame(inputs["scores"], grid["methods"], ood_sets, main),
                                  main, grid["methods"], ood_sets, fpr, f"{sub}, seed {seed}")
    heat = summary[(summary["score"] == main) & (summary["metric"] == "fpr95") & (summary["ood_set"] != "id_test")]
    wide = {k: heat.pivot(index="method", columns="ood_set", values=k).astype(float)
            .reindex(index=grid["methods"], columns=[*ood_sets, "mean"]) for k in ("mean", "std")}
    n_seeds = len(grid["seeds"])
    heat_title = (f"FPR95 (%) of score '{main}', mean over {n_seeds} seed(s), {benchmark}\n"
                  f"convention: {conv_short}, FPR at {100 * score_cfg['tpr']:g}% TPR")
    comparison = paper.compare(paper.entries(inputs["paper"], benchmark), metrics, grid["methods"])
    paper_summary = paper.summary_section(comparison)
    nc_fig = plots.nc_and_separation(_nc_frame(inputs["nc"]), _separation_frame(metrics, ["id_test", *ood_sets]),
                                     grid["methods"], ["id_test", *ood_sets], f"({benchmark}, {n_seeds} seed(s))",
                                     pretrain_seed=params["benchmarks"][benchmark]["pretrain"]["seed"])
    return {
        "table_csv": summary_csv(summary),
        "table_md": summary_markdown(summary, params, benchmark, convention) + comparison_markdown(
            metrics, inputs["nc"], params, benchmark),
        "summary": {**summary_json(summary), **({"paper": paper_summary} if paper_summary else {})},
        "headline": headline_json(metrics, inputs["nc"], params, benchmark),
        "paper_md": paper.comparison_markdown(comparison, inputs["paper"], benchmark, grid["seeds"],
                                              params["benchmarks"][benchmark].get("notes"),
                                              start_description(params["benchmarks"][benchmark]["pretrain"])),
        "paper_csv": paper.comparison_csv(comparison),
        "histograms": plots.to_png(hist),
        "projection": plots.to_png(_projection_figure(params, benchmark, inputs["caches"])),
        "heatmap": plots.to_png(plots.fpr95_heatmap(wide["mean"], wide["std"], heat_title)),
        "nc": plots.to_png(nc_fig),
        "curves": plots.to_png(plots.training_curves(
            inputs["history"], [m for m in grid["methods"] if m != "none"],
            f"Fine-tuning curves, {benchmark}: mean and range over {n_seeds} seed(s)")),
    }


def run(params: dict, benchmark: str) -> None:
    """Read the grid's cells, build every table and figure in memory, then write them atomically."""
    # the benchmark's score overrides over the global values; a view, not a copy: the report reads only
    # the params keys its contract declares (tests/test_contract_audit.py)
    params = ChainMap({"score": score_params(params, benchmark)}, params)
    inputs = load_inputs(params, benchmark)
    outputs = build_outputs(params, benchmark, inputs)
    targets = contract.outs("report", benchmark=benchmark)
    for key, content in outputs.items():
        if isinstance(content, dict):
            write_json(targets[key], content)
        elif isinstance(content, str):
            write_text(targets[key], content)
        else:
            write_bytes(targets[key], content)
        log.info("wrote %s", targets[key])
    main = params["score"]["main"]
    for method, entry in outputs["summary"].items():
        if method == "paper":
            continue
        log.info("%s %s: mean FPR95 %.2f ± %.2f, AUROC %.2f ± %.2f", benchmark, method,
                 entry[main]["mean"]["fpr95"]["mean"], entry[main]["mean"]["fpr95"]["std"],
                 entry[main]["mean"]["auroc"]["mean"], entry[main]["mean"]["auroc"]["std"])

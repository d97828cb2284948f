"""Stage 6, report: tables and figures of one benchmark from the grid's score outputs and its verdict.

Reads only the cells that params.yaml's grid names (never a glob of results/: a stale cell must not slip
in), checks every input before anything is written, then writes each output atomically. Torch is never
imported and nothing the score stage computed is computed again: the histograms read scores.npz, the
projection the cache's features. The tables are fsood.tables, fsood.comparison and fsood.paper; the
figures fsood.plots; the Fig. 2 geometry fsood.nc.
"""
from __future__ import annotations

import logging
from collections import ChainMap

from tqdm import tqdm

from fsood import contract, paper, plots, tables
from fsood.comparison import feature_lines, paired_difference_lines
from fsood.config import natural_sets, paired_score, score_params, synthetic_sets
from fsood.io import load_npz, read_json, write_bytes, write_json, write_text

log = logging.getLogger(__name__)

NC_KEYS = ("nc1", "nc2_equinorm_means", "nc2_equiangular_means", "nc3", "nc4")


def _read(stage: str, key: str, loader, **wildcards):
    path = contract.out(stage, key, **wildcards)
    if not path.is_file():
        command = contract.stage(stage).command(**wildcards).split(" --log")[0]
        raise FileNotFoundError(f"report needs {path}, made by the {stage} stage ({command}); run it first")
    return loader(path)


def load_inputs(params, benchmark: str) -> dict:
    """Every file the report reads, keyed by cell (method, pretrain_seed, seed); ``none`` has seed None."""
    grid, b = params["grid"], benchmark
    models, first = grid["pretrain_seeds"], grid["pretrain_seeds"][0]
    cells = [(m, k, s) for m in grid["methods"] for k in models for s in grid["seeds"]]
    bar = dict(unit="cell", disable=None)  # a bar on a terminal only (not in a pipe or a cluster's log)
    metrics = {(tables.NONE, k, None): _read("score_pretrained", "metrics", read_json, benchmark=b, pretrain_seed=k)
               for k in models}
    metrics.update({c: _read("score", "metrics", read_json, benchmark=b, method=c[0], pretrain_seed=c[1], seed=c[2])
                    for c in tqdm(cells, desc="report: metrics", **bar)})
    seed = params["report"]["projection_seed"]
    scores = {m: _read("score", "scores", load_npz, benchmark=b, method=m, pretrain_seed=first, seed=seed)
              for m in grid["methods"]}
    scores[tables.NONE] = _read("score_pretrained", "scores", load_npz, benchmark=b, pretrain_seed=first)
    caches = {m: _read("score", "cache", load_npz, benchmark=b, method=m, pretrain_seed=first, seed=seed)
              for m in projection_methods(grid["methods"])}
    history = [_read("finetune", "history", tables.pd.read_csv, benchmark=b, method=c[0], pretrain_seed=c[1],
                     seed=c[2]).assign(method=c[0], pretrain_seed=c[1], seed=c[2]) for c in cells]
    inputs = {"metrics": metrics, "scores": scores, "caches": caches, "paper": paper.load(),
              "nc": {k: _read("subspace", "nc", read_json, benchmark=b, pretrain_seed=k) for k in models},
              "verdict": _read("verdict", "verdict", read_json, benchmark=b),
              "history": tables.pd.concat(history, ignore_index=True)}
    _check(inputs, params, benchmark)
    return inputs


def projection_methods(methods: list[str]) -> list[str]:
    """oe and sep when both are in the grid, else up to two fine-tuned methods present."""
    preferred = [m for m in ("oe", "sep") if m in methods]
    return (preferred + [m for m in methods if m not in preferred])[:2]


def _check(inputs: dict, params, benchmark: str) -> None:
    """All cells share one metric convention and hold every score and OOD set of params; the stored arrays
    hold what the figures draw (a stale cell stops the report before it writes anything)."""
    metrics, ood_sets = inputs["metrics"], natural_sets(params, benchmark) + synthetic_sets(params, benchmark)
    if len({str(sorted(m["convention"].items())) for m in metrics.values()}) > 1:
        raise ValueError(f"cells of {benchmark} mix metric conventions; rerun the score stage for all of them")
    for cell, m in metrics.items():
        for score in params["score"]["scores"]:
            missing = [s for s in [*ood_sets, "mean"] if s not in m["scores"].get(score, {})]
            if missing:
                method, k, seed = cell
                name = contract.cell_name(benchmark, k, method, *([] if seed is None else [seed]))
                raise ValueError(f"the metrics of cell {name} lack score {score!r} for {missing}: they are stale, "
                                 "rerun its score stage")
    for kind, stored, keys in (
            ("cache", inputs["caches"], [f"{n}__{k}" for n in ["id_test", *ood_sets] for k in ("logits", "features",
                                                                                            "labels")]),
            ("scores", inputs["scores"], [f"{params['score']['main']}__{n}" for n in ["id_test", *ood_sets]])):
        for method, arrays in stored.items():
            missing = [k for k in keys if k not in arrays]
            if missing:
                raise ValueError(f"the {kind} file of {benchmark} {method} lacks {missing}: it is stale, rerun its "
                                 "score stage")


def build_outputs(params, benchmark: str, inputs: dict) -> dict[str, bytes | str | dict]:
    """Every report file's content, keyed as the report stage's outputs in fsood.contract (nothing written yet)."""
    grid, score_cfg, rep = params["grid"], params["score"], params["report"]
    methods, main, metrics = grid["methods"], score_cfg["main"], inputs["metrics"]
    natural, synthetic = natural_sets(params, benchmark), synthetic_sets(params, benchmark)
    convention = next(iter(metrics.values()))["convention"]
    summary = tables.ordered(tables.summarise(tables.metrics_frame(metrics)), methods, score_cfg["scores"], main,
                             natural + synthetic)  # every set in the CSV; the Markdown's tables show the natural ones
    design = (f"{len(grid['pretrain_seeds'])} pretrained model(s) {grid['pretrain_seeds']} x {len(grid['seeds'])} "
              f"fine-tuning seed(s) {grid['seeds']}; mean ± std over a method's cells (ddof=1), `none` over models")
    pairing = {m: paired_score(score_cfg, m) for m in [tables.NONE, *methods]}
    notes = params["benchmarks"][benchmark].get("notes")
    md = [f"# Summary: benchmark `{benchmark}`", "", *tables.convention_lines(convention),
          *([f"- {notes}"] if notes else []), "", *tables.verdict_lines(inputs["verdict"]), "",
          tables.summary_markdown(summary, score_cfg, methods, natural, design).rstrip(),
          *tables.sanity_lines(metrics, methods, synthetic, score_cfg, rep["sanity_fpr95"]),
          *paired_difference_lines(metrics, methods, pairing, ood_sets=natural),
          *feature_lines(metrics, methods, natural, inputs["nc"])]
    comparison = paper.compare(paper.entries(inputs["paper"], benchmark), metrics, methods)
    paper_summary = paper.summary_section(comparison)
    sub = f"({benchmark}, {convention['positive'].upper()} positive)"
    first, seed = grid["pretrain_seeds"][0], rep["projection_seed"]
    shown = [tables.NONE, *methods]
    fpr = {(m, s): metrics[m, first, None if m == tables.NONE else seed]["scores"][main][s]["fpr95"]
           for m in shown for s in natural + synthetic}
    hist = plots.score_histograms(tables.histogram_frame(inputs["scores"], shown, natural + synthetic, main),
                                  main, shown, natural + synthetic, fpr, f"{sub}, model {first}, seed {seed}")
    heat = summary[(summary["score"] == main) & (summary["metric"] == "fpr95") & (summary["ood_set"] != "id_test")]
    wide = {k: heat.pivot(index="method", columns="ood_set", values=k).astype(float)
            .reindex(index=shown, columns=[*natural, "mean"]) for k in ("mean", "std")}
    heat_title = (f"FPR95 (%) of score '{main}', mean over cells, {benchmark}\n"
                  f"convention: {sub[len(benchmark) + 3:-1]}, FPR at {100 * score_cfg['tpr']:g}% TPR")
    nc_fig = plots.nc_and_separation(tables.nc_frame(inputs["nc"], NC_KEYS),
                                     tables.separation_frame(metrics, ["id_test", *natural], plots.SEPARATION_PANELS),
                                     shown, ["id_test", *natural], f"({benchmark}, {design.split(';')[0]})")
    curves_title = f"Fine-tuning curves, {benchmark}: mean and range over {design.split(';')[0]}"
    return {
        "table_csv": tables.summary_csv(summary),
        "table_md": "\n".join(md) + "\n",
        "summary": {**tables.summary_json(summary), **({"paper": paper_summary} if paper_summary else {})},
        "headline": tables.headline_json(metrics, inputs["nc"], score_cfg, methods, natural, inputs["verdict"]),
        "paper_md": paper.comparison_markdown(comparison, inputs["paper"], benchmark, design, notes,
                                              tables.start_description(params["benchmarks"][benchmark]["pretrain"])),
        "paper_csv": paper.comparison_csv(comparison),
        "histograms": plots.to_png(hist),
        "projection": plots.to_png(plots.projection_figure(rep, benchmark, inputs["caches"], first)),
        "heatmap": plots.to_png(plots.fpr95_heatmap(wide["mean"], wide["std"], heat_title)),
        "nc": plots.to_png(nc_fig),
        "curves": plots.to_png(plots.training_curves(inputs["history"], methods, curves_title)),
    }


def run(params: dict, benchmark: str) -> None:
    """Read the grid's cells, build every table and figure in memory, then write them atomically."""
    # the benchmark's score overrides over the global values; a view, not a copy: the report reads only
    # the params keys its contract declares (tests/test_contract_audit.py)
    params = ChainMap({"score": score_params(params, benchmark)}, params)
    outputs = build_outputs(params, benchmark, load_inputs(params, benchmark))
    targets = contract.outs("report", benchmark=benchmark)
    for key, content in outputs.items():
        writer = write_json if isinstance(content, dict) else write_text if isinstance(content, str) else write_bytes
        writer(targets[key], content)
        log.info("wrote %s", targets[key])
    for method, entry in outputs["headline"].items():
        if isinstance(entry, dict) and method != "verdict":
            (score, values), = entry.items()
            log.info("%s %s (%s): FPR95 %.2f ± %.2f, AUROC %.2f ± %.2f, ID acc %.2f", benchmark, method, score,
                     values["fpr95"], values["fpr95_std"], values["auroc"], values["auroc_std"], values["id_acc"])

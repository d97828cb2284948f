"""Stage 6a, verdict: does the paper's claim hold on this benchmark? (fsood.verdict)

Reads the metrics.json and scores.npz of the method's and the baseline's cells (``verdict`` in params.yaml),
takes the pretrained model as the unit, and writes verdict.json (the outcome, the per-model differences, the
sign-flip test, the t interval, the hierarchical bootstrap) and the forest plot. A grid without the method or
the baseline gets a verdict.json that says so, and no test.
"""
from __future__ import annotations

import logging

from fsood import contract, plots
from fsood.config import natural_sets, paired_score, score_params
from fsood.io import load_npz, read_json, write_bytes, write_json
from fsood.verdict import Design, evaluate, model_differences

log = logging.getLogger(__name__)


def design_of(params: dict, benchmark: str, endpoint: str) -> Design:
    cfg, score_cfg = params["verdict"], score_params(params, benchmark)
    scores = {who: cfg["scores"][who] or paired_score(score_cfg, cfg[who]) for who in ("method", "baseline")}
    return Design(cfg["method"], cfg["baseline"], scores["method"], scores["baseline"], endpoint,
                  tuple(natural_sets(params, benchmark)), score_cfg["convention"], score_cfg["tpr"])


def differences(design: Design, metrics: dict) -> dict:
    """(method - baseline) of the endpoint averaged over the design's sets, per cell pair (model, seed)."""
    def value(cell: dict, score: str) -> float:
        return sum(cell["scores"][score][s][design.endpoint] for s in design.sets) / len(design.sets)

    pairs = {(k, s) for who, k, s in metrics if who == design.method}
    return {(k, s): value(metrics[design.method, k, s], design.method_score)
            - value(metrics[design.baseline, k, s], design.baseline_score) for k, s in sorted(pairs)}


def run(params: dict, benchmark: str) -> None:
    cfg, grid = params["verdict"], params["grid"]
    out = contract.outs("verdict", benchmark=benchmark)
    missing = [cfg[who] for who in ("method", "baseline") if cfg[who] not in grid["methods"]]
    title = f"The claim on {benchmark}: {cfg['method']} against {cfg['baseline']}"
    if missing:
        reason = f"not computed: grid.methods {grid['methods']} lacks {missing}"
        write_json(out["verdict"], {"outcome": "not computed", "reason": reason})
        write_bytes(out["forest"], plots.to_png(plots.message_figure(reason, title)))
        log.info("verdict: %s", reason)
        return
    models, seeds = grid["pretrain_seeds"], grid["seeds"]
    cells = [(who, k, s) for who in (cfg["method"], cfg["baseline"]) for k in models for s in seeds]
    metrics = {c: read_json(contract.out("score", "metrics", benchmark=benchmark, pretrain_seed=c[1], method=c[0],
                                         seed=c[2])) for c in cells}
    design = design_of(params, benchmark, cfg["endpoint"])
    scores = {c: load_npz(contract.out("score", "scores", benchmark=benchmark, pretrain_seed=c[1], method=c[0],
                                       seed=c[2])) for c in cells} if cfg["bootstrap"]["resamples"] else None
    diffs = differences(design, metrics)
    result = evaluate(diffs, scores, design, models, seeds, cfg["alpha"], cfg["margin"],
                      cfg["bootstrap"]["resamples"], cfg["bootstrap"]["seed"])
    result["secondary"] = {}
    for endpoint in cfg["secondary"]:  # reported beside the primary endpoint; no decision rests on them
        second = design_of(params, benchmark, endpoint)
        extra = evaluate(differences(second, metrics), None, second, models, seeds, cfg["alpha"], cfg["margin"], 0, 0)
        result["secondary"][endpoint] = {k: extra[k] for k in ("mean", "per_model", "t_interval", "sign_flip",
                                                               "wins")}
    write_json(out["verdict"], result)
    per_seed = {str(k): [diffs[k, s] for s in seeds] for k in models}
    write_bytes(out["forest"], plots.to_png(plots.forest_plot(result, per_seed, title)))
    log.info("verdict %s: %s (mean %+.2f, d per model %s)", benchmark, result["outcome"], result["mean"],
             model_differences(diffs, models, seeds).round(2).tolist())

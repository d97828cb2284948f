"""Two sections of a benchmark's summary: paired per-cell differences to a baseline, and each method's features.

Paired differences: cells of the same pretrained model and seed share everything but the method (the
model, the ID batches and the outlier order of each seed), so the per-pair difference of two methods'
mean FPR95 / AUROC over the natural OOD sets removes the pair's own variation; its mean, its standard
deviation (ddof=1) and the number of pairs where the method wins describe it (the verdict, fsood.verdict,
tests it with the pretrained model as the unit).

Features: per method, NC1-NC4 of the fine-tuned model on the ID-train sample its score stage took
(``nc_id_train`` in metrics.json; fsood.nc, Papyan et al. 2020) and cos-to-span(W) of ID test and OOD test features (Sec. 4.5 of the paper:
fine-tuning should keep ID features in span(W) and push OOD ones out of it), mean over seeds.
"""
from __future__ import annotations

import numpy as np

NC_COLUMNS = ("nc1", "nc2_equiangular_means", "nc3", "nc4")


def pairs(metrics: dict, method: str) -> list[tuple[int, int]]:
    """The (pretrain_seed, seed) pairs of a method's cells, in order."""
    return sorted((k, s) for m, k, s in metrics if m == method)


def _fmt(values: list[float]) -> str:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return f"{arr.mean():+.2f} ± {std:.2f}"


def paired_difference_lines(metrics: dict, methods: list[str], pairing: dict[str, str],
                            baseline: str = "oe", ood_sets: list[str] = ()) -> list[str]:
    """Markdown lines: per method, (method - baseline) of mean FPR95 and AUROC per cell pair (pretrained model
    and seed), under the paper's pairing (each with its paired score) and with both on the method's score;
    then, under the pairing, the FPR95 difference on each of ``ood_sets`` (a mean over sets can hide a set that
    flips between cells). ``metrics`` is keyed (method, pretrain_seed, seed). Empty without the baseline."""
    if baseline not in methods:
        return []
    seeds = pairs(metrics, baseline)
    return _mean_difference_lines(metrics, methods, seeds, pairing, baseline) + _per_set_lines(
        metrics, methods, seeds, pairing, baseline, ood_sets)


def _mean_difference_lines(metrics: dict, methods: list[str], seeds: list[tuple[int, int]], pairing: dict[str, str],
                           baseline: str) -> list[str]:
    lines = ["", f"## Paired differences to `{baseline}`", "",
             f"Method minus `{baseline}`, per pair of cells (the same pretrained model and seed, named "
             "`model-seed`), mean FPR95 / AUROC over the natural OOD sets, in points; FPR95 lower and AUROC "
             "higher is better. `wins`: pairs where the method's FPR95 is lower.", "",
             "| method | scores | FPR95 diff. per pair | mean ± std | wins | AUROC diff. per pair | mean ± std |",
             "|---|---|---|---|---|---|---|"]
    for method in [m for m in methods if m not in (baseline, "none")]:
        own = pairing[method]
        for base_score, label in ((pairing[baseline], "paper's pairing"), (own, "same score")):
            if label == "same score" and base_score == pairing[baseline]:
                continue  # the pairing already compared on one score
            diffs = {k: [metrics[(method, *s)]["scores"][own]["mean"][k] - metrics[(baseline, *s)]["scores"]
                         [base_score]["mean"][k] for s in seeds] for k in ("fpr95", "auroc")}
            wins = sum(d < 0 for d in diffs["fpr95"])
            per_seed = {k: ", ".join(f"{d:+.1f}" for d in v) for k, v in diffs.items()}
            lines.append(f"| {method} | `{own}` vs `{base_score}` ({label}) | {per_seed['fpr95']} | "
                         f"{_fmt(diffs['fpr95'])} | {wins} of {len(seeds)} | {per_seed['auroc']} | "
                         f"{_fmt(diffs['auroc'])} |")
    return lines


def feature_lines(metrics: dict, methods: list[str], ood_sets: list[str], nc_models: dict) -> list[str]:
    """Markdown lines: the pretrained models' NC metrics, then per method (``none`` first) its NC metrics on
    the ID-train sample the score stage took (``nc_id_train`` of metrics.json) and cos-to-span(W) of ID test
    and natural OOD test features, mean over its cells."""
    lines = ["", "## Features: Neural Collapse and span(W)", "",
             "NC1 (within / between class variability; 0 at collapse), NC2 (equiangularity of class means), "
             "NC3 (distance of normalised W and class means), NC4 (nearest-mean vs classifier disagreement). "
             "Pretrained model: on all ID-train features; each method: on the ID-train sample of its score stage. "
             "cos to span(W): mean cosine of a feature to the subspace of the classifier's rows.", "",
             "| model | ID acc. | " + " | ".join(c.upper().replace("_", " ") for c in NC_COLUMNS)
             + " | cos to span(W), ID test | cos to span(W), OOD (mean) |", "|---|" + "---|" * (len(NC_COLUMNS) + 3)]
    for k, nc in sorted(nc_models.items()):
        acc = nc.get("train_accuracy")
        lines.append(f"| pretrained model {k} (all ID train) | " + (f"{100 * acc:.2f} (train)" if acc is not None
                                                                   else "n/a") + " | "
                     + " | ".join(f"{nc[c]:.3f}" for c in NC_COLUMNS) + " | | |")
    for method in ["none", *methods]:
        cells = [m for key, m in sorted(metrics.items(), key=lambda kv: str(kv[0])) if key[0] == method]
        nc_cols = [f"{np.mean([c['nc_id_train'][k] for c in cells]):.3f}" if all("nc_id_train" in c for c in cells)
                   else "n/a" for k in NC_COLUMNS]
        span_id = np.mean([c["separation"]["id_test"]["cos_to_span"] for c in cells])
        span_ood = np.mean([np.mean([c["separation"][o]["cos_to_span"] for o in ood_sets]) for c in cells])
        acc = np.mean([c["id_accuracy"] for c in cells])  # percent already
        lines.append(f"| {method} | {acc:.2f} | " + " | ".join(nc_cols) + f" | {span_id:.3f} | {span_ood:.3f} |")
    return lines


def _per_set_lines(metrics: dict, methods: list[str], seeds: list[tuple[int, int]], pairing: dict[str, str],
                   baseline: str, ood_sets: list[str]) -> list[str]:
    """Per OOD set, (method - baseline) FPR95 under the paper's pairing: mean ± std over pairs, pairs won."""
    if not ood_sets:
        return []
    lines = ["", f"Per natural OOD set, the paper's pairing: FPR95 of the method minus `{baseline}`, mean ± std over "
             "pairs of cells (pairs where the method's FPR95 is lower).", "",
             "| method | " + " | ".join(ood_sets) + " |", "|---|" + "---|" * len(ood_sets)]
    for method in [m for m in methods if m not in (baseline, "none")]:
        cells = []
        for ood in ood_sets:
            diffs = [metrics[(method, *s)]["scores"][pairing[method]][ood]["fpr95"]
                     - metrics[(baseline, *s)]["scores"][pairing[baseline]][ood]["fpr95"] for s in seeds]
            cells.append(f"{_fmt(diffs)} ({sum(d < 0 for d in diffs)} of {len(seeds)})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines

"""Two sections of a benchmark's summary: paired per-seed differences to a baseline, and each method's features.

Paired differences: cells of the same seed share everything but the method (the pretrained model, and
with it the ID subset and the outlier order of each seed), so the per-seed difference of two methods'
mean FPR95 / AUROC over the main OOD sets removes the seed's own variation; its mean, its standard
deviation (ddof=1) and the number of seeds where the method wins say whether the claim holds here.

Features: per method, NC1-NC4 of the fine-tuned model on the ID-train sample its score stage took
(``nc_id_train`` in metrics.json; fsood.nc, Papyan et al. 2020) and cos-to-span(W) of ID test and OOD test features (Sec. 4.5 of the paper:
fine-tuning should keep ID features in span(W) and push OOD ones out of it), mean over seeds.
"""
from __future__ import annotations

import numpy as np

NC_COLUMNS = ("nc1", "nc2_equiangular_means", "nc3", "nc4")


def _fmt(values: list[float]) -> str:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return f"{arr.mean():+.2f} ± {std:.2f}"


def paired_difference_lines(metrics: dict, methods: list[str], seeds: list[int], pairing: dict[str, str],
                            baseline: str = "oe", ood_sets: list[str] = ()) -> list[str]:
    """Markdown lines: per method, (method - baseline) of mean FPR95 and AUROC per seed, under the paper's
    pairing (each with its paired score) and with both on the method's score; then, under the pairing, the
    FPR95 difference on each of ``ood_sets`` (a mean over sets can hide a set that flips between seeds).
    Empty without the baseline."""
    if baseline not in methods:
        return []
    return _mean_difference_lines(metrics, methods, seeds, pairing, baseline) + _per_set_lines(
        metrics, methods, seeds, pairing, baseline, ood_sets)


def _mean_difference_lines(metrics: dict, methods: list[str], seeds: list[int], pairing: dict[str, str],
                           baseline: str) -> list[str]:
    lines = ["", f"## Paired per-seed differences to `{baseline}`", "",
             f"Method minus `{baseline}`, per seed (the same pretrained model and seed), mean FPR95 / AUROC over "
             "the main OOD sets, in points; FPR95 lower and AUROC higher is better. `wins`: seeds where the "
             "method's FPR95 is lower.", "",
             "| method | scores | FPR95 diff. per seed | mean ± std | wins | AUROC diff. per seed | mean ± std |",
             "|---|---|---|---|---|---|---|"]
    for method in [m for m in methods if m not in (baseline, "none")]:
        own = pairing[method]
        for base_score, label in ((pairing[baseline], "paper's pairing"), (own, "same score")):
            if label == "same score" and base_score == pairing[baseline]:
                continue  # the pairing already compared on one score
            diffs = {k: [metrics[method, s]["scores"][own]["mean"][k] - metrics[baseline, s]["scores"][base_score]
                         ["mean"][k] for s in seeds] for k in ("fpr95", "auroc")}
            wins = sum(d < 0 for d in diffs["fpr95"])
            per_seed = {k: ", ".join(f"{d:+.1f}" for d in v) for k, v in diffs.items()}
            lines.append(f"| {method} | `{own}` vs `{base_score}` ({label}) | {per_seed['fpr95']} | "
                         f"{_fmt(diffs['fpr95'])} | {wins} of {len(seeds)} | {per_seed['auroc']} | "
                         f"{_fmt(diffs['auroc'])} |")
    return lines


def feature_lines(metrics: dict, methods: list[str], seeds: list[int], ood_sets: list[str],
                  nc_pretrained: dict) -> list[str]:
    """Markdown lines: the pretrained model's NC metrics, then per method its NC metrics on the ID-train
    sample the score stage took (``nc_id_train`` of metrics.json) and cos-to-span(W) of ID test and OOD test
    features, mean over seeds."""
    lines = ["", "## Features: Neural Collapse and span(W)", "",
             "NC1 (within / between class variability; 0 at collapse), NC2 (equiangularity of class means), "
             "NC3 (distance of normalised W and class means), NC4 (nearest-mean vs classifier disagreement). "
             "Pretrained model: on all ID-train features; each method: on the ID-train sample of its score stage. "
             "cos to span(W): mean cosine of a feature to the subspace of the classifier's rows.", "",
             "| model | ID acc. | " + " | ".join(c.upper().replace("_", " ") for c in NC_COLUMNS)
             + " | cos to span(W), ID test | cos to span(W), OOD (mean) |", "|---|" + "---|" * (len(NC_COLUMNS) + 3)]
    if nc_pretrained:
        acc = nc_pretrained.get("train_accuracy")
        lines.append("| pretrained (ID train) | " + (f"{100 * acc:.2f} (train)" if acc is not None else "n/a") + " | "
                     + " | ".join(f"{nc_pretrained[c]:.3f}" for c in NC_COLUMNS) + " | | |")
    for method in methods:
        cells = [metrics[method, s] for s in seeds]
        nc_cols = [f"{np.mean([c['nc_id_train'][k] for c in cells]):.3f}" if all("nc_id_train" in c for c in cells)
                   else "n/a" for k in NC_COLUMNS]
        span_id = np.mean([c["separation"]["id_test"]["cos_to_span"] for c in cells])
        span_ood = np.mean([np.mean([c["separation"][o]["cos_to_span"] for o in ood_sets]) for c in cells])
        acc = np.mean([c["id_accuracy"] for c in cells])  # percent already
        lines.append(f"| {method} | {acc:.2f} | " + " | ".join(nc_cols) + f" | {span_id:.3f} | {span_ood:.3f} |")
    return lines


def _per_set_lines(metrics: dict, methods: list[str], seeds: list[int], pairing: dict[str, str], baseline: str,
                   ood_sets: list[str]) -> list[str]:
    """Per OOD set, (method - baseline) FPR95 under the paper's pairing: mean ± std over seeds, seeds won."""
    if not ood_sets:
        return []
    lines = ["", f"Per OOD set, the paper's pairing: FPR95 of the method minus `{baseline}`, mean ± std over seeds "
             "(seeds where the method's FPR95 is lower).", "",
             "| method | " + " | ".join(ood_sets) + " |", "|---|" + "---|" * len(ood_sets)]
    for method in [m for m in methods if m not in (baseline, "none")]:
        cells = []
        for ood in ood_sets:
            diffs = [metrics[method, s]["scores"][pairing[method]][ood]["fpr95"]
                     - metrics[baseline, s]["scores"][pairing[baseline]][ood]["fpr95"] for s in seeds]
            cells.append(f"{_fmt(diffs)} ({sum(d < 0 for d in diffs)} of {len(seeds)})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines

"""The report's tables: every cell's metrics as frames, Markdown, CSV and the JSON that DVC reads.

A cell is keyed ``(method, pretrain_seed, seed)``: a method fine-tuned from pretrained model
``pretrain_seed`` with fine-tuning seed ``seed``; the pretrained model scored as it is is ``("none", k,
None)``. Means and standard deviations are over a method's cells (ddof=1; 0 for one cell). "mean" of a
cell's metrics.json averages its natural OOD sets (the paper's headline: Tables 1-2 average the real
sets); the synthetic sanity sets get a table of their own (:func:`sanity_lines`). Plain numpy and pandas:
the report imports this without torch.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from fsood.config import paired_score

TABLE_METRICS = ("fpr95", "auroc")
NONE = "none"


def cells_of(metrics: dict, method: str) -> list:
    """The metrics of one method's cells, in key order."""
    return [m for key, m in sorted(metrics.items(), key=lambda kv: (kv[0][1], kv[0][2] or 0)) if key[0] == method]


def mean_std(values) -> tuple[float, float]:
    """Mean and std (ddof=1; 0 for one value) of a method's cells: the one rule of every table."""
    arr = np.asarray(list(values), dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


# ----------------------------------------------------------------------------- frames

def metrics_frame(metrics: dict) -> pd.DataFrame:
    """Long DataFrame (method, pretrain_seed, seed, score, ood_set, metric, value) incl. ID accuracy rows."""
    rows = []
    for (method, k, seed), m in metrics.items():
        for score, per_set in m["scores"].items():
            for ood_set, values in per_set.items():
                rows += [(method, k, seed, score, ood_set, name, float(v)) for name, v in values.items()]
            rows.append((method, k, seed, score, "id_test", "id_accuracy", float(m["id_accuracy"])))
    return pd.DataFrame(rows, columns=["method", "pretrain_seed", "seed", "score", "ood_set", "metric", "value"])


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over cells (ddof=1; 0 with a single cell) per (method, score, ood_set, metric)."""
    keys = ["method", "score", "ood_set", "metric"]
    out = frame.groupby(keys, sort=False)["value"].agg(mean="mean", std="std", n_cells="count").reset_index()
    out["std"] = out["std"].where(out["n_cells"] > 1, 0.0)
    return out


def ordered(summary: pd.DataFrame, methods: list[str], scores: list[str], main: str, sets: list[str]) -> pd.DataFrame:
    """Keep the given scores / sets / methods, ordered: main score first, ``none`` then the grid's methods."""
    scores = [main] + [s for s in scores if s != main]
    sets = [*sets, "mean", "id_test"]
    names = ["fpr95", "auroc", "aupr_in", "aupr_out", "id_accuracy"]
    df = summary[summary["score"].isin(scores) & summary["ood_set"].isin(sets)].copy()
    for col, order in (("score", scores), ("method", [NONE, *methods]), ("ood_set", sets), ("metric", names)):
        df[col] = pd.Categorical(df[col], categories=order, ordered=True)
    return df.sort_values(["score", "method", "ood_set", "metric"]).reset_index(drop=True)


def histogram_frame(scores: dict, methods: list[str], sets: list[str], main: str) -> pd.DataFrame:
    """Long DataFrame (method, set, score) of the main score for ID test and each OOD set, as each cell's
    score stage wrote it (scores.npz)."""
    parts = [pd.DataFrame({"method": method, "set": name, "score": scores[method][f"{main}__{name}"]})
             for method in methods for name in ["id_test", *sets]]
    return pd.concat(parts, ignore_index=True)


def separation_frame(metrics: dict, sets: list[str], measures) -> pd.DataFrame:
    """Long (method, pretrain_seed, seed, set, measure, value) of the separation measures each cell holds."""
    rows = [(method, k, seed, name, key, float(v)) for (method, k, seed), m in metrics.items() for name in sets
            for key, v in m["separation"][name].items() if key in measures]
    return pd.DataFrame(rows, columns=["method", "pretrain_seed", "seed", "set", "measure", "value"])


def nc_frame(nc_models: dict, keys) -> pd.DataFrame:
    """(pretrain_seed, metric, value) of every pretrained model's NC metrics."""
    return pd.DataFrame([(k, name, float(nc[name])) for k, nc in nc_models.items() for name in keys if name in nc],
                        columns=["pretrain_seed", "metric", "value"])


# ----------------------------------------------------------------------------- Markdown and CSV

def summary_csv(summary: pd.DataFrame) -> str:
    df = summary.astype({c: str for c in ("method", "score", "ood_set", "metric")})
    return df.round(4).to_csv(index=False, float_format="%.4f", lineterminator="\n")


def convention_lines(convention: dict) -> list[str]:
    return [f"- Positive class: **{convention['positive'].upper()}**; scores: higher score = more ID.",
            f"- FPR95: {convention['fpr95']}.",
            f"- AUROC: {convention.get('auroc', 'area under ROC')}. All values in percent."]


def summary_markdown(summary: pd.DataFrame, score_cfg: dict, methods: list[str], natural: list[str],
                     design: str) -> str:
    """The paper's pairing first (one row per method, its paired score), then every (method, score):
    FPR95 / AUROC per natural OOD set and their mean, then ID accuracy. ``design``: the grid in words."""
    sets = [*natural, "mean"]
    cell = {(r.method, r.score, r.ood_set, r.metric): f"{r.mean:.2f} ± {r.std:.2f}" for r in summary.itertuples()}
    header = ["method", "score"] + [f"{s} {k.upper()}" for s in sets for k in TABLE_METRICS] + ["ID acc."]

    def row(method: str, score: str, name: str) -> str:
        values = [cell.get((method, score, s, k), "n/a") for s in sets for k in TABLE_METRICS]
        acc = cell.get((method, score, "id_test", "id_accuracy"), "n/a")
        return "| " + " | ".join([method, name, *values, acc]) + " |"

    lines = ["## The paper's pairing", "",
             f"{design}. Each method with the score `score.pairing` gives it: by default each baseline with MSP, "
             "the paper's method (and its Table 5 / 9 variants) with Eq. 6 (`fs`), as the paper compares them "
             "(Appendix A.8); `none` is the pretrained model as it is. `mean` averages the natural OOD sets, as "
             "the paper's Tables 1-2 average the real ones; the same numbers are in `headline.json`.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [row(m, paired_score(score_cfg, m), paired_score(score_cfg, m)) for m in [NONE, *methods]]
    lines += ["", "## Every score", "",
              f"Main score: `{score_cfg['main']}` (listed first); methods in grid order.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (score, method), _ in summary.groupby(["score", "method"], sort=True, observed=True):
        lines.append(row(method, score, f"**{score}**" if score == score_cfg["main"] else score))
    return "\n".join(lines) + "\n"


def sanity_lines(metrics: dict, methods: list[str], synthetic: list[str], score_cfg: dict, max_fpr: float) -> list[str]:
    """The synthetic sanity sets apart from the headline: per method and set, the cells that reject the set
    (FPR95 of the paired score at most ``max_fpr`` percent), "k of n", and the FPR95 range over cells."""
    if not synthetic:
        return []
    lines = ["", "## Synthetic sanity sets", "",
             f"Not in any mean. A cell rejects a set when its FPR95 (paired score) is at most {max_fpr:g} %: "
             "`k of n` cells, then the FPR95 range over cells.", "",
             "| method | score | " + " | ".join(synthetic) + " |", "|---|---|" + "---|" * len(synthetic)]
    for method in [NONE, *methods]:
        score = paired_score(score_cfg, method)
        cells = cells_of(metrics, method)
        entries = []
        for name in synthetic:
            fpr = [c["scores"][score][name]["fpr95"] for c in cells]
            entries.append(f"rejected in {sum(v <= max_fpr for v in fpr)} of {len(fpr)} "
                           f"({min(fpr):.1f}-{max(fpr):.1f})")
        lines.append(f"| {method} | {score} | " + " | ".join(entries) + " |")
    return lines


def summary_json(summary: pd.DataFrame) -> dict:
    """Per method, ID accuracy and the natural-set mean FPR95 / AUROC of every score (by path, not a default
    DVC metric)."""
    out: dict = {}
    stat = lambda r: {"mean": round(float(r.mean), 4), "std": round(float(r.std), 4)}  # noqa: E731
    for r in summary.itertuples():
        entry = out.setdefault(str(r.method), {})
        if r.metric == "id_accuracy":
            entry["id_accuracy"] = stat(r)
        elif r.ood_set == "mean" and r.metric in TABLE_METRICS:
            entry.setdefault(str(r.score), {}).setdefault("mean", {})[r.metric] = stat(r)
    return out


def headline_json(metrics: dict, nc_models: dict, score_cfg: dict, methods: list[str], natural: list[str],
                  verdict: dict | None = None) -> dict:
    """The dozen numbers of the paper's tables, DVC's default metrics (``dvc exp show``, ``dvc metrics diff``).

    Per method, keyed ``<method>.<paired score>``: FPR95 and AUROC averaged over the natural OOD sets (mean and
    std over the method's cells), ID accuracy, and cos-to-span(W) of the ID test and the natural OOD features
    (Sec. 4.5: fine-tuning should keep ID near span(W) and push OOD off it). ``nc1_pretrained``: NC1 of the
    pretrained models' ID-train features, mean over models. ``verdict``: the verdict's difference (method -
    baseline, mean over pretrained models), its t interval and its one-sided sign-flip p-value."""
    out: dict = {"nc1_pretrained": round(float(np.mean([nc["nc1"] for nc in nc_models.values()])), 4)}
    for method in [NONE, *methods]:
        cells = cells_of(metrics, method)
        score = paired_score(score_cfg, method)
        entry = {}
        for k in TABLE_METRICS:
            entry[k], entry[f"{k}_std"] = (round(v, 4) for v in mean_std(c["scores"][score]["mean"][k] for c in cells))
        entry["id_acc"] = round(mean_std(c["id_accuracy"] for c in cells)[0], 4)
        entry["cos_span_id"] = round(mean_std(c["separation"]["id_test"]["cos_to_span"] for c in cells)[0], 4)
        entry["cos_span_ood"] = round(mean_std(np.mean([c["separation"][o]["cos_to_span"] for o in natural])
                                               for c in cells)[0], 4)
        out[method] = {score: entry}
    if verdict and verdict.get("outcome") != "not computed":
        low, high = verdict["t_interval"]
        out["verdict"] = {"difference": verdict["mean"], "t_low": low, "t_high": high,
                          "p_sign_flip": round(verdict["sign_flip"]["p_one_sided"], 4)}
    return out


# ----------------------------------------------------------------------------- text

def start_description(pretrain: dict) -> str:
    """What the benchmark's cells start from: a registry checkpoint, or the schedule trained here."""
    if pretrain["checkpoint"]:
        return f"`{pretrain['checkpoint']}`"
    schedule = "warmup-then-linear (the fast recipe)" if pretrain["fast_recipe"] else "cosine"
    return (f"a CE model trained here, stopped after epoch {pretrain['epochs']} of a "
            f"{pretrain['schedule_epochs']}-epoch {schedule} schedule")


def _interval(values) -> str:
    """``[low, high]``; an unbounded side (one pretrained model: no interval over models) as ∓inf."""
    low, high = values
    return f"[{'-inf' if low is None else f'{low:+.2f}'}, {'+inf' if high is None else f'{high:+.2f}'}]"


def verdict_lines(verdict: dict) -> list[str]:
    """The summary's first section: the verdict (fsood.verdict) with its numbers."""
    lines = ["## Verdict", ""]
    if verdict["outcome"] == "not computed":
        return lines + [f"Not computed: {verdict['reason']}."]
    d, flip = verdict["design"], verdict["sign_flip"]
    lines += [f"**{verdict['outcome']}**: {verdict['reason']}.", "",
              f"- Compared: `{d['method']}` scored with `{d['method_score']}` against `{d['baseline']}` scored with "
              f"`{d['baseline_score']}`; endpoint {d['endpoint'].upper()} averaged over the natural OOD sets "
              f"({', '.join(d['sets'])}), method - baseline in points ({d['better']} is better for the method).",
              f"- Unit: the pretrained model ({len(verdict['models'])} model(s), each the mean over "
              f"{len(verdict['seeds'])} fine-tuning seed(s)). Per model: "
              + ", ".join(f"{k}: {v:+.2f}" for k, v in verdict["per_model"].items()) + ".",
              f"- Mean {verdict['mean']:+.2f}; {1 - verdict['alpha']:.0%} t interval {_interval(verdict['t_interval'])}; "
              f"the method better on {verdict['wins']} of {len(verdict['models'])} models; exact sign-flip test "
              f"p = {flip['p_one_sided']:.3f} one-sided (smallest possible with {flip['n']} model(s): "
              f"{flip['min_p_one_sided']:.3f}), {flip['p_two_sided']:.3f} two-sided.",
              f"- Equivalence margin ±{verdict['margin']:g}: {1 - 2 * verdict['alpha']:.0%} t interval "
              f"{_interval(verdict['t_interval_equivalence'])}."]
    if "bootstrap" in verdict:
        b = verdict["bootstrap"]
        lines.append(f"- Hierarchical paired bootstrap (models, seeds, test images; {b['resamples']} resamples): "
                     f"{1 - verdict['alpha']:.0%} interval [{b['low']:+.2f}, {b['high']:+.2f}].")
    for endpoint, extra in verdict.get("secondary", {}).items():
        lines.append(f"- Secondary, {endpoint.upper()}: mean {extra['mean']:+.2f}, t interval "
                     f"{_interval(extra['t_interval'])}, sign-flip p = {extra['sign_flip']['p_one_sided']:.3f} "
                     "one-sided.")
    lines.append("- The forest plot: `verdict_forest.png`; every number: `verdict.json`.")
    return lines

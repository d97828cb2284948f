"""Figures of the report: pure functions from arrays / DataFrames to a matplotlib Figure.

Nothing here reads or writes files; ``fsood.stages.report`` gathers the data and saves
the figures. Each function's docstring names the paper figure or table it mirrors.
"""
from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import stats  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")

ID_COLOUR = "#1f77b4"
OOD_COLOUR = "#d62728"
CLASS_COLOURS = ("#1f77b4", "#2ca02c")
NC_LABELS = {
    "nc1": "NC1\nTr(Σ_W Σ_B⁺)/C",
    "nc2_equinorm_means": "NC2 equinorm\n(class means)",
    "nc2_equiangular_means": "NC2 equiangular\n(class means)",
    "nc3": "NC3\nself-duality",
    "nc4": "NC4\nNCC mismatch",
}


def to_png(fig: Figure, dpi: int = 130) -> bytes:
    """Render and close ``fig``; no 'Software' tag, so the bytes do not depend on the matplotlib version."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(fig)
    return buf.getvalue()


def message_figure(text: str, title: str = "") -> Figure:
    """A placeholder figure that says why there is nothing to draw."""
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, wrap=True)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def score_histograms(scores: pd.DataFrame, score_name: str, methods: list[str], ood_sets: list[str],
                     fpr95: dict[tuple[str, str], float] | None = None, subtitle: str = "") -> Figure:
    """Score distributions, ID test vs each OOD set (the paper's Fig. 1 / Fig. 4 style histograms).

    ``scores``: long DataFrame with columns ``method``, ``set`` ("id_test" or an OOD set), ``score``.
    One row of panels per method, one column per OOD set; the x axis is shared within a row.
    ``fpr95``: optional {(method, ood set): FPR95 in %} shown in the panel titles.
    """
    n_rows, n_cols = len(methods), len(ood_sets)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.9 * n_cols + 0.6, 2.3 * n_rows + 1.2),
                             sharex="row", squeeze=False)
    for r, method in enumerate(methods):
        rows = scores[scores["method"] == method]
        values = rows["score"].to_numpy()
        bins = np.linspace(values.min(), values.max(), 41) if values.size else 40
        id_scores = rows.loc[rows["set"] == "id_test", "score"]
        for c, ood in enumerate(ood_sets):
            ax = axes[r, c]
            for data, colour in ((id_scores, ID_COLOUR), (rows.loc[rows["set"] == ood, "score"], OOD_COLOUR)):
                sns.histplot(x=data.to_numpy(), bins=bins, stat="density", element="step", fill=True,
                             alpha=0.3, color=colour, linewidth=1.2, ax=ax)
            title = f"{method} | {ood}"
            if fpr95 and (method, ood) in fpr95:
                title += f"\nFPR95 {fpr95[method, ood]:.1f}%"
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(f"{method}\ndensity" if c == 0 else "", fontweight="bold" if c == 0 else None)
            ax.set_xlabel(f"{score_name} score" if r == n_rows - 1 else "")
            ax.tick_params(labelsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=col, alpha=0.5) for col in (ID_COLOUR, OOD_COLOUR)]
    fig.legend(handles, ["ID test", "OOD set (column)"], loc="upper right", ncol=2, frameon=False,
               bbox_to_anchor=(0.99, 0.995))
    fig.suptitle(f"Score '{score_name}' (higher = more ID): ID test vs OOD  {subtitle}".rstrip(),
                 x=0.01, ha="left", fontsize=12)
    # Fixed margins in inches (tight_layout takes seconds on a 4 x 5 grid): 0.75 in between rows.
    height, gap = fig.get_figheight(), 0.75
    axes_height = (height - 1.6 - gap * (n_rows - 1)) / n_rows
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.55 / height, top=1 - 1.05 / height,
                        wspace=0.22, hspace=gap / axes_height)
    return fig


def _scatter_sets(ax, points: dict[str, np.ndarray], colours: dict[str, str], **kwargs) -> None:
    for label, xyz in points.items():
        is_ood = label.startswith("OOD")
        ax.scatter(*xyz.T, s=9 if is_ood else 7, alpha=0.45 if is_ood else 0.6, c=colours[label],
                   marker="x" if is_ood else "o", linewidths=0.8 if is_ood else 0, label=label, **kwargs)


def feature_projection(panels: dict[str, dict], caption: str, title: str) -> Figure:
    """The paper's Fig. 2: features projected onto (w1, w2) and onto (w1, w2, u).

    ``panels``: {method: {"2d": {label: (n, 2)}, "3d": {label: (n, 3)}, "axes": (x, y, z labels)}}.
    Labels starting with "OOD" are drawn as red crosses, the two ID classes as blue / green dots.
    Columns are methods, row 1 the 2-D projection, row 2 the 3-D one.
    """
    methods = list(panels)
    n = len(methods)
    fig = plt.figure(figsize=(5.6 * n + 0.4, 10.6))
    for col, method in enumerate(methods):
        spec = panels[method]
        labels = list(spec["2d"])
        colours = {lab: (OOD_COLOUR if lab.startswith("OOD") else CLASS_COLOURS[i % 2]) for i, lab in enumerate(labels)}
        xl, yl, zl = spec["axes"]
        ax = fig.add_subplot(2, n, col + 1)
        _scatter_sets(ax, spec["2d"], colours)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.axvline(0, color="0.5", lw=0.6)
        ax.set(xlabel=xl, ylabel=yl, title=f"{method}: 2-D projection onto span(w1, w2)")
        ax3 = fig.add_subplot(2, n, n + col + 1, projection="3d")
        _scatter_sets(ax3, spec["3d"], colours, depthshade=False)
        ax3.set_xlabel(xl, fontsize=9, labelpad=6)
        ax3.set_ylabel(yl, fontsize=9, labelpad=6)
        ax3.set_zlabel(zl, fontsize=9, labelpad=6)
        ax3.tick_params(labelsize=7, pad=1)
        ax3.view_init(elev=22, azim=-55)
        ax3.set_box_aspect(None, zoom=1.05)
        ax3.set_title(f"{method}: 3-D, third axis u ⊥ span(W)", pad=2)
    handles = [Line2D([], [], ls="", marker="x" if lab.startswith("OOD") else "o", color=col, markersize=7,
                      label=lab) for lab, col in colours.items()]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 0.955))
    fig.suptitle(title, fontsize=13, y=0.99)
    fig.text(0.02, 0.01, textwrap.fill(caption, width=int(14 * fig.get_figwidth())), fontsize=8.5, ha="left",
             va="bottom")
    fig.subplots_adjust(left=0.07, right=0.95, top=0.9, bottom=0.1, hspace=0.22, wspace=0.28)
    return fig


def fpr95_heatmap(mean: pd.DataFrame, std: pd.DataFrame | None, title: str) -> Figure:
    """Methods x OOD sets (and their mean) of FPR95: the paper's Table 1 / Table 2 as a heatmap.

    ``mean`` / ``std``: DataFrames indexed by method, one column per OOD set plus "mean", in %.
    Lower is better: the colour map is reversed so good cells are light.
    """
    annot = mean.map(lambda v: f"{v:.1f}")
    if std is not None and (std.to_numpy() > 0).any():
        annot = annot + std.map(lambda v: f"\n±{v:.1f}")
    fig, ax = plt.subplots(figsize=(1.25 * mean.shape[1] + 2.8, 0.75 * mean.shape[0] + 2.0))
    sns.heatmap(mean, annot=annot.to_numpy(), fmt="", cmap="rocket_r", vmin=0,
                vmax=max(float(np.nanmax(mean.to_numpy())), 1.0), linewidths=0.5, linecolor="white",
                cbar_kws={"label": "FPR95 (%), lower is better"}, annot_kws={"fontsize": 9}, ax=ax)
    if "mean" in mean.columns:
        ax.axvline(list(mean.columns).index("mean"), color="white", lw=4)
    ax.set(xlabel="OOD set", ylabel="method")
    ax.set_title(title, fontsize=11)
    ax.tick_params(axis="x", rotation=30)
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


def _label_above(ax, container, stats: pd.DataFrame, fmt: str) -> None:
    """Write each bar's mean just above its error bar (``stats``: mean and std, one row per bar)."""
    for patch, (mean, std) in zip(container.patches, stats[["mean", "std"]].fillna(0.0).to_numpy()):
        ax.annotate(fmt.format(mean), (patch.get_x() + patch.get_width() / 2, mean + std), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)


SEPARATION_PANELS = {  # measure in metrics.json's `separation` -> (panel title, y label)
    "cos_pred_weight": ("paper's Table 7: cosine to the predicted class's weight", "mean cos(z, w_yhat)"),
    "cos_pred_mean": ("paper's Table 14: cosine to the predicted class's ID-train mean", "mean cos(z, mu_yhat)"),
    "cos_to_span": ("cosine to span(W) (1 - Table 7's reconstruction error, per sample squared)",
                    "mean ||Pz|| / ||z||"),
}


def _separation_panel(ax, data: pd.DataFrame, measure: str, methods: list[str], sets: list[str]) -> None:
    """Bars of one separation measure: ID test (shaded) and each OOD set, one bar per method."""
    sns.barplot(data=data, x="set", y="value", hue="method", order=sets, hue_order=methods, errorbar="sd",
                capsize=0.1, err_kws={"linewidth": 1}, palette="deep", ax=ax)
    stats = data.groupby(["method", "set"])["value"].agg(["mean", "std"])
    for method, container in zip(methods, ax.containers):
        _label_above(ax, container, stats.loc[method].reindex(sets), "{:.2f}")
    title, ylabel = SEPARATION_PANELS[measure]
    top = float((stats["mean"] + stats["std"].fillna(0)).max())  # room for the error bars and their labels
    ax.set_ylim(min(0.0, float(data["value"].min()) - 0.05), max(1.12, top + 0.12))
    ax.set(xlabel="", ylabel=ylabel)
    ax.axvspan(-0.5, 0.5, color="0.92", zorder=0)
    ax.set_title(f"{title}\nseparation wants OOD below ID test (shaded)", fontsize=10)
    ax.tick_params(axis="x", rotation=20)
    if ax.get_legend() is not None:  # one legend for all panels, above them (nc_and_separation): none over bars
        ax.get_legend().remove()


def nc_and_separation(nc: pd.DataFrame, separation: pd.DataFrame, methods: list[str], sets: list[str],
                      subtitle: str = "") -> Figure:
    """NC1-NC4 of the pretrained models on ID train (Papyan et al.; the paper's Sec. 3 premise), then
    one panel per feature-separation measure present (SEPARATION_PANELS): the paper's Table 7
    (predicted-class weight), Table 14 (predicted-class mean) and the cosine to span(W).

    ``nc``: DataFrame (metric, value), one row a pretrained model and metric (bars: the mean over models);
    ``separation``: long DataFrame (method, ..., set, measure, value). Error bars: std over cells.
    """
    measures = [m for m in SEPARATION_PANELS if m in set(separation["measure"])]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10), squeeze=False)
    left = axes[0, 0]
    metrics = [m for m in NC_LABELS if m in set(nc["metric"])]
    sns.barplot(data=nc, x="metric", y="value", order=metrics, errorbar=None, color="#4c72b0", ax=left)
    nc_stats = nc.groupby("metric")["value"].agg(["mean", "std"]).reindex(metrics)
    _label_above(left, left.containers[0], nc_stats, "{:.3f}")
    left.set_xticks(range(len(metrics)), [NC_LABELS[m] for m in metrics], fontsize=8)
    left.set(xlabel="", ylabel="value (0 = perfect collapse)")
    n_models = int(nc.groupby("metric").size().max()) if len(nc) else 0
    left.set_title(f"Neural Collapse of the pretrained model{'s (mean of ' + str(n_models) + ')' if n_models > 1 else ''}"
                   ", ID train\nthe start of every fine-tuning cell", fontsize=11)
    panels = list(axes.flat[1:])
    for ax, measure in zip(panels, measures):
        _separation_panel(ax, separation[separation["measure"] == measure], measure, methods, sets)
    for ax in panels[len(measures):]:
        ax.axis("off")
    fig.suptitle(f"Neural Collapse and feature separation  {subtitle}".rstrip(), fontsize=13)
    if measures:
        colours = sns.color_palette("deep", len(methods))
        handles = [Patch(color=c, label=m) for m, c in zip(methods, colours)]
        fig.legend(handles=handles, title="method", loc="upper center", ncol=len(methods), frameon=False,
                   bbox_to_anchor=(0.5, 0.955))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


CURVE_TERMS = {
    "sep": "L_sep  (Σ_i |cos(z_out, w_i)|)",
    "clu": "L_clu  (−cos(z_in, w_y))",
    "oe": "L_OE",
    "ood_abs_cos": "mean |cos(z_out, w_i)|",
    "id_train_acc": "ID train accuracy",
    "total": "total loss",
}


def training_curves(history: pd.DataFrame, methods: list[str], title: str) -> Figure:
    """Per-epoch fine-tuning curves (mean and range over seeds), one panel per term; a dashed line where the
    history's ``stage`` column first reads 2 (stage II, the cosine terms added).

    The cosine terms are monitored for every method (their gradient flows only for `sep`, `oe_clu`,
    `oe_sep` and `sep_energy`, and only in stage II),
    so the panels show whether separation moves outliers out of span(W) once stage II starts.
    """
    terms = [t for t in CURVE_TERMS if t in history.columns]
    if history.empty or not terms:
        return message_figure("no fine-tuning history in the grid", title)
    ncols = 3
    nrows = -(-len(terms) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    stage2 = history.loc[history["stage"] >= 2, "epoch"] if "stage" in history.columns else pd.Series(dtype=float)
    for ax, term in zip(axes.flat, terms):
        sns.lineplot(data=history, x="epoch", y=term, hue="method", hue_order=methods, palette=palette,
                     errorbar=("pi", 100), ax=ax, legend=False)
        if len(stage2):
            ax.axvline(stage2.min() - 0.5, color="0.4", ls="--", lw=1)
        ax.set_title(CURVE_TERMS[term], fontsize=11)
        ax.set_ylabel("")
    for ax in axes.flat[len(terms):]:
        ax.axis("off")
    handles = [Line2D([], [], color=palette[m], lw=2, label=m) for m in methods]
    if len(stage2):
        handles.append(Line2D([], [], color="0.4", ls="--", lw=1, label="stage II starts"))
    fig.suptitle(title, y=0.99, fontsize=13)
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 0.94))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.8, hspace=0.45, wspace=0.25)
    return fig


OUTCOME_COLOURS = {"supported": "#2ca02c", "not supported": "#d62728", "inconclusive": "#7f7f7f"}


def forest_plot(verdict: dict, per_seed: dict[str, list[float]], title: str) -> Figure:
    """The verdict as a forest plot: per pretrained model its difference (method - baseline, mean over its
    fine-tuning seeds, each seed a small dot) with its t interval over seeds, then the pooled mean with its t
    interval over models and the hierarchical bootstrap's interval; 0 and the equivalence band (±margin).

    ``verdict``: fsood.verdict.evaluate's result; ``per_seed``: {model: its cells' differences}."""
    design, alpha = verdict["design"], verdict["alpha"]
    models = [str(m) for m in verdict["models"]]
    rows = [f"model {m}" for m in models] + ["pooled (t)"] + (["pooled (bootstrap)"] if "bootstrap" in verdict else [])
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(rows) + 2.4))
    margin = verdict["margin"]
    ax.axvspan(-margin, margin, color="0.9", zorder=0, label=f"equivalence ±{margin:g}")
    ax.axvline(0, color="0.3", lw=1)
    for i, m in enumerate(models):
        values = np.asarray(per_seed[m], dtype=np.float64)
        centre = float(values.mean())
        if len(values) > 1:
            half = stats.t.ppf(1 - alpha / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
            ax.plot([centre - half, centre + half], [i, i], color="#1f77b4", lw=2)
        ax.scatter(values, [i] * len(values), s=14, color="#1f77b4", alpha=0.45, zorder=3)
        ax.scatter([centre], [i], s=60, marker="s", color="#1f77b4", zorder=4)
    colour = OUTCOME_COLOURS[verdict["outcome"]]
    pooled = [(len(models), verdict["t_interval"])]
    if "bootstrap" in verdict:
        pooled.append((len(models) + 1, [verdict["bootstrap"]["low"], verdict["bootstrap"]["high"]]))
    for y, (low, high) in pooled:
        if low is None or high is None:  # one pretrained model: no interval over models
            ax.annotate("no interval: one pretrained model", (verdict["mean"], y), xytext=(0, 10),
                        textcoords="offset points", ha="center", fontsize=8, color=colour)
        else:
            ax.plot([low, high], [y, y], color=colour, lw=3)
        ax.scatter([verdict["mean"]], [y], s=110, marker="D", color=colour, zorder=4)
    finite = [v for _, iv in pooled for v in iv if v is not None] + [v for vs in per_seed.values() for v in vs]
    span = max([abs(v) for v in finite] + [margin]) * 1.25
    ax.set_xlim(-span, span)
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    better = "lower" if design["better"] == "lower" else "higher"
    ax.set_xlabel(textwrap.fill(
        f"{design['method']} ({design['method_score']}) - {design['baseline']} ({design['baseline_score']}), "
        f"{design['endpoint'].upper()} averaged over {', '.join(design['sets'])} (points; {better} is better for "
        "the method)", width=95), fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    flip = verdict["sign_flip"]
    ax.set_title(f"{title}\nverdict: {verdict['outcome']} (sign-flip p = {flip['p_one_sided']:.3f}, "
                 f"{1 - alpha:.0%} intervals)", fontsize=11, color=colour)
    fig.tight_layout()
    return fig


def projection_figure(report: dict, benchmark: str, caches: dict, pretrain_seed: int) -> Figure:
    """The paper's Fig. 2 for the report: the projection panels (fsood.nc) of up to two fine-tuned methods
    (``caches``: their score caches, of pretrained model ``pretrain_seed`` and ``report.projection_seed``)."""
    from fsood.nc import projection_panel

    classes, ood = report["projection_classes"], report["projection_ood"][benchmark]
    title = (f"Fig. 2 analog, {benchmark}, model {pretrain_seed}, seed {report['projection_seed']}: ID classes vs "
             f"OOD '{ood}'")
    if not caches:
        return message_figure("no fine-tuned methods in the grid", title)
    panels = {m: projection_panel(cache, classes, ood, report["max_points"]) for m, cache in caches.items()}
    caption = (f"Raw penultimate features z projected onto w1 = W[{classes[0]}]/||.|| and w2 = W[{classes[1]}] "
               "Gram-Schmidt-orthogonalised to w1 (rows of each model's own classifier W). 3-D: third axis u = top "
               "principal direction (numpy SVD) of the centred residual of the OOD features after removing their "
               f"component in span(W); u is orthogonal to span(W). Up to {report['max_points']} points per set "
               "(fixed subsample).")
    return feature_projection(panels, caption, title)

"""Figures read: no legend over the bars of nc_metrics.png (fsood.plots.nc_and_separation)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from fsood import plots


def _frames(top: float):
    rng = np.random.default_rng(0)
    nc = pd.DataFrame([(s, m, rng.uniform(0.1, 0.9)) for s in range(3) for m in plots.NC_LABELS],
                      columns=["seed", "metric", "value"])
    methods, sets = ["none", "oe", "sep"], ["id_test", "gaussian", "blobs"]
    sep = pd.DataFrame([(m, s, st, meas, rng.uniform(top - 0.3, top)) for m in methods for s in range(3)
                        for st in sets for meas in plots.SEPARATION_PANELS],
                       columns=["method", "seed", "set", "measure", "value"])
    return nc, sep, methods, sets


def test_nc_figure_legend_sits_outside_every_panel_and_bars_fit():
    nc, sep, methods, sets = _frames(top=0.99)
    fig = plots.nc_and_separation(nc, sep, methods, sets, "digits")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend inside a panel
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == methods
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        if ax.axison:
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    for ax in fig.axes[1:]:  # every bar and its error bar below the panel's top
        tops = [np.nanmax(line.get_ydata()) for line in ax.lines if np.isfinite(line.get_ydata()).any()]
        assert tops and max(tops) < ax.get_ylim()[1], ax.get_title()


def _dashed_x(fig) -> set[float]:
    return {float(line.get_xdata()[0]) for ax in fig.axes for line in ax.lines if line.get_linestyle() == "--"}


def test_training_curves_mark_stage_two_where_the_history_says_it_starts():
    """The dashed line comes from history.csv's `stage` column, not from params: a run with another
    stage2_epoch draws it where that run switched."""
    epochs = np.arange(6)
    history = pd.DataFrame({"epoch": epochs, "total": 1.0 / (1 + epochs), "sep": 0.5 / (1 + epochs),
                            "stage": np.where(epochs >= 4, 2.0, 1.0), "method": "sep", "seed": 0})
    fig = plots.training_curves(history, ["sep"], "t")
    assert _dashed_x(fig) == {3.5}
    assert "stage II starts" in [t.get_text() for t in fig.legends[0].get_texts()]
    only_stage1 = plots.training_curves(history.assign(stage=1.0), ["sep"], "t")
    assert _dashed_x(only_stage1) == set()

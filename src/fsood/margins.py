"""Energy-OE's margins (Liu et al. 2020): the paper's fixed values, or set by rule from the pretrained model.

Energy-OE adds ``relu(E_in - m_in)^2 + relu(m_out - E_out)^2`` with ``E = -logsumexp(logits)``. The paper
(and energy_ood, https://github.com/wetliu/energy_ood) fixes m_in -25 and m_out -7 for a WRN-40-2 trained
with plain cross-entropy; energy_ood's own CIFAR-10 script uses -23 / -5: the margins belong to a model's
energy scale. A model with another logit scale (a compact net pretrained with label smoothing 0.2 has ID
energies near -4) never meets -25, and the hinge then dominates the loss and wrecks the classifier.

``margins: pretrained`` sets them from the pretrained model's own energies, which the subspace stage
summarises in ``energies.json`` (:func:`energy_summary`): m_in is the ``m_in_quantile`` of its ID-train
energies, m_out the ``m_out_quantile`` of its energies on an outlier sample. The hinges then start active on
a known share of the images (ID above m_in, outliers below m_out) whatever the logit scale, and fine-tuning
widens the gap the pretrained model already has. ``margins: fixed`` keeps ``m_in`` / ``m_out`` as given.
"""
from __future__ import annotations

import numpy as np

ENERGY_SAMPLES = 10_000  # outliers whose energies the subspace stage summarises (a fixed subset; all if fewer)
GRID = np.round(np.linspace(0.0, 1.0, 101), 2)  # the quantiles energies.json holds


def energy(logits: np.ndarray) -> np.ndarray:
    """E(x) = -logsumexp_i f_i(x) (temperature 1, as Energy-OE's loss)."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))


def energy_summary(logits: np.ndarray) -> dict:
    """Count, mean and the quantiles 0.00, 0.01, ..., 1.00 of a set's energies (energies.json)."""
    e = energy(logits)
    return {"count": int(len(e)), "mean": round(float(e.mean()), 6),
            "quantiles": [round(float(v), 6) for v in np.quantile(e, GRID)]}


def margins(cfg: dict, energies: dict | None) -> tuple[float, float]:
    """(m_in, m_out) for a method's params section: fixed, or from the pretrained model's ``energies``."""
    if cfg["margins"] == "fixed":
        return float(cfg["m_in"]), float(cfg["m_out"])
    if energies is None:
        raise ValueError("margins: pretrained needs the subspace stage's energies.json; run the subspace stage")
    m_in = float(np.interp(cfg["m_in_quantile"], GRID, energies["id_train"]["quantiles"]))
    m_out = float(np.interp(cfg["m_out_quantile"], GRID, energies["outliers"]["quantiles"]))
    if not m_in < m_out:
        raise ValueError(f"margins from the pretrained model's energies: m_in {m_in:.3f} (ID-train quantile "
                         f"{cfg['m_in_quantile']}) is not below m_out {m_out:.3f} (outlier quantile "
                         f"{cfg['m_out_quantile']}); choose quantiles that leave a gap, or margins: fixed")
    return m_in, m_out

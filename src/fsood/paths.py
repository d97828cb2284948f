"""Where every stage reads and writes. Snakemake rules, the CLI and dvc.yaml share these.

Templates take ``benchmark``, ``method`` and ``seed``; one folder per benchmark cell.
Logs live outside DVC-tracked folders (a stray file would change an output's hash).
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = "data/{benchmark}"
PRETRAIN_DIR = "results/{benchmark}/pretrain/seed{seed}"
SUBSPACE_DIR = "results/{benchmark}/subspace/seed{seed}"
CELL_DIR = "results/{benchmark}/{method}/seed{seed}"
REPORT_DIR = "reports/{benchmark}"
LOG = "logs/{stage}/{name}.log"

# Files inside each folder, by stage.
PRETRAIN_FILES = {"model": "model.pt", "history": "history.csv"}
SUBSPACE_FILES = {"features": "features.npz", "basis": "basis.npz", "nc": "nc.json"}
FINETUNE_FILES = {"model": "model.pt", "history": "history.csv"}
# provenance.json (fsood.provenance): versions, device, seeds, params and the sha256 of the cell's
# inputs and outputs, for `fsood rebuild`.
SCORE_FILES = {"cache": "cache.npz", "metrics": "metrics.json", "provenance": "provenance.json"}
REPORT_FILES = {
    "table_md": "summary.md",
    "table_csv": "summary.csv",
    "summary": "summary.json",
    "paper_md": "paper_comparison.md",
    "paper_csv": "paper_comparison.csv",
    "histograms": "score_histograms.png",
    "projection": "projection.png",
    "heatmap": "fpr95_heatmap.png",
    "nc": "nc_metrics.png",
    "curves": "training_curves.png",
}


def files(folder_template: str, names: dict[str, str], **wildcards) -> dict[str, Path]:
    folder = Path(folder_template.format(**wildcards))
    return {key: folder / name for key, name in names.items()}


def templates(folder_template: str, names: dict[str, str]) -> dict[str, str]:
    """Snakemake-style output templates, e.g. ``results/{benchmark}/{method}/seed{seed}/model.pt``."""
    return {key: f"{folder_template}/{name}" for key, name in names.items()}

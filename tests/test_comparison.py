"""The summary's paired per-pair differences and feature table (fsood.comparison), on hand-made cells keyed
(method, pretrained model, seed)."""
from __future__ import annotations


from fsood.comparison import feature_lines, paired_difference_lines


def _cell(fpr: dict[str, float], auroc: dict[str, float], cos_id=0.5, cos_ood=(0.2, 0.4), acc=0.9) -> dict:
    return {"scores": {s: {"mean": {"fpr95": fpr[s], "auroc": auroc[s]}} for s in fpr}, "id_accuracy": acc,
            "separation": {"id_test": {"cos_to_span": cos_id}, "a": {"cos_to_span": cos_ood[0]},
                           "b": {"cos_to_span": cos_ood[1]}}}


def test_paired_differences_by_hand():
    metrics = {("oe", 0, 0): _cell({"msp": 50.0, "fs": 45.0}, {"msp": 80.0, "fs": 82.0}),
               ("oe", 1, 0): _cell({"msp": 40.0, "fs": 42.0}, {"msp": 85.0, "fs": 84.0}),
               ("sep", 0, 0): _cell({"msp": 0.0, "fs": 30.0}, {"msp": 0.0, "fs": 90.0}),
               ("sep", 1, 0): _cell({"msp": 0.0, "fs": 44.0}, {"msp": 0.0, "fs": 83.0}),
               ("none", 0, None): _cell({"msp": 60.0, "fs": 60.0}, {"msp": 70.0, "fs": 70.0})}
    lines = paired_difference_lines(metrics, ["oe", "sep"], {"none": "msp", "oe": "msp", "sep": "fs"})
    rows = [line for line in lines if line.startswith("| sep")]
    # paper's pairing: sep/fs minus oe/msp: FPR95 30-50 = -20, 44-40 = +4 -> mean -8, std sqrt(288) = 16.97
    assert rows[0] == ("| sep | `fs` vs `msp` (paper's pairing) | -20.0, +4.0 | -8.00 ± 16.97 | 1 of 2 | "
                       "+10.0, -2.0 | +4.00 ± 8.49 |")
    # the same score on both: 30-45 = -15, 44-42 = +2
    assert rows[1].startswith("| sep | `fs` vs `fs` (same score) | -15.0, +2.0 | -6.50 ± 12.02 | 1 of 2 |")
    assert not any(line.startswith("| none") for line in lines)
    assert len(rows) == 2  # without ood_sets: no per-set table


def test_per_set_paired_differences_by_hand():
    def cell(a: float, b: float) -> dict:
        return {"scores": {"msp": {"a": {"fpr95": a}, "b": {"fpr95": b},
                                   "mean": {"fpr95": (a + b) / 2, "auroc": 90.0}}}}

    metrics = {("oe", 0, 0): cell(50.0, 10.0), ("oe", 0, 1): cell(40.0, 0.0),
               ("sep", 0, 0): cell(45.0, 100.0), ("sep", 0, 1): cell(30.0, 2.0)}
    lines = paired_difference_lines(metrics, ["oe", "sep"], {"oe": "msp", "sep": "msp"}, ood_sets=["a", "b"])
    # set a: -5, -10 -> mean -7.5, std 3.54, won twice; set b: +90, +2 -> +46.0 ± 62.23, never won
    assert lines[-1] == "| sep | -7.50 ± 3.54 (2 of 2) | +46.00 ± 62.23 (0 of 2) |"
    assert paired_difference_lines(metrics, ["sep"], {"sep": "fs"}) == []  # no baseline: no section


def test_feature_table_by_hand():
    nc_cell = {"nc1": 0.0, "nc2_equiangular_means": 0.05, "nc3": 0.1, "nc4": 0.0}
    metrics = {("oe", 0, 0): {**_cell({"msp": 1.0}, {"msp": 1.0}, cos_id=0.9, cos_ood=(0.1, 0.3), acc=95.0),
                              "nc_id_train": nc_cell},
               ("oe", 1, 0): {**_cell({"msp": 1.0}, {"msp": 1.0}, cos_id=0.7, cos_ood=(0.3, 0.5), acc=93.0),
                              "nc_id_train": {**nc_cell, "nc1": 0.2}},
               ("none", 0, None): {**_cell({"msp": 1.0}, {"msp": 1.0}, cos_id=0.6, cos_ood=(0.5, 0.5), acc=91.0),
                                   "nc_id_train": nc_cell}}
    nc_models = {0: {"nc1": 0.25, "nc2_equiangular_means": 0.1, "nc3": 0.2, "nc4": 0.01, "train_accuracy": 0.99},
                 1: {"nc1": 0.35, "nc2_equiangular_means": 0.1, "nc3": 0.2, "nc4": 0.01, "train_accuracy": 0.98}}
    lines = feature_lines(metrics, ["oe"], ["a", "b"], nc_models)
    assert lines[-4] == "| pretrained model 0 (all ID train) | 99.00 (train) | 0.250 | 0.100 | 0.200 | 0.010 | | |"
    assert lines[-3].startswith("| pretrained model 1 (all ID train) | 98.00 (train) | 0.350 |")
    assert lines[-2] == "| none | 91.00 | 0.000 | 0.050 | 0.100 | 0.000 | 0.600 | 0.500 |"
    # mean over the two cells (two pretrained models): acc 94, NC1 0.1, cos ID 0.8, cos OOD mean of (0.2, 0.4) = 0.3
    assert lines[-1] == "| oe | 94.00 | 0.100 | 0.050 | 0.100 | 0.000 | 0.800 | 0.300 |"

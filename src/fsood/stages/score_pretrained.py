"""Stage 5 for method ``none``: the pretrained model scored as it is, once a pretrained model.

Every fine-tuning seed of a pretrained model would score the same model: this cell has none
(``results/<b>/model<k>/none/``). The ID-train sample fitted scores learn from comes from the subspace
stage's features of the same model (one forward pass over ID train a pretrained model); ID test and
the OOD sets get their pass here, as for a fine-tuned cell (fsood.stages.score).
"""
from __future__ import annotations

from fsood import contract, provenance
from fsood import runtime as rt
from fsood.io import load_npz
from fsood.stages.common import benchmark_data, load_pretrained
from fsood.stages.score import build_cache, write_outputs


def run(params: dict, benchmark: str, pretrain_seed: int) -> None:
    cell = provenance.cell_of(benchmark, pretrain_seed, contract.NONE)
    device = rt.configure(params["runtime"], pretrain_seed)
    data = benchmark_data(benchmark)
    model = load_pretrained(params, benchmark, pretrain_seed, data, device)
    features = load_npz(contract.out("subspace", "features", benchmark=benchmark, pretrain_seed=pretrain_seed))

    def fit_pass(keep):  # the subspace stage's pass over every ID-train image, at the sample's rows
        return features["logits"][keep], features["features"][keep]

    write_outputs(params, cell, build_cache(params, benchmark, model, device, data, fit_pass), data.manifest)

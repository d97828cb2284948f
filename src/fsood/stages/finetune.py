"""Stage 4, finetune: OE, Energy-OE or the paper's separation fine-tuning ("none" keeps the model)."""
from __future__ import annotations

import torch

from fsood import paths
from fsood import runtime as rt
from fsood.io import load_npz, save_state_dict, write_bytes
from fsood.methods import make_objective
from fsood.stages.common import benchmark_data, load_model, write_history
from fsood.train import train


def run(params: dict, benchmark: str, method: str, seed: int) -> None:
    bench = params["benchmarks"][benchmark]
    pre = paths.files(paths.PRETRAIN_DIR, paths.PRETRAIN_FILES, benchmark=benchmark, seed=seed)
    out = paths.files(paths.CELL_DIR, paths.FINETUNE_FILES, benchmark=benchmark, method=method, seed=seed)
    if method == "none":  # the pretrained model as is, with its own training curve
        write_bytes(out["history"], pre["history"].read_bytes())
        write_bytes(out["model"], pre["model"].read_bytes())
        return
    device = rt.configure(params["runtime"], seed)
    data = benchmark_data(benchmark)
    model = rt.prepare_model(load_model(params, benchmark, data, pre["model"]), params["runtime"], device)
    mcfg = params["methods"][method]
    if method == "sep" and mcfg["weight_source"] == "pretrained":
        basis = paths.files(paths.SUBSPACE_DIR, paths.SUBSPACE_FILES, benchmark=benchmark, seed=seed)["basis"]
        frozen = torch.from_numpy(load_npz(basis)["weight"]).float().to(device)
        weight_fn = lambda: frozen  # noqa: E731
    else:
        weight_fn = lambda: model.fc.weight  # noqa: E731
    objective = make_objective(method, mcfg, bench["finetune"]["stage2_epoch"], weight_fn)
    x, y = data.load("id_train")
    outliers, _ = data.load("outliers")
    history = train(model, x, y, bench["finetune"], params["runtime"], device, bench["data"]["normalize"],
                    objective, seed, outlier_x=outliers, desc=f"finetune {benchmark} {method} seed {seed}")
    write_history(out["history"], history)
    save_state_dict(out["model"], {k: v.cpu() for k, v in model.state_dict().items()})


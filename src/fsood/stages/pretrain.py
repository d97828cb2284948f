"""Stage 2, pretrain: train the ID classifier with cross-entropy."""
from __future__ import annotations

from fsood import paths
from fsood import runtime as rt
from fsood.io import save_state_dict
from fsood.methods import pretrain_objective
from fsood.stages.common import benchmark_data, model_for, write_history
from fsood.train import train


def run(params: dict, benchmark: str, seed: int) -> None:
    bench = params["benchmarks"][benchmark]
    device = rt.configure(params["runtime"], seed)
    data = benchmark_data(benchmark)
    x, y = data.load("id_train")
    model = rt.prepare_model(model_for(params, benchmark, data), params["runtime"], device)
    history = train(model, x, y, bench["pretrain"], params["runtime"], device, bench["data"]["normalize"],
                    pretrain_objective(), seed, desc=f"pretrain {benchmark} seed {seed}")
    out = paths.files(paths.PRETRAIN_DIR, paths.PRETRAIN_FILES, benchmark=benchmark, seed=seed)
    write_history(out["history"], history)
    save_state_dict(out["model"], {k: v.cpu() for k, v in model.state_dict().items()})

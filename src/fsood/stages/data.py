"""Stage 1, data: materialise every set of a benchmark as uint8 arrays (DVC-tracked)."""
from __future__ import annotations

import logging

from fsood import contract
from fsood.datasets import materialize

log = logging.getLogger(__name__)


def run(params: dict, benchmark: str) -> None:
    out = contract.out("data", "data", benchmark=benchmark)
    manifest = materialize(benchmark, params["benchmarks"][benchmark]["data"], out, params["datasets"])
    for name, info in manifest["sets"].items():
        log.info("%s: %d samples of shape %s", name, info["count"], info["shape"])

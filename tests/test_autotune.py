"""runtime 'auto' (fsood.autotune): the choice rule by hand, the kept choice, an untouched global RNG, and what
a run records."""
from __future__ import annotations

import json

import torch
from torch import nn

from fsood import autotune
from fsood import runtime as rt


def test_bf16_only_where_it_beats_fp32_by_the_margin():
    rates = {"fp32/nchw": 100.0, "fp32/cl": 120.0, "bf16/nchw": 130.0, "bf16/cl": 140.0}
    assert autotune.choose(rates)["precision"] == "bf16" and autotune.choose(rates)["channels_last"]
    close = {**rates, "bf16/cl": 125.0, "bf16/nchw": 110.0}  # 1.04x: a near tie keeps fp32's numbers
    assert autotune.choose(close) == {"precision": "fp32", "channels_last": True, "rates": close}
    slow = {"fp32/nchw": 100.0, "fp32/cl": 90.0, "bf16/nchw": 40.0, "bf16/cl": 45.0}  # bf16 emulated
    assert autotune.choose(slow)["precision"] == "fp32" and not autotune.choose(slow)["channels_last"]
    assert autotune.choose({"fp32/nchw": 1.0, "fp32/cl": 2.0})["precision"] == "fp32"  # fp32 alone allowed


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def test_the_choice_is_measured_once_kept_and_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    real = autotune.measure
    monkeypatch.setattr(autotune, "measure", lambda *a: calls.append(a) or real(*a))
    net = _net()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = autotune.resolve(net, (3, 8, 8), "cpu-x", {"avx512_bf16"}, ["fp32", "bf16"], [False, True])
    assert torch.equal(torch.get_rng_state(), state)  # dropout in the timed copy drew from a forked RNG
    assert set(first["rates"]) == {"fp32/nchw", "fp32/cl", "bf16/nchw", "bf16/cl"}
    again = autotune.resolve(_net(), (3, 8, 8), "cpu-x", {"avx512_bf16"}, ["fp32", "bf16"], [False, True])
    assert again == first and len(calls) == 1  # kept in .fsood/autotune.json: measured once
    kept = json.loads((tmp_path / ".fsood/autotune.json").read_text())
    assert list(kept.values()) == [first]
    autotune.resolve(_net(), (3, 8, 8), "cpu-y", {"avx512_bf16"}, ["fp32", "bf16"], [False, True])
    assert len(calls) == 2  # another CPU: measured again


def test_prepare_model_resolves_auto_and_precision_follows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rt, "_AUTO", {})
    monkeypatch.setattr(autotune, "measure", lambda model, shape, precisions, formats: {
        f"{p}/{'cl' if cl else 'nchw'}": (300.0 if p == "bf16" else 100.0) + (10.0 if cl else 0.0)
        for p in precisions for cl in formats})
    monkeypatch.setattr(rt, "cpu_flags", lambda: {"amx_bf16", "avx512_bf16"})
    runtime = {"precision": "auto", "channels_last": "auto"}
    rt.prepare_model(_net(), runtime, torch.device("cpu"), (3, 8, 8))
    assert rt.precision(runtime, torch.device("cpu")) == "bf16" and rt.channels_last(runtime) is True
    assert rt.auto_choice()["rates"]["bf16/cl"] == 310.0
    assert rt.precision({"precision": "fp32"}, torch.device("cpu")) == "fp32"  # a fixed setting stays

"""fsood.records is the one list of method and benchmark names; the schema's lists are written from it."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from fsood import config, datasets, methods, paper, records


def _schema() -> dict:
    return yaml.safe_load(records.SCHEMA_PATH.read_text())


def test_schema_name_lists_are_the_records():
    text = records.SCHEMA_PATH.read_text()
    assert records.sync_schema(text) == text, "run python -m fsood.records"
    schema = _schema()
    # grid.methods and the verdict's name the fine-tuned methods: `none` is one cell a pretrained model, always
    assert schema["properties"]["grid"]["properties"]["methods"]["items"]["enum"] == list(records.FINE_TUNED)
    assert schema["properties"]["verdict"]["properties"]["method"]["enum"] == list(records.FINE_TUNED)
    assert records.FINE_TUNED == tuple(m for m in records.METHOD_NAMES if m != "none")
    assert schema["properties"]["methods"]["required"] == list(records.METHOD_NAMES)
    assert list(schema["properties"]["methods"]["properties"]) == list(records.METHOD_NAMES)
    built = schema["properties"]["benchmarks"]["properties"]
    assert {n: b["properties"]["data"]["$ref"] for n, b in built.items()} == {
        b.name: f"#/$defs/{b.data_schema}" for b in records.BENCHMARK_RECORDS}


def test_each_method_config_key_is_required_by_its_schema_section():
    sections = _schema()["properties"]["methods"]["properties"]
    for m in records.METHOD_RECORDS:
        assert set(m.config_keys) <= set(sections[m.name].get("required", [])), m.name
        assert set(m.stage1.values()) | set(m.stage2.values()) <= set(m.config_keys), m.name


def test_a_new_record_reaches_the_schema(monkeypatch):
    extra = records.Method("my_method", {"oe": "oe_weight"}, config_keys=("oe_weight",))
    bench = records.Benchmark("mnist", "digits", "digits_data", None)
    monkeypatch.setattr(records, "METHOD_NAMES", (*records.METHOD_NAMES, extra.name))
    monkeypatch.setattr(records, "FINE_TUNED", (*records.FINE_TUNED, extra.name))
    monkeypatch.setattr(records, "BENCHMARK_RECORDS", (*records.BENCHMARK_RECORDS, bench))
    new = yaml.safe_load(records.sync_schema(records.SCHEMA_PATH.read_text()))
    assert new["properties"]["grid"]["properties"]["methods"]["items"]["enum"][-1] == "my_method"
    assert new["properties"]["methods"]["required"][-1] == "my_method"
    assert new["properties"]["benchmarks"]["properties"]["mnist"]["properties"]["data"] == {
        "$ref": "#/$defs/digits_data"}


def test_sync_schema_refuses_a_schema_without_its_marks():
    with pytest.raises(ValueError, match="names: methods"):
        records.sync_schema("type: object\n")


def test_the_modules_read_the_records():
    assert methods.METHODS == records.METHOD_NAMES
    assert methods.LOSS_TERMS["sep"] == ({"oe": "oe_weight"}, {"clu": "alpha", "sep": "beta"})
    assert set(methods.CONFIG_KEYS) == set(records.METHOD_NAMES) - {"none"}
    assert config.NUM_CLASSES == {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
    assert set(datasets.BUILDERS) == set(records.BENCHMARKS)
    assert paper.BENCHMARKS == ("cifar10", "cifar100", "imagenet")
    assert set(paper.METHODS) == {"oe", "energy_oe", "dal", "sep", "oe_clu", "oe_sep"}
    published = paper.load()["benchmarks"]
    assert {e["method"] for b in published.values() for e in b["entries"]} <= set(paper.METHODS)
    assert all(dataclasses.is_dataclass(r) for r in (*records.METHOD_RECORDS, *records.BENCHMARK_RECORDS))

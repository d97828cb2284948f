"""Deterministic, atomic writers in fsood.io."""
import json
import time

import numpy as np
import pytest

from fsood.io import atomic_path, load_npz, read_json, save_npz, write_json


def test_write_json_key_order_independent(tmp_path):
    a = {"b": 1, "a": [1, 2, {"y": 0.5, "x": None}], "c": {"z": "s", "k": True}}
    b = {"c": {"k": True, "z": "s"}, "a": [1, 2, {"x": None, "y": 0.5}], "b": 1}
    write_json(tmp_path / "a.json", a)
    write_json(tmp_path / "b.json", b)
    data_a = (tmp_path / "a.json").read_bytes()
    assert data_a == (tmp_path / "b.json").read_bytes()
    assert data_a.endswith(b"\n")
    assert json.loads(data_a) == a
    assert read_json(tmp_path / "a.json") == a
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_write_json_rejects_nan_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"a": float("nan")})
    assert list(tmp_path.iterdir()) == []


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "logits": rng.standard_normal((7, 3)).astype(np.float32),
        "labels": rng.integers(0, 3, 7),
        "mask": np.array([True, False, True]),
        "feat64": np.asfortranarray(rng.standard_normal((4, 5))),
    }


def test_save_npz_byte_identical_and_roundtrip(tmp_path):
    arrays = _arrays()
    save_npz(tmp_path / "one.npz", arrays)
    first = (tmp_path / "one.npz").read_bytes()
    time.sleep(1.1)  # zip timestamps have 2 s resolution; cross at least one tick boundary
    reordered = {k: arrays[k] for k in reversed(list(arrays))}
    save_npz(tmp_path / "one.npz", reordered)
    assert (tmp_path / "one.npz").read_bytes() == first
    save_npz(tmp_path / "two.npz", arrays)
    assert (tmp_path / "two.npz").read_bytes() == first

    loaded = load_npz(tmp_path / "one.npz")
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype
        assert loaded[k].shape == v.shape
        np.testing.assert_array_equal(loaded[k], v)
    # readable by plain numpy as well
    with np.load(tmp_path / "one.npz") as data:
        np.testing.assert_array_equal(data["labels"], arrays["labels"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "two.npz"]


def test_atomic_path_success_renames(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp != target
        tmp.write_text("hello")
        assert not target.exists()
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_path_failure_creates_nothing(tmp_path):
    folder = tmp_path / "sub"
    target = folder / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(folder.iterdir()) == []


def test_atomic_path_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    before = target.read_bytes()
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2}')
            raise KeyError("fail")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_path_failure_with_directory_keeps_existing(tmp_path):
    target = tmp_path / "outdir"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("fail")
    assert [p.name for p in tmp_path.iterdir()] == ["outdir"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]


def test_atomic_path_directory_replace(tmp_path):
    target = tmp_path / "outdir"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["outdir"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]

"""The battery of bad inputs: each is refused with a message that names the problem, and nothing
partial is left (no output, no temp file, a previous output untouched).

Every test of a class in the "What we test against" table of docs/testing.md carries
``@pytest.mark.trust(kind=...)``, here and in the other test files; ``trust_counts()`` counts them
per kind and ``test_readme_table_counts_match_the_marked_tests`` keeps the table honest. One kind:

    python -m pytest --collect-only -q -m "trust(kind='disk_full')"
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import paper_fakes
from conftest import ROOT, edit_params, make_workspace
from trust_table import readme_table, render, trust_counts
from upstream import clone_upstream
from fsood import io as fsood_io
from fsood.cli import main
from fsood.datasets import cifar_paper, materialize, registry
from fsood.models import build_model

trust = pytest.mark.trust
CELL = "results/digits/model0/oe/seed0"
PRETRAINED = "results/digits/model0/pretrain/model.pt"


def leftovers(folder: Path) -> list[str]:
    """Hidden temp files / folders (``.name.tmpPID``, ``.name.oldPID``) anywhere below ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".tmp" in p.name or ".old" in p.name)


# --- through the CLI, on a tiny digits workspace --------------------------------------------------

@pytest.fixture(scope="module")
def digits_ws(tmp_path_factory, recorded_digits) -> Path:
    """A workspace with the TINY grid and its upstream (data, pretrain, subspace) done: a hard-linked
    copy of the session's (tests/upstream.py)."""
    return clone_upstream(recorded_digits, tmp_path_factory.mktemp("bad") / "ws")


def _params(ws: Path) -> dict:
    return yaml.safe_load((ws / "params.yaml").read_text())


def _model(arch: str = "small_cnn", classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ({"arch": "small_cnn", "width": 32, "feature_dim": 64, "dropout": 0.0} if arch == "small_cnn"
           else {"arch": "wrn", "depth": 10, "widen": 1, "dropout": 0.0})
    return build_model(cfg, 1, classes)


@pytest.fixture
def cell(digits_ws, monkeypatch) -> Path:
    """A fresh pretrained checkpoint and a previous fine-tuned model in the ``oe`` cell, to be kept."""
    monkeypatch.chdir(digits_ws)
    fsood_io.save_state_dict(digits_ws / PRETRAINED, _model().state_dict())
    # the stage's other declared inputs (fsood.contract): the pretraining curve and the subspace basis
    (digits_ws / PRETRAINED).with_name("history.csv").write_text("epoch\n0\n")
    basis = digits_ws / "results/digits/model0/subspace/basis.npz"
    basis.parent.mkdir(parents=True, exist_ok=True)
    fsood_io.save_npz(basis, {"weight": _model().fc.weight.detach().numpy()})
    out = digits_ws / CELL
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        p.unlink()
    (out / "model.pt").write_bytes(b"previous model")
    yield out
    for p in out.iterdir():
        p.unlink()


def _finetune(capsys) -> tuple[int, str]:
    rc = main(["finetune", "--benchmark", "digits", "--pretrain-seed", "0", "--method", "oe", "--seed", "0"])
    return rc, capsys.readouterr().err


def _nothing_partial(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]  # no history.csv, no temp file
    assert (out / "model.pt").read_bytes() == b"previous model"
    assert leftovers(out.parents[2]) == []


def _not_a_state_dict(path: Path) -> None:
    torch.save({"epoch": 3, "state_dict": _model().state_dict()}, path)  # a training checkpoint


def _pickled_module(path: Path) -> None:
    torch.save(_model(), path)  # the whole module: weights_only=True refuses to unpickle it


CHECKPOINTS = {
    "other_class_count": (lambda p: torch.save(_model(classes=3).state_dict(), p),
                          r"checkpoint does not fit the model \(small_cnn, 5 classes\).*size mismatch for fc.weight"),
    "other_architecture": (lambda p: torch.save(_model("wrn").state_dict(), p),
                           r"checkpoint does not fit the model \(small_cnn, 5 classes\).*(Missing|Unexpected) key"),
    "training_checkpoint": (_not_a_state_dict, r"not a plain state dict checkpoint \(a dict of non-tensors\)"),
    "pickled_module": (_pickled_module, r"not a plain state dict checkpoint \(.*weights_only"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:500]), r"not a plain state dict checkpoint"),
}


@trust(kind="bad_checkpoints")
@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_finetune_refuses_a_bad_pretrained_checkpoint(cell, capsys, case):
    write, problem = CHECKPOINTS[case]
    write(cell.parents[1] / "pretrain/model.pt")
    rc, err = _finetune(capsys)
    assert rc == 1
    assert re.search(rf"(?s)fsood: error: {re.escape(PRETRAINED)}: {problem}", err), err
    _nothing_partial(cell)


@trust(kind="nonfinite_loss")
@pytest.mark.parametrize("how", ["diverging_lr", "nan_weight"])
def test_finetune_stops_on_a_non_finite_loss_naming_epoch_and_step(cell, capsys, how):
    params = (Path.cwd() / "params.yaml").read_text()
    if how == "diverging_lr":  # a valid but absurd learning rate: the loss overflows after a few steps
        edit_params(Path.cwd(), **{f"benchmarks.digits.finetune.{k}": v for k, v in
                                   (("lr", 1.0e30), ("momentum", 0.0), ("nesterov", False))})
    else:  # a NaN that reached the checkpoint: the very first loss is NaN
        state = _model().state_dict()
        state["fc.bias"][0] = float("nan")
        torch.save(state, PRETRAINED)
    try:
        rc, err = _finetune(capsys)
    finally:
        (Path.cwd() / "params.yaml").write_text(params)
    assert rc == 1
    found = re.search(r"finetune digits-0-oe-0: loss became (nan|inf|-inf) at epoch (\d+), step (\d+)", err)
    assert found, err
    if how == "nan_weight":
        assert found.group(1) == "nan" and found.group(2, 3) == ("0", "0")
    _nothing_partial(cell)


@trust(kind="bad_params")
@pytest.mark.parametrize("changes, expected", [
    ({"grid.methods": []}, ["grid.methods", "should be non-empty"]),
    ({"grid.benchmarks": []}, ["grid.benchmarks", "should be non-empty"]),
    ({"grid.seeds": [0, 0]}, ["grid.seeds", "non-unique"]),
    ({"grid.seeds": ["0"]}, ["grid.seeds[0]", "'0' is not of type 'integer'"]),
    ({"runtime.threads": "1"}, ["runtime.threads", "not of type 'integer'"]),
    ({"runtime.deterministic": "yes"}, ["runtime.deterministic", "not of type 'boolean'"]),
    ({"grid.cores": 2}, ["grid", "'cores' was unexpected"]),
    ({"benchmarks.digits.finetune.epoch": 3}, ["benchmarks.digits.finetune", "'epoch' was unexpected"]),
])
def test_cli_refuses_bad_params_and_leaves_the_previous_output(cell, capsys, changes, expected):
    params = (Path.cwd() / "params.yaml").read_text()
    try:
        edit_params(Path.cwd(), **changes)
        rc, err = _finetune(capsys)
    finally:
        (Path.cwd() / "params.yaml").write_text(params)
    assert rc == 2
    assert err.startswith("fsood: error: ")
    for fragment in expected:
        assert fragment in err, err
    _nothing_partial(cell)


# --- the data stage of a paper benchmark, on fabricated sources in a mirror ------------------------

def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def cifar_ws(tmp_path, monkeypatch) -> Path:
    """A cifar10 workspace whose sources (CIFAR-10, 300K, a DTD archive) lie in ``$FSOOD_MIRROR``."""
    ws = make_workspace(tmp_path / "ws", git=False)
    edit_params(ws, **{"grid.benchmarks": ["cifar10"], "grid.pretrain_seeds": [0], "grid.seeds": [0],
                       "datasets.mirrors": [],
                       "benchmarks.cifar10.data.ood_sets": ["textures"], "benchmarks.cifar10.data.hard_ood_sets": [],
                       "benchmarks.cifar10.data.ood_count": 6, "benchmarks.cifar10.data.subset.outliers": 32})
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    source_name = cifar_paper.IMAGE_SETS["textures"][0]
    dtd = registry.get_source(source_name)
    folder = paper_fakes._image_folder(dtd, "")
    images = {f"{folder}img_{i}.jpg": _jpeg(i) for i in range(5)}
    images[f"{folder}img_bad.jpg"] = b"\xff\xd8\xff\xe0 not really a JPEG"
    archive = mirror / dtd.filename
    paper_fakes._archive(archive, dtd.format, {paper_fakes._under(dtd, k): v for k, v in images.items()})
    files = {cifar_paper.CIFAR["cifar10"]["source"]: paper_fakes.cifar_binary(mirror, "cifar10", 2, 1, seed=1),
             "tiny-images-300k": paper_fakes.tiny_images_npy(mirror, 40, seed=2), source_name: archive}
    sources = paper_fakes.sources_override(tmp_path / "sources.yaml", files, "http://127.0.0.1:9/unused")
    monkeypatch.setenv("FSOOD_SOURCES", str(sources))
    monkeypatch.setenv("FSOOD_MIRROR", str(mirror))
    monkeypatch.chdir(ws)
    (ws / "data/cifar10").mkdir(parents=True)
    (ws / "data/cifar10/manifest.json").write_text('{"previous": true}\n')
    return ws


def _data_stage_failed(ws: Path, capsys) -> str:
    rc = main(["data", "--benchmark", "cifar10"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert sorted(p.name for p in (ws / "data").iterdir()) == ["cifar10"]  # no temp folder, no downloads
    assert [p.name for p in (ws / "data/cifar10").iterdir()] == ["manifest.json"]
    assert (ws / "data/cifar10/manifest.json").read_text() == '{"previous": true}\n'
    return err


@trust(kind="undecodable_images")
def test_data_stage_names_an_image_that_fails_to_decode_and_keeps_the_previous_data(cifar_ws, capsys):
    err = _data_stage_failed(cifar_ws, capsys)
    assert re.search(r"fsood: error: .*img_bad\.jpg: image failed to decode", err), err


@trust(kind="missing_mirror")
def test_data_stage_refuses_a_mirror_folder_that_does_not_exist(cifar_ws, capsys, monkeypatch, tmp_path):
    missing = tmp_path / "no-such-mirror"
    monkeypatch.setenv("FSOOD_MIRROR", str(missing))
    err = _data_stage_failed(cifar_ws, capsys)
    assert f"fsood: error: FSOOD_MIRROR names {str(missing)!r}, which is not an existing folder" in err, err


# --- a disk that fills while writing ---------------------------------------------------------------

class _FullDisk:
    """A file whose device has ``room`` bytes left: a write past them writes what fits, then ENOSPC."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.fh.write(bytes(data[:self.room]))
            self.fh.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def fill_disk(monkeypatch, where: str, after_files: int = 0, room: int = 100) -> list[Path]:
    """Make fsood.io's writes hit a full disk: in ``write`` (after ``room`` bytes) or in ``fsync``,
    for every file opened after the first ``after_files``. Returns the temp files it opened."""
    opened: list[Path] = []

    def fake_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)
        opened.append(Path(path))
        return _FullDisk(fh, room) if where == "write" and len(opened) > after_files else fh

    real_fsync = os.fsync

    def fake_fsync(fd):
        if where == "fsync" and len(opened) > after_files:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(fsood_io, "open", fake_open, raising=False)
    monkeypatch.setattr(fsood_io.os, "fsync", fake_fsync)
    return opened


def _rng_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"logits": rng.standard_normal((50, 4)).astype(np.float32), "labels": rng.integers(0, 4, 50)}


WRITERS = {
    "write_bytes": lambda path: fsood_io.write_bytes(path, b"new bytes " * 40),
    "save_npz": lambda path: fsood_io.save_npz(path, _rng_arrays()),
    "save_state_dict": lambda path: fsood_io.save_state_dict(path, _model().state_dict()),
}


@trust(kind="disk_full")
@pytest.mark.parametrize("where", ["write", "fsync"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_full_disk_names_the_file_and_keeps_the_previous_output(tmp_path, monkeypatch, writer, where):
    target = tmp_path / "out" / "result.bin"
    target.parent.mkdir()
    target.write_bytes(b"previous output")
    opened = fill_disk(monkeypatch, where)
    with pytest.raises(OSError) as err:
        WRITERS[writer](target)
    assert err.value.errno == errno.ENOSPC
    assert "No space left on device" in str(err.value) and str(target) in str(err.value), str(err.value)
    assert len(opened) == 1 and opened[0].parent == target.parent and opened[0] != target
    assert not opened[0].exists()  # the partial temp file is gone
    assert [p.name for p in target.parent.iterdir()] == ["result.bin"]
    assert target.read_bytes() == b"previous output"


@trust(kind="disk_full")
@pytest.mark.parametrize("first", [True, False], ids=["fresh", "over_previous"])
def test_full_disk_during_a_folder_output_leaves_no_partial_folder(tmp_path, monkeypatch, first):
    out = tmp_path / "data" / "digits"
    if not first:
        out.mkdir(parents=True)
        (out / "manifest.json").write_text("previous")
    cfg = _params(ROOT)["benchmarks"]["digits"]["data"] | {"n_outliers": 64, "n_ood": 32}
    opened = fill_disk(monkeypatch, "write", after_files=2)  # two sets are written, the third fills the disk
    with pytest.raises(OSError) as err:
        materialize("digits", cfg, out)
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    assert len(opened) == 3 and opened[2].name.endswith(".npz")
    failed = opened[2].parent / opened[2].name.split(".tmp")[0].lstrip(".")
    assert str(failed) + ".npz" in str(err.value) or failed.name in str(err.value), str(err.value)
    assert leftovers(tmp_path) == []
    assert not any(p.exists() for p in opened)
    if first:
        assert [p.name for p in tmp_path.iterdir()] == ["data"] and list((tmp_path / "data").iterdir()) == []
    else:
        assert [p.name for p in out.iterdir()] == ["manifest.json"]
        assert (out / "manifest.json").read_text() == "previous"


# --- the README's table is the one the trust markers make -------------------------------------------

@pytest.mark.slow  # collecting the marked files imports torch etc.: 10-25 s on a busy 2-core machine
def test_readme_holds_the_trust_table_the_markers_make():
    """scripts/trust_table.py writes the table; this fails when a test was added or removed since."""
    table = render(trust_counts())
    assert readme_table((ROOT / "docs/testing.md").read_text()) == table, "run python scripts/trust_table.py"

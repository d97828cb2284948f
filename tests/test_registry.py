"""Dataset registry: the sources file and overrides, verification, safe reading of every format.

Every archive and file here is fabricated by the test (a GitHub-style ``<top>/`` folder of
small PNGs, small arrays, a small state dict). Downloads are in test_downloads.py.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from PIL import Image

from fsood.datasets import registry
from fsood.datasets.images import decode, decode_all
from fsood.datasets.registry import (
    Checksum,
    ChecksumMismatch,
    DatasetError,
    Source,
    UnsafeArchive,
)

TOP = "fake-0123abc"


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


FILES = {f"train/{cls}/{i}.png": _png(10 * i + 100 * c) for c, cls in enumerate(("a", "b")) for i in range(3)}
EXTRA = {"README.md": b"not data\n"}  # GitHub's download holds other files too


def tar_bytes(files: dict[str, bytes], top: str = TOP, mtime: int = 0, extra_members=(), gz: bool = True) -> bytes:
    """A tar(.gz) with ``top/<name>`` members; ``extra_members`` are raw TarInfo (links, bad names)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
        for info in extra_members:
            tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=mtime) if gz else raw.getvalue()


def make_tar(path: Path, files: dict[str, bytes], top: str = TOP, mtime: int = 0, extra_members=()) -> Path:
    path.write_bytes(tar_bytes(files, top, mtime, extra_members, gz=not path.name.endswith(".tar")))
    return path


def zip_bytes(files: dict[str, bytes], top: str = TOP, extra=()) -> bytes:
    """A zip with ``top/<name>`` members; ``extra`` are (ZipInfo, bytes) pairs (links, bad names)."""
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(f"{top}/{name}" if top else name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        for info, data in extra:
            zf.writestr(info, data)
    return raw.getvalue()


def tree_hash(files: dict[str, bytes]) -> str:
    """The README's definition, written out: ``sha256sum`` lines sorted bytewise by path."""
    names = sorted((n for n in files if n.startswith("train/")), key=str.encode)
    lines = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in names)
    return hashlib.sha256(lines.encode()).hexdigest()


def sha256_of(data: bytes) -> Checksum:
    return Checksum("sha256", hashlib.sha256(data).hexdigest(), "the test")


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch):
    monkeypatch.delenv(registry.SOURCES_ENV, raising=False)


@pytest.fixture
def good(tmp_path) -> tuple[Source, Path]:
    (tmp_path / "origin").mkdir()
    archive = make_tar(tmp_path / "origin" / "fake.tar.gz", {**FILES, **EXTRA})
    source = Source("fake", "fake.tar.gz", ("http://127.0.0.1:1/none",), "tar.gz", TOP, ("train",),
                    checksum=sha256_of(archive.read_bytes()), tree_sha256=tree_hash(FILES))
    return source, archive


# --- the registry's own sources -----------------------------------------------------------

# names the benchmark builders (cifar_paper, imagenet) and params.yaml (declared cifar10-mini) read
NEEDED = ["cifar10-jpg", "tinyimagenet32", "dtd10", "cifar10-binary", "cifar100-binary", "cifar10-python",
          "cifar100-python", "svhn-test", "lsun-crop", "lsun-resize", "isun", "dtd", "places365",
          "tiny-imagenet-200", "tiny-images-300k", "energy-ood-wrn-cifar10", "energy-ood-wrn-cifar100",
          "resnet50-imagenet1k-v1", "mos-inaturalist", "mos-sun", "mos-places", "imagenet-1k", "imagenet-21k-p"]


def test_registry_names_every_paper_source_with_origin_and_checksum_provenance():
    assert set(NEEDED) <= set(registry.builtin_sources())
    for source in registry.builtin_sources().values():
        assert source.description and source.licence, source.name
        assert source.urls or source.user_path, source.name
        if source.checksum is None or source.checksum.prefix:
            assert source.note, source.name  # the registry says why, and what is done instead
        else:
            assert source.checksum.published_by, source.name
    by_torchvision = {n for n, s in registry.builtin_sources().items() if s.checksum and "torchvision" in s.checksum.published_by}
    assert {"cifar10-python", "cifar100-python", "svhn-test", "dtd", "places365"} <= by_torchvision
    assert all(registry.builtin_sources()[n].checksum.algorithm == "md5" for n in by_torchvision - {"resnet50-imagenet1k-v1"})
    resnet = registry.builtin_sources()["resnet50-imagenet1k-v1"]
    assert resnet.checksum.prefix and resnet.checksum.value in resnet.filename  # only the prefix: said so
    assert registry.builtin_sources()["dtd"].filename == "dtd-r1.0.1.tar.gz" and registry.builtin_sources()["dtd"].members[0] == "images"
    for name in ("imagenet-1k", "imagenet-21k-p"):
        assert not registry.builtin_sources()[name].urls and registry.builtin_sources()[name].checksum is None
    # the ODIN sets' second origin: the same Dropbox file by the /s/raw/ route pytorch-ood uses
    for name in ("lsun-crop", "lsun-resize", "imagenet-resize"):
        first, second = registry.builtin_sources()[name].urls
        assert second == first.replace("/s/", "/s/raw/").removesuffix("?dl=1")
    # the GitHub copies keep their recorded hashes
    assert registry.builtin_sources()["dtd10"].archive_sha256.startswith("4890231d")
    assert registry.builtin_sources()["dtd10"].tree_sha256.startswith("727f453c")


def test_docs_list_every_source_with_its_origins_and_digest():
    """docs/datasets.md: a row a source, with every origin in order, and "recorded at first use"
    exactly where no full digest is published (a folder the user provides: "none")."""
    from conftest import ROOT

    text = (ROOT / "docs" / "datasets.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2:5]
            for line in text.splitlines() if line.startswith("| `")}
    assert set(rows) == set(registry.builtin_sources())
    for name, source in registry.builtin_sources().items():
        origins, digest, _ = rows[name]
        positions = [origins.find(f"`{url}`") for url in source.urls]
        assert -1 not in positions and positions == sorted(positions), name
        c = source.checksum
        if source.user_path is not None:
            assert digest.strip().startswith("none: a folder you provide"), name
        else:
            assert ("recorded at first use" in digest) == (c is None or c.prefix), name


def test_as_entry_round_trips_through_an_override_file():
    data = {name: registry.as_entry(s) for name, s in registry.builtin_sources().items()}
    assert registry.parse_sources(yaml.safe_load(yaml.safe_dump(data)), "x.yaml") == registry.builtin_sources()


def test_unknown_source_names_the_registered_ones():
    with pytest.raises(DatasetError, match=r"unknown dataset source 'svhn'.*cifar10-jpg"):
        registry.get_source("svhn")


# --- $FSOOD_SOURCES overrides ---------------------------------------------------------------

def _override(tmp_path, monkeypatch, entries) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(entries) if not isinstance(entries, str) else entries)
    monkeypatch.setenv(registry.SOURCES_ENV, str(path))
    return path


def test_override_file_replaces_and_adds_entries(tmp_path, monkeypatch):
    mirror = registry.as_entry(registry.get_source("svhn-test"))
    mirror["urls"] = ["https://mirror.example.org/svhn/test_32x32.mat"]
    new = {"filename": "x.npy", "urls": ["http://127.0.0.1:9/x.npy"], "format": "npy", "checksum": None,
           "note": "fabricated", "description": "a test file", "licence": "none"}
    _override(tmp_path, monkeypatch, {"svhn-test": mirror, "my-set": new})
    assert registry.get_source("svhn-test").urls == ("https://mirror.example.org/svhn/test_32x32.mat",)
    assert registry.get_source("svhn-test").checksum == registry.builtin_sources()["svhn-test"].checksum
    assert registry.get_source("my-set").format == "npy" and registry.get_source("my-set").checksum is None
    assert registry.get_source("dtd") == registry.builtin_sources()["dtd"]  # untouched entries stay
    monkeypatch.delenv(registry.SOURCES_ENV)
    assert "my-set" not in registry.sources()


def _entry(**changes):
    entry = registry.as_entry(registry.builtin_sources()["dtd"])
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not ...}


@pytest.mark.parametrize(
    "entry, problem",
    [
        (_entry(mirror_url="x"), r"unknown field\(s\) \['mirror_url'\]"),
        (_entry(format="rar"), r"format 'rar' is not one of"),
        (_entry(licence=...), r"missing field\(s\) \['licence'\]"),
        (_entry(urls=...), r"missing field\(s\) \['urls'\]"),
        (_entry(checksum=...), r"missing field\(s\) \['checksum'\]"),
        (_entry(checksum={"algorithm": "crc32", "value": "00", "published_by": "x"}), "algorithm 'crc32'"),
        (_entry(checksum={"algorithm": "md5", "value": "abc", "published_by": "x"}), "has 3 hex digits, not 32"),
        (_entry(checksum={"algorithm": "md5", "value": "0" * 32, "publisher": "x"}), r"unknown field\(s\) \['publisher'\]"),
        (_entry(checksum=None), "no full published checksum: say so in a note"),
        (_entry(filename="../../etc/passwd"), "must be a plain file name"),
        (_entry(urls=["ftp://example.org/dtd.tar.gz"]), "must be http:// or https://"),
        (_entry(members=["../up"]), "without '..'"),
        (_entry(members=[]), "needs its data members"),
    ],
    ids=["unknown-field", "bad-format", "no-licence", "no-urls", "no-checksum", "bad-algorithm", "short-digest",
         "bad-checksum-field", "null-checksum-without-note", "path-filename", "ftp-url", "dotdot-member", "no-members"],
)
@pytest.mark.trust(kind="bad_params")
def test_bad_override_entries_are_refused_naming_file_and_entry(tmp_path, monkeypatch, entry, problem):
    path = _override(tmp_path, monkeypatch, {"dtd": entry})
    with pytest.raises(DatasetError) as err:
        registry.get_source("dtd")
    msg = str(err.value)
    assert msg.startswith(f"{path}: entry 'dtd': ") and re.search(problem, msg), msg


@pytest.mark.trust(kind="bad_params")
def test_override_file_itself_missing_or_malformed(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.SOURCES_ENV, str(tmp_path / "nope.yaml"))
    with pytest.raises(DatasetError, match=r"FSOOD_SOURCES names .*nope\.yaml.*not a file"):
        registry.get_source("dtd")
    path = _override(tmp_path, monkeypatch, "- just\n- a list\n")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: expected a mapping of source names"):
        registry.get_source("dtd")
    _override(tmp_path, monkeypatch, "dtd: {filename: [unclosed\n")
    with pytest.raises(DatasetError, match="cannot read the sources file"):
        registry.get_source("dtd")


# --- user-provided sources (licence: no download) -----------------------------------------

def test_user_path_source_says_exactly_what_to_set(tmp_path, monkeypatch):
    source = registry.get_source("imagenet-1k")
    monkeypatch.delenv("FSOOD_IMAGENET_ROOT", raising=False)
    with pytest.raises(DatasetError) as err:
        registry.fetch(source, [], tmp_path / "dl")
    msg = str(err.value)
    assert "cannot be downloaded" in msg and "FSOOD_IMAGENET_ROOT" in msg
    assert "benchmarks.imagenet.data.roots.imagenet" in msg and "['train', 'val']" in msg
    folder = tmp_path / "imagenet"
    (folder / "train").mkdir(parents=True)
    monkeypatch.setenv("FSOOD_IMAGENET_ROOT", str(folder))
    with pytest.raises(DatasetError, match=r"lacks \['val'\]"):
        registry.fetch(source, [], tmp_path / "dl")
    (folder / "val").mkdir()
    assert registry.fetch(source, [], tmp_path / "dl") == folder
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    (other / "val").mkdir()
    assert registry.fetch(source, [], tmp_path / "dl", user_paths={"imagenet-1k": other}) == other  # params first
    assert not (tmp_path / "dl").exists()


# --- verification ----------------------------------------------------------------------------

def test_verify_accepts_archive_hash_and_tree_hash_of_a_regzipped_copy(good, tmp_path):
    source, archive = good
    assert registry.verify(source, archive) == "archive sha256"
    regzipped = make_tar(tmp_path / "regz.tar.gz", {**FILES, **EXTRA}, mtime=12345)  # other bytes, same content
    assert registry.file_sha256(regzipped) != source.archive_sha256
    assert registry.verify(source, regzipped) == "tree sha256"
    assert registry.tree_sha256(source, archive) == source.tree_sha256
    read = dict(registry.iter_members(source, archive))
    assert read == FILES  # README.md is not a data member


@pytest.mark.trust(kind="archives")
def test_md5_checksum_and_its_mismatch_message(good, tmp_path):
    source, archive = good
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    by_md5 = dataclasses.replace(source, checksum=Checksum("md5", md5, "the origin"), tree_sha256=None)
    assert registry.verify(by_md5, archive) == "archive md5"
    other = make_tar(tmp_path / "other.tar.gz", FILES)
    with pytest.raises(ChecksumMismatch) as err:
        registry.verify(by_md5, other)
    actual = hashlib.md5(other.read_bytes()).hexdigest()
    assert f"expected md5 {md5} (published by the origin), actual {actual}" in str(err.value)


@pytest.mark.trust(kind="archives")
def test_tampered_archive_is_refused_naming_file_and_hashes(good, tmp_path):
    source, _ = good
    tampered_files = dict(FILES, **{"train/a/0.png": _png(77)})
    tampered = make_tar(tmp_path / "tampered.tar.gz", tampered_files)
    with pytest.raises(ChecksumMismatch) as err:
        registry.verify(source, tampered)
    msg = str(err.value)
    assert "tampered.tar.gz" in msg and source.tree_sha256 in msg and tree_hash(tampered_files) in msg


@pytest.mark.trust(kind="archives")
def test_truncated_archive_is_refused(good, tmp_path):
    source, archive = good
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ChecksumMismatch, match=r"cut\.tar\.gz: not a readable tar\.gz archive"):
        registry.verify(source, cut)


@pytest.mark.trust(kind="archives")
def test_first_use_record_is_read_but_never_written_by_verify(tmp_path):
    data = np.arange(12, dtype=np.int16).reshape(3, 4)
    path = tmp_path / "a.npy"
    np.save(path, data)
    source = Source("a", "a.npy", ("http://127.0.0.1:9/a.npy",), "npy", note="no digest published")
    assert registry.verify(source, path).startswith("format check (array (3, 4) int16")
    assert not (tmp_path / "a.npy.sha256").exists()
    sha = registry.recorded_sha256(source, path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "a.npy.sha256").write_text(f"{'0' * 64}  a.npy\n")
    with pytest.raises(ChecksumMismatch, match=rf"expected sha256 {'0' * 64} \(recorded at first use in .*actual {sha}"):
        registry.verify(source, path)


# --- safe reading: every archive format ------------------------------------------------------

def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _zip_entry(name: str, mode: int) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
    info.external_attr = mode << 16
    return info, b"/etc/passwd" if stat.S_ISLNK(mode) else b"x"


TAR_UNSAFE = {
    "dotdot": (tarfile.TarInfo(f"{TOP}/train/../../escape.png"), "contains '..'"),
    "absolute": (tarfile.TarInfo("/etc/fsood-owned.png"), "absolute path"),
    "symlink": (_link(f"{TOP}/train/a/link.png", "/etc/passwd"), "is a link"),
    "hardlink": (_link(f"{TOP}/train/a/hard.png", f"{TOP}/train/a/0.png", tarfile.LNKTYPE), "is a link"),
    "fifo": (_link(f"{TOP}/train/a/pipe", "", tarfile.FIFOTYPE), "not a regular file or folder"),
}
ZIP_UNSAFE = {
    "dotdot": (_zip_entry(f"{TOP}/train/../../escape.png", stat.S_IFREG | 0o644), "contains '..'"),
    "absolute": (_zip_entry("/etc/fsood-owned.png", stat.S_IFREG | 0o644), "absolute path"),
    "backslash-dotdot": (_zip_entry(f"{TOP}\\..\\..\\escape.png", stat.S_IFREG | 0o644), "contains '..'"),
    "symlink": (_zip_entry(f"{TOP}/train/a/link.png", stat.S_IFLNK | 0o777), "symbolic link"),
}


def unsafe_archive(fmt: str, kind: str, path: Path) -> tuple[Path, str]:
    """``path`` written as a ``fmt`` archive of FILES plus the unsafe member ``kind``; its expected message."""
    if fmt == "zip":
        entry, problem = ZIP_UNSAFE[kind]
        path.write_bytes(zip_bytes(FILES, extra=[entry]))
    else:
        member, problem = TAR_UNSAFE[kind]
        path.write_bytes(tar_bytes(FILES, extra_members=[member], gz=fmt == "tar.gz"))
    return path, problem


UNSAFE_CASES = [(f, k) for f in ("tar.gz", "tar") for k in TAR_UNSAFE] + [("zip", k) for k in ZIP_UNSAFE]


@pytest.mark.trust(kind="unsafe_members")
@pytest.mark.parametrize("fmt, kind", UNSAFE_CASES, ids=[f"{f}-{k}" for f, k in UNSAFE_CASES])
def test_unsafe_members_refuse_the_whole_archive(tmp_path, fmt, kind):
    bad, problem = unsafe_archive(fmt, kind, tmp_path / f"bad.{fmt}")
    source = Source("fake", bad.name, ("http://127.0.0.1:1/none",), fmt, TOP, ("train",), note="test")
    with pytest.raises(UnsafeArchive, match=re.escape(problem)) as err:
        list(registry.iter_members(source, bad))
    assert str(bad) in str(err.value)
    dest = tmp_path / "extracted"
    with pytest.raises(UnsafeArchive):
        registry.extract(source, bad, dest)
    assert not dest.exists() and not list(tmp_path.glob(".extracted*"))  # nothing half-written
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize("fmt", ["tar.gz", "tar", "zip"])
def test_every_archive_format_reads_its_data_members(tmp_path, fmt):
    path = tmp_path / f"a.{fmt}"
    path.write_bytes(zip_bytes({**FILES, **EXTRA}) if fmt == "zip" else tar_bytes({**FILES, **EXTRA}, gz=fmt == "tar.gz"))
    source = Source("fake", path.name, ("http://127.0.0.1:1/none",), fmt, TOP, ("train",),
                    checksum=sha256_of(path.read_bytes()), tree_sha256=tree_hash(FILES))
    assert dict(registry.iter_members(source, path)) == FILES
    assert dict(registry.iter_members(source, path, wanted=lambda rel: rel.startswith("train/b/"))) == {
        k: v for k, v in FILES.items() if k.startswith("train/b/")}
    assert registry.tree_sha256(source, path) == tree_hash(FILES)
    everything = dataclasses.replace(source, members=(".",))
    assert dict(registry.iter_members(everything, path)) == {**FILES, **EXTRA}


def _cuts(data: bytes) -> list[int]:
    """Cut points: inside the first header, mid-file, at every 512-byte block boundary, near the end."""
    n = len(data)
    return sorted({100, n // 3, n // 2, n - 1} | set(range(512, n, 512)))


@pytest.mark.trust(kind="archives")
@pytest.mark.parametrize("fmt", ["tar.gz", "tar", "zip"])
def test_truncated_archive_never_reads_as_a_shorter_one(tmp_path, fmt):
    """At every cut (tar: block boundaries between members included) reading fails, naming the file."""
    data = zip_bytes(FILES) if fmt == "zip" else tar_bytes(FILES, gz=fmt == "tar.gz")
    source = Source("fake", f"cut.{fmt}", ("http://127.0.0.1:1/none",), fmt, TOP, ("train",), note="test")
    whole = tmp_path / f"whole.{fmt}"
    whole.write_bytes(data)
    assert len(list(registry.iter_members(source, whole))) == len(FILES)
    # a plain tar may lose its zero padding after the first end-of-archive block
    valid_from = 512 * (sum(1 + -(-len(d) // 512) for d in FILES.values()) + 1) if fmt == "tar" else len(data)
    for cut in [c for c in _cuts(data) if c < valid_from]:
        path = tmp_path / f"cut{cut}.{fmt}"
        path.write_bytes(data[:cut])
        with pytest.raises(DatasetError, match=re.escape(str(path))):
            list(registry.iter_members(source, path))


@pytest.mark.trust(kind="archives")
@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_corrupt_compressed_archive_fails_its_crc(tmp_path, fmt):
    rng = np.random.default_rng(0)  # incompressible: the middle byte lies in member data, not in a header
    big = {f"train/a/{i}.bin": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes() for i in range(3)}
    data = bytearray(zip_bytes(big) if fmt == "zip" else tar_bytes(big))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / f"flipped.{fmt}"
    path.write_bytes(bytes(data))
    source = Source("fake", path.name, ("http://127.0.0.1:1/none",), fmt, TOP, ("train",), note="test")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        list(registry.iter_members(source, path))


def test_extract_writes_only_data_members(good, tmp_path):
    source, archive = good
    dest = registry.extract(source, archive, tmp_path / "out")
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.png")) == sorted(FILES)
    assert not (dest / "README.md").exists()


# --- safe reading: single files ---------------------------------------------------------------

@pytest.mark.trust(kind="archives")
def test_load_npy_maps_the_array_and_refuses_truncated_padded_or_pickled_files(tmp_path):
    data = np.arange(3 * 8 * 8 * 3, dtype=np.uint8).reshape(3, 8, 8, 3)
    path = tmp_path / "x.npy"
    np.save(path, data)
    loaded = registry.load_npy(path)
    assert isinstance(loaded, np.memmap) and np.array_equal(loaded, data)
    assert not isinstance(registry.load_npy(path, mmap=False), np.memmap)
    raw = path.read_bytes()
    for cut in (4, 60, len(raw) - 1):
        (tmp_path / "cut.npy").write_bytes(raw[:cut])
        with pytest.raises(DatasetError, match=r"cut\.npy: (not a readable \.npy file|\.npy file is truncated)"):
            registry.load_npy(tmp_path / "cut.npy")
    (tmp_path / "long.npy").write_bytes(raw + b"\0")
    with pytest.raises(DatasetError, match=r"long\.npy: \.npy file has trailing bytes"):
        registry.load_npy(tmp_path / "long.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"obj\.npy: .*Python objects"):
        registry.load_npy(tmp_path / "obj.npy")


@pytest.mark.trust(kind="archives")
def test_load_mat_requires_its_variables_and_names_a_broken_file(tmp_path):
    path = tmp_path / "svhn.mat"
    scipy.io.savemat(path, {"X": np.zeros((4, 4, 3, 2), np.uint8), "y": np.array([[1], [10]], np.uint8)})
    mat = registry.load_mat(path, ["X", "y"])
    assert mat["X"].shape == (4, 4, 3, 2) and mat["y"].ravel().tolist() == [1, 10]
    with pytest.raises(DatasetError, match=r"svhn\.mat: MATLAB file lacks variable\(s\) \['labels'\]"):
        registry.load_mat(path, ["X", "labels"])
    raw = path.read_bytes()
    for cut in (50, len(raw) // 2, len(raw) - 3):
        (tmp_path / "cut.mat").write_bytes(raw[:cut])
        with pytest.raises(DatasetError, match=r"cut\.mat: (not a readable MATLAB file|MATLAB file lacks)"):
            registry.load_mat(tmp_path / "cut.mat", ["X", "y"])


@pytest.mark.trust(kind="bad_checkpoints")
def test_load_checkpoint_wants_a_plain_state_dict(tmp_path):
    state = {"fc.weight": torch.randn(3, 2), "fc.bias": torch.zeros(3)}
    torch.save(state, tmp_path / "ok.pt")
    loaded = registry.load_checkpoint(tmp_path / "ok.pt")
    assert set(loaded) == set(state) and torch.equal(loaded["fc.weight"], state["fc.weight"])
    torch.save({"state_dict": state, "epoch": 99}, tmp_path / "wrapped.pt")
    with pytest.raises(DatasetError, match=r"wrapped\.pt: not a plain state dict \(a mapping whose entry 'state_dict'"):
        registry.load_checkpoint(tmp_path / "wrapped.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(DatasetError, match=r"list\.pt: not a plain state dict \(a list\)"):
        registry.load_checkpoint(tmp_path / "list.pt")
    raw = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"cut\.pt: not a readable PyTorch checkpoint"):
        registry.load_checkpoint(tmp_path / "cut.pt")


# --- lookup: mirrors and the download folder (downloads: test_downloads.py) -----------------

def test_mirror_copy_is_used_in_place_and_never_written(good, tmp_path, monkeypatch):
    source, archive = good
    mirror = archive.parent
    before = {p: p.stat().st_mtime_ns for p in mirror.iterdir()}
    monkeypatch.setenv(registry.MIRROR_ENV, str(mirror))
    got = registry.fetch(source, [], tmp_path / "downloads")
    assert got == mirror / "fake.tar.gz"
    assert {p: p.stat().st_mtime_ns for p in mirror.iterdir()} == before
    assert not (tmp_path / "downloads").exists()


@pytest.mark.trust(kind="missing_mirror")
def test_params_mirror_absent_is_skipped_but_env_mirror_absent_is_an_error(good, tmp_path, monkeypatch):
    source, archive = good
    monkeypatch.delenv(registry.MIRROR_ENV, raising=False)
    got = registry.fetch(source, [tmp_path / "no-such-mirror", archive.parent], tmp_path / "dl")
    assert got == archive
    monkeypatch.setenv(registry.MIRROR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match=r"FSOOD_MIRROR names .*missing.*not an existing folder"):
        registry.fetch(source, [], tmp_path / "dl")


@pytest.mark.trust(kind="archives")
def test_bad_mirror_copy_is_an_error_not_a_silent_fallback(good, tmp_path, monkeypatch):
    source, _ = good
    mirror = tmp_path / "badmirror"
    mirror.mkdir()
    make_tar(mirror / "fake.tar.gz", dict(FILES, **{"train/b/2.png": b"garbage"}))
    monkeypatch.setenv(registry.MIRROR_ENV, str(mirror))
    with pytest.raises(ChecksumMismatch, match="badmirror/fake.tar.gz"):
        registry.fetch(source, [], tmp_path / "dl")


# --- decoding -------------------------------------------------------------------------------

@pytest.mark.trust(kind="undecodable_images")
def test_decode_names_a_broken_image_and_resizes_like_torchvision():
    with pytest.raises(DatasetError, match="train/a/bad.jpg: image failed to decode"):
        decode(b"\xff\xd8 not a jpeg", "train/a/bad.jpg", 32)
    with pytest.raises(DatasetError, match="is 32x32, expected 16x16"):
        decode(_png(5), "x.png", 16)
    from torchvision import transforms

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    ours = decode(buf.getvalue(), "p.png", 32, resize=True)
    theirs = np.asarray(transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32)])(photo))
    np.testing.assert_array_equal(ours, theirs.transpose(2, 0, 1))
    assert decode_all([("a", _png(1)), ("b", _png(2))], 32).shape == (2, 3, 32, 32)

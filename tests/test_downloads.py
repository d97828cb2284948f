"""Downloads of every source format, served on 127.0.0.1 by tests/fileserver.py.

For tar.gz, tar, zip, npy, mat and pt files the test builds itself: a good download (verified,
atomic), a 404, a redirect, a transfer cut short, a wrong checksum, unsafe archive members,
trust on first use for a source without a published checksum, and a mirror that is never
written to. "Nothing left behind" means the download folder holds nothing but what a
successful fetch put there (and, after a cut transfer, the ``.part`` a rerun resumes).
Hosts that misbehave (resume, retries, web pages, Google Drive): test_flaky_origins.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from fileserver import serve
from test_registry import FILES, TOP, tar_bytes, unsafe_archive, zip_bytes

from fsood.datasets import registry, transfer
from fsood.datasets.registry import (
    Checksum,
    ChecksumMismatch,
    DatasetError,
    Source,
    UnsafeArchive,
)

FORMATS = ["tar.gz", "tar", "zip", "npy", "mat", "pt"]
ALGORITHM = {"tar.gz": "sha256", "tar": "md5", "zip": "sha256", "npy": "sha256", "mat": "md5", "pt": "sha256"}


def payload(fmt: str, variant: int = 0) -> bytes:
    """A small file of format ``fmt``; another ``variant`` gives other content."""
    if fmt in ("tar.gz", "tar", "zip"):
        files = {**FILES, "train/a/0.png": FILES["train/a/0.png"] + bytes([variant])} if variant else FILES
        return zip_bytes(files) if fmt == "zip" else tar_bytes(files, gz=fmt == "tar.gz")
    rng = np.random.default_rng(variant)
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    elif fmt == "mat":
        scipy.io.savemat(buf, {"X": rng.integers(0, 256, (8, 8, 3, 6), dtype=np.uint8), "y": np.arange(6)[:, None]})
    else:
        torch.save({"fc.weight": torch.from_numpy(rng.standard_normal((3, 4))), "fc.bias": torch.zeros(3)}, buf)
    return buf.getvalue()


def content(source: Source, path: Path):
    """What a builder would read from the file, in a comparable form."""
    if source.is_archive:
        return dict(registry.iter_members(source, path))
    if source.format == "npy":
        return registry.load_npy(path).tobytes()
    if source.format == "mat":
        mat = registry.load_mat(path, source.members)
        return mat["X"].tobytes() + mat["y"].tobytes()
    return {k: v.numpy().tobytes() for k, v in registry.load_checkpoint(path).items()}


def make_source(fmt: str, data: bytes | None, urls=(), checksum: bool = True) -> Source:
    """A source for ``data``: its published checksum (md5 or sha256), or none (trust on first use)."""
    algorithm = ALGORITHM[fmt]
    published = Checksum(algorithm, hashlib.new(algorithm, data).hexdigest(), "the test") if checksum else None
    archive = fmt in ("tar.gz", "tar", "zip")
    return Source(
        name=f"fake-{fmt}", filename=f"fake.{fmt}", urls=tuple(urls), format=fmt,
        top=TOP if archive else "", members=("train",) if archive else (("X", "y") if fmt == "mat" else ()),
        checksum=published, note="" if checksum else "no checksum is published anywhere",
    )


@pytest.fixture(autouse=True)
def fast_retry(monkeypatch):
    """Three tries per URL without waiting: the tests stay fast, the retry logic is the same."""
    monkeypatch.setattr(transfer, "RETRY", transfer.Retry(attempts=3, first_wait=0.0))


@pytest.fixture
def served(tmp_path, monkeypatch):
    """``(folder, base_url, requests)``: a folder served on 127.0.0.1, and the log of what the server answered."""
    monkeypatch.delenv(registry.MIRROR_ENV, raising=False)
    monkeypatch.delenv(registry.SOURCES_ENV, raising=False)
    folder, requests = tmp_path / "origin", []
    folder.mkdir()
    with serve(folder, requests) as base_url:
        yield folder, base_url, requests


@pytest.fixture
def origin(served):
    """``(folder, base_url)``: a folder served on 127.0.0.1 for the test."""
    return served[:2]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the file server itself --------------------------------------------------------------

def test_fileserver_routes(tmp_path):
    import http.client
    import urllib.error
    import urllib.request

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.bin").write_bytes(bytes(range(200)))
    (tmp_path.parent / "outside.bin").write_bytes(b"secret")
    with serve(tmp_path) as base:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
        assert urllib.request.urlopen(f"{base}/sub/f.bin?dl=1").read() == bytes(range(200))
        redirected = urllib.request.urlopen(f"{base}/redirect/sub/f.bin")
        assert redirected.url == f"{base}/sub/f.bin" and redirected.read() == bytes(range(200))
        for missing in ("/nope.bin", "/sub", "/../outside.bin", "/%2e%2e/outside.bin", "/redirect/nope.bin"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(base + missing)
        port = int(base.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/truncate/sub/f.bin")
        response = conn.getresponse()
        assert response.getheader("Content-Length") == "200"
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        assert len(cut.value.partial) == 100
        conn.close()
    with pytest.raises(OSError):  # the server is gone after the block
        urllib.request.urlopen(f"{base}/sub/f.bin", timeout=2)


# --- every format: good, 404, redirect, truncated, wrong checksum ---------------------------------

@pytest.mark.parametrize("route", ["", "redirect/"], ids=["direct", "redirect"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_good_download_is_verified_and_atomic(origin, tmp_path, fmt, route):
    folder, base = origin
    data = payload(fmt)
    (folder / f"served.{fmt}").write_bytes(data)
    source = make_source(fmt, data, urls=[f"{base}/{route}served.{fmt}"])
    dl = tmp_path / "downloads"
    got = registry.fetch(source, [], dl)
    assert got == dl / source.filename and got.read_bytes() == data
    assert listing(dl) == [source.filename]  # no temporary file, no record (the checksum is published)
    expected = content(source, folder / f"served.{fmt}")
    assert content(source, got) == expected and expected  # the reader sees the data
    assert registry.recorded_sha256(source, got) == hashlib.sha256(data).hexdigest()
    (folder / f"served.{fmt}").unlink()  # the origin is gone: the verified copy is used
    assert registry.fetch(source, [], dl) == got


@pytest.mark.parametrize("fmt", FORMATS)
def test_not_found_leaves_nothing(origin, tmp_path, fmt):
    _, base = origin
    url = f"{base}/missing/fake.{fmt}"
    source = make_source(fmt, payload(fmt), urls=[url])
    dl = tmp_path / "downloads"
    host = base.removeprefix("http://")
    with pytest.raises(DatasetError, match=rf"could not be downloaded: {re.escape(url)}: refused: "
                                           rf"{re.escape(host)} answered HTTP 404 \(Not Found\)\. Wait and rerun"):
        registry.fetch(source, [], dl)
    assert listing(dl) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_second_origin_is_tried_after_a_failing_one(origin, tmp_path, fmt):
    folder, base = origin
    data = payload(fmt)
    (folder / f"fake.{fmt}").write_bytes(data)
    source = make_source(fmt, data, urls=[f"{base}/missing/fake.{fmt}", f"{base}/truncate/fake.{fmt}",
                                          f"{base}/fake.{fmt}"])
    assert registry.fetch(source, [], tmp_path / "dl").read_bytes() == data


@pytest.mark.trust(kind="archives")
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_transfer_is_refused_naming_url_and_byte_counts(origin, tmp_path, fmt):
    """A host that cuts every transfer and cannot resume: each try starts over; the bytes stay in the .part."""
    folder, base = origin
    data = payload(fmt)
    (folder / f"fake.{fmt}").write_bytes(data)
    for checksum in (True, False):  # with a published checksum, and without one (first use)
        source = make_source(fmt, data, urls=[f"{base}/truncate/fake.{fmt}"], checksum=checksum)
        dl = tmp_path / f"downloads-{checksum}"
        with pytest.raises(DatasetError) as err:
            registry.fetch(source, [], dl)
        msg = str(err.value)
        part = dl / f"{source.filename}.part"
        assert (f"{base}/truncate/fake.{fmt}: gave up after 3 attempts (last: transfer ended after {len(data) // 2} "
                f"of {len(data)} bytes); {len(data) // 2} bytes are kept in {part} and a rerun resumes from there") in msg
        # no file under its own name, no record: only the bytes a rerun resumes, and where they came from
        assert listing(dl) == [part.name, f"{part.name}.json"]
        assert part.read_bytes() == data[: len(data) // 2]


@pytest.mark.trust(kind="archives")
@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_checksum_is_refused_naming_expected_and_actual(origin, tmp_path, fmt):
    folder, base = origin
    data, other = payload(fmt), payload(fmt, variant=1)
    (folder / f"fake.{fmt}").write_bytes(other)  # the origin serves something else
    source = make_source(fmt, data, urls=[f"{base}/fake.{fmt}"])
    dl = tmp_path / "downloads"
    with pytest.raises(ChecksumMismatch) as err:
        registry.fetch(source, [], dl)
    algorithm = ALGORITHM[fmt]
    msg = str(err.value)
    assert f"expected {algorithm} {hashlib.new(algorithm, data).hexdigest()}" in msg
    assert f"actual {hashlib.new(algorithm, other).hexdigest()}" in msg
    assert str(dl / source.filename) in msg and ".tmp" not in msg and f"{base}/fake.{fmt}" in msg
    assert listing(dl) == []


# --- archives: unsafe members ---------------------------------------------------------------

UNSAFE = [("tar.gz", "dotdot"), ("tar.gz", "absolute"), ("tar.gz", "symlink"), ("tar.gz", "hardlink"),
          ("tar", "dotdot"), ("tar", "absolute"), ("tar", "symlink"), ("tar", "hardlink"),
          ("zip", "dotdot"), ("zip", "absolute"), ("zip", "symlink")]


@pytest.mark.trust(kind="unsafe_members")
@pytest.mark.parametrize("fmt, kind", UNSAFE, ids=[f"{f}-{k}" for f, k in UNSAFE])
def test_unsafe_archive_is_refused(origin, tmp_path, fmt, kind):
    folder, base = origin
    served, problem = unsafe_archive(fmt, kind, folder / f"fake.{fmt}")
    data = served.read_bytes()
    # without a published checksum the first-use check reads every member: the download is refused
    first_use = make_source(fmt, data, urls=[f"{base}/fake.{fmt}"], checksum=False)
    dl = tmp_path / "downloads"
    with pytest.raises(DatasetError, match=re.escape(problem)) as err:
        registry.fetch(first_use, [], dl)
    assert str(dl / first_use.filename) in str(err.value)
    assert listing(dl) == []
    # with a matching published checksum the bytes are the expected ones, but reading refuses them
    published = make_source(fmt, data, urls=[f"{base}/fake.{fmt}"])
    got = registry.fetch(published, [], dl)
    with pytest.raises(UnsafeArchive, match=re.escape(problem)):
        list(registry.iter_members(published, got))
    assert not (tmp_path / "escape.png").exists()


# --- trust on first use -------------------------------------------------------------------------

@pytest.mark.trust(kind="archives")
@pytest.mark.parametrize("fmt", FORMATS)
def test_first_use_records_the_hash_and_later_changes_are_refused(origin, tmp_path, fmt):
    folder, base = origin
    data, changed = payload(fmt), payload(fmt, variant=1)
    (folder / f"fake.{fmt}").write_bytes(data)
    source = make_source(fmt, None, urls=[f"{base}/fake.{fmt}"], checksum=False)
    dl = tmp_path / "downloads"
    got = registry.fetch(source, [], dl)
    sha = hashlib.sha256(data).hexdigest()
    record = dl / f"{source.filename}.sha256"
    assert listing(dl) == sorted([source.filename, record.name])
    assert record.read_text() == f"{sha}  {source.filename}\n"
    assert registry.recorded_sha256(source, got) == sha  # what the data manifest pins
    assert registry.fetch(source, [], dl) == got  # later uses match the record
    # the origin now serves other bytes: a fresh download is refused, nothing kept
    got.unlink()
    (folder / f"fake.{fmt}").write_bytes(changed)
    with pytest.raises(ChecksumMismatch) as err:
        registry.fetch(source, [], dl)
    assert f"expected sha256 {sha} (recorded at first use" in str(err.value)
    assert f"actual {hashlib.sha256(changed).hexdigest()}" in str(err.value)
    assert listing(dl) == [record.name]
    # a local copy that changed after its first use is refused too
    got.write_bytes(changed)
    with pytest.raises(ChecksumMismatch, match=f"expected sha256 {sha}"):
        registry.fetch(source, [], dl)


@pytest.mark.trust(kind="archives")
@pytest.mark.parametrize("fmt", FORMATS)
def test_first_use_refuses_a_file_that_does_not_read_in_full(origin, tmp_path, fmt):
    """An origin that serves a broken file in full (the right Content-Length) is caught by its format."""
    folder, base = origin
    data = payload(fmt)
    (folder / f"fake.{fmt}").write_bytes(data[: len(data) // 3])
    source = make_source(fmt, None, urls=[f"{base}/fake.{fmt}"], checksum=False)
    dl = tmp_path / "downloads"
    with pytest.raises(DatasetError, match=re.escape(str(dl / source.filename))):
        registry.fetch(source, [], dl)
    assert listing(dl) == []


@pytest.mark.trust(kind="archives")
def test_prefix_checksum_is_checked_then_the_full_hash_recorded(origin, tmp_path):
    folder, base = origin
    data = payload("pt")
    sha = hashlib.sha256(data).hexdigest()
    (folder / f"weights-{sha[:8]}.pth").write_bytes(data)
    source = Source("weights", f"weights-{sha[:8]}.pth", (f"{base}/weights-{sha[:8]}.pth",), "pth",
                    checksum=Checksum("sha256", sha[:8], "the file name", prefix=True), note="prefix only")
    dl = tmp_path / "downloads"
    registry.fetch(source, [], dl)
    assert (dl / f"{source.filename}.sha256").read_text().split()[0] == sha
    wrong = dataclasses.replace(source, checksum=Checksum("sha256", "deadbeef", "the file name", prefix=True))
    with pytest.raises(ChecksumMismatch, match=f"expected a sha256 starting deadbeef .* actual {sha}"):
        registry.fetch(wrong, [], tmp_path / "other")
    assert listing(tmp_path / "other") == []


# --- the mirror is never written ----------------------------------------------------------------

def test_mirror_is_never_written(origin, tmp_path, monkeypatch):
    _, base = origin
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sources = []
    for fmt in FORMATS:
        data = payload(fmt)
        for checksum in (True, False):
            source = make_source(fmt, data, urls=[f"{base}/none"], checksum=checksum)
            source = dataclasses.replace(source, name=f"{source.name}-{checksum}",
                                         filename=f"{'pub' if checksum else 'tofu'}.{fmt}")
            (mirror / source.filename).write_bytes(data)
            sources.append(source)
    os.utime(mirror, ns=(1, 1))
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in [mirror, *mirror.iterdir()]}
    monkeypatch.setenv(registry.MIRROR_ENV, str(mirror))
    dl = tmp_path / "downloads"
    for source in sources:
        assert registry.fetch(source, [], dl) == mirror / source.filename
        assert registry.fetch(source, [], dl) == mirror / source.filename  # again: the record matches
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in [mirror, *mirror.iterdir()]}
    assert after == before
    # first-use records go to the download folder, never beside the mirror copy
    assert listing(dl) == sorted(f"tofu.{fmt}.sha256" for fmt in FORMATS)

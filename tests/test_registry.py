"""Dataset registry: verification, safe reading, mirror lookup and a served download on 127.0.0.1.

Every archive here is fabricated by the test: a GitHub-style ``<top>/`` folder of small PNGs.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsood.datasets import registry
from fsood.datasets.images import decode, decode_all
from fsood.datasets.registry import (
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


def make_tar(path: Path, files: dict[str, bytes], top: str = TOP, mtime: int = 0, extra_members=()) -> Path:
    """A tar.gz with ``top/<name>`` members; ``extra_members`` are raw TarInfo (links, bad names)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
        for info in extra_members:
            tar.addfile(info)
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=mtime))
    return path


def tree_hash(files: dict[str, bytes]) -> str:
    """The README's definition, written out: ``sha256sum`` lines sorted bytewise by path."""
    names = sorted((n for n in files if n.startswith("train/")), key=str.encode)
    lines = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in names)
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.fixture
def good(tmp_path) -> tuple[Source, Path]:
    (tmp_path / "origin").mkdir()
    archive = make_tar(tmp_path / "origin" / "fake.tar.gz", {**FILES, **EXTRA})
    source = Source("fake", "fake.tar.gz", ("http://127.0.0.1:1/none",), "tar.gz", TOP, ("train",),
                    archive_sha256=registry.file_sha256(archive), tree_sha256=tree_hash(FILES))
    return source, archive


def test_verify_accepts_archive_hash_and_tree_hash_of_a_regzipped_copy(good, tmp_path):
    source, archive = good
    assert registry.verify(source, archive) == "archive sha256"
    regzipped = make_tar(tmp_path / "regz.tar.gz", {**FILES, **EXTRA}, mtime=12345)  # other bytes, same content
    assert registry.file_sha256(regzipped) != source.archive_sha256
    assert registry.verify(source, regzipped) == "tree sha256"
    assert registry.tree_sha256(source, archive) == source.tree_sha256
    read = dict(registry.iter_members(source, archive))
    assert read == FILES  # README.md is not a data member


def test_tampered_archive_is_refused_naming_file_and_hashes(good, tmp_path):
    source, _ = good
    tampered_files = dict(FILES, **{"train/a/0.png": _png(77)})
    tampered = make_tar(tmp_path / "tampered.tar.gz", tampered_files)
    with pytest.raises(ChecksumMismatch) as err:
        registry.verify(source, tampered)
    msg = str(err.value)
    assert "tampered.tar.gz" in msg and source.tree_sha256 in msg and tree_hash(tampered_files) in msg


def test_truncated_archive_is_refused(good, tmp_path):
    source, archive = good
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ChecksumMismatch, match=r"cut\.tar\.gz: not a readable tar\.gz archive"):
        registry.verify(source, cut)


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member, problem",
    [
        (tarfile.TarInfo(f"{TOP}/train/../../escape.png"), "contains '..'"),
        (tarfile.TarInfo("/etc/fsood-owned.png"), "absolute path"),
        (_link(f"{TOP}/train/a/link.png", "/etc/passwd"), "is a link"),
        (_link(f"{TOP}/train/a/hard.png", f"{TOP}/train/a/0.png", tarfile.LNKTYPE), "is a link"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink"],
)
def test_unsafe_members_refuse_the_whole_archive(good, tmp_path, member, problem):
    source, _ = good
    bad = make_tar(tmp_path / "bad.tar.gz", FILES, extra_members=[member])
    with pytest.raises(UnsafeArchive, match=problem):
        list(registry.iter_members(source, bad))
    dest = tmp_path / "extracted"
    with pytest.raises(UnsafeArchive):
        registry.extract(source, bad, dest)
    assert not dest.exists() and not list(tmp_path.glob(".extracted*"))  # nothing half-written
    assert not (tmp_path / "escape.png").exists()


def test_extract_writes_only_data_members(good, tmp_path):
    source, archive = good
    dest = registry.extract(source, archive, tmp_path / "out")
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.png")) == sorted(FILES)
    assert not (dest / "README.md").exists()


# --- lookup: mirrors, download folder, origin ---------------------------------------------

def test_mirror_copy_is_used_in_place_and_never_written(good, tmp_path, monkeypatch):
    source, archive = good
    mirror = archive.parent
    before = {p: p.stat().st_mtime_ns for p in mirror.iterdir()}
    monkeypatch.setenv(registry.MIRROR_ENV, str(mirror))
    got = registry.fetch(source, [], tmp_path / "downloads")
    assert got == mirror / "fake.tar.gz"
    assert {p: p.stat().st_mtime_ns for p in mirror.iterdir()} == before
    assert not (tmp_path / "downloads").exists()


def test_params_mirror_absent_is_skipped_but_env_mirror_absent_is_an_error(good, tmp_path, monkeypatch):
    source, archive = good
    monkeypatch.delenv(registry.MIRROR_ENV, raising=False)
    got = registry.fetch(source, [tmp_path / "no-such-mirror", archive.parent], tmp_path / "dl")
    assert got == archive
    monkeypatch.setenv(registry.MIRROR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match=r"FSOOD_MIRROR names .*missing.*not an existing folder"):
        registry.fetch(source, [], tmp_path / "dl")


def test_bad_mirror_copy_is_an_error_not_a_silent_fallback(good, tmp_path, monkeypatch):
    source, _ = good
    mirror = tmp_path / "badmirror"
    mirror.mkdir()
    make_tar(mirror / "fake.tar.gz", dict(FILES, **{"train/b/2.png": b"garbage"}))
    monkeypatch.setenv(registry.MIRROR_ENV, str(mirror))
    with pytest.raises(ChecksumMismatch, match="badmirror/fake.tar.gz"):
        registry.fetch(source, [], tmp_path / "dl")


class _Server:
    """Serve ``routes`` {path: bytes | (status, headers, bytes)} on 127.0.0.1; count requests."""

    def __init__(self, routes: dict):
        self.routes, self.hits = routes, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                status, headers, body = route if isinstance(route, tuple) else (200, {}, route)
                self.send_response(status)
                headers = {"Content-Length": str(len(body)), **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server({})
    yield srv
    srv.close()


def test_download_from_origin_end_to_end(good, tmp_path, monkeypatch, server):
    source, _ = good
    monkeypatch.delenv(registry.MIRROR_ENV, raising=False)
    # the origin re-gzips on demand (as GitHub does): other bytes, same tree
    served = make_tar(tmp_path / "served.tar.gz", {**FILES, **EXTRA}, mtime=999).read_bytes()
    server.routes["/archive/fake.tar.gz"] = served
    src = dataclasses.replace(source, urls=(f"{server.url}/missing.tar.gz", f"{server.url}/archive/fake.tar.gz"))
    dl = tmp_path / "downloads"
    got = registry.fetch(src, [tmp_path / "no-mirror"], dl)
    assert got == dl / "fake.tar.gz" and got.read_bytes() == served
    assert server.hits == ["/missing.tar.gz", "/archive/fake.tar.gz"]  # 404 first, then the next origin
    assert sorted(p.name for p in dl.iterdir()) == ["fake.tar.gz"]  # no temp file left
    assert dict(registry.iter_members(src, got)) == FILES
    registry.fetch(src, [], dl)  # second call: the verified download, no new request
    assert len(server.hits) == 2


@pytest.mark.parametrize("case", ["wrong_checksum", "truncated_transfer", "not_found"])
def test_failed_download_leaves_nothing(good, tmp_path, monkeypatch, server, case):
    source, archive = good
    monkeypatch.delenv(registry.MIRROR_ENV, raising=False)
    body = archive.read_bytes()
    if case == "wrong_checksum":
        server.routes["/f.tar.gz"] = make_tar(tmp_path / "x.tar.gz", dict(FILES, **{"train/a/1.png": b"x"})).read_bytes()
        expected = (ChecksumMismatch, "checksum mismatch for fake")
    elif case == "truncated_transfer":  # the server promises more bytes than it sends
        server.routes["/f.tar.gz"] = (200, {"Content-Length": str(len(body) + 1000)}, body)
        expected = (DatasetError, "could not be downloaded")
    else:
        expected = (DatasetError, r"f\.tar\.gz: HTTP Error 404")
    src = dataclasses.replace(source, urls=(f"{server.url}/f.tar.gz",))
    dl = tmp_path / "downloads"
    with pytest.raises(expected[0], match=expected[1]):
        registry.fetch(src, [], dl)
    assert not dl.exists() or not list(dl.iterdir())


# --- decoding -------------------------------------------------------------------------------

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


def test_unknown_source_names_the_registered_ones():
    with pytest.raises(DatasetError, match=r"unknown dataset source 'svhn'.*cifar10-jpg"):
        registry.get_source("svhn")

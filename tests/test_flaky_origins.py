"""Origins that misbehave as real ones do, served on 127.0.0.1 by tests/fileserver.py.

The cases of issue 24: a connection dropped half-way (resumed by a range request, within a run
and across runs), 429 / 5xx then 200 (retried with doubling waits, ``Retry-After`` honoured),
an HTML page with status 200 (refused naming host, status and what to do; never a checksum
mismatch), Google Drive's confirmation page (followed) and quota page (refused with advice),
several origins each verified against the same checksum, and a source without a published
digest saying so in every log line. Each ends in the right file or the exact message, with
nothing under the file's own name unless verified. The 200 MB figure: benchmarks/resume_download.py.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT
from fileserver import DRIVE_UUID, QUOTA_TEXT, serve
from test_downloads import fast_retry, listing, make_source, payload, served  # noqa: F401 (fixtures)
from test_registry import TOP, tar_bytes

from fsood.datasets import registry, transfer
from fsood.datasets.registry import Checksum, ChecksumMismatch, DatasetError, HostRefused, Source

SIZE = 300_000  # body bytes of the fabricated member: the tar is a little larger
trust = pytest.mark.trust(kind="unreliable_origins")


def archive(seed: int = 0) -> bytes:
    """A plain tar of one incompressible member: every byte counts, and a splice of two would not read alike."""
    return tar_bytes({"train/a/blob.bin": np.random.default_rng(seed).bytes(SIZE)}, gz=False)


def tar_source(data: bytes | None, urls, name: str = "fake") -> Source:
    """``data``'s published sha256, or none (trust on first use: its hash is recorded)."""
    checksum = Checksum("sha256", hashlib.sha256(data).hexdigest(), "the test") if data is not None else None
    return Source(name, "fake.tar", tuple(urls), "tar", TOP, ("train",), checksum=checksum,
                  note="" if data is not None else "no digest is published anywhere")


def no_copy(source: Source, dl, *errors: str) -> str:
    """The whole message of a fetch that found no copy: each origin's error, then what to do."""
    return (f"{registry.described(source)}: {source.filename} is in no mirror (searched: none) and could not be "
            f"downloaded: {'; '.join(errors)}. Wait and rerun (a cut download resumes), set FSOOD_MIRROR to a folder "
            f"that holds {source.filename}, or save the file by hand (e.g. from a browser) as {dl / source.filename}")


def gets(requests, route: str) -> list[dict]:
    return [r for r in requests if r["path"].startswith(route)]


# --- 1. a connection dropped half-way: resumed, never started over ---------------------------------

@trust
def test_a_dropped_connection_resumes_where_it_stopped(served, tmp_path, caplog):
    folder, base, requests = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    cuts = [len(data) // 3, 2 * len(data) // 3]
    url = f"{base}/cuts/{cuts[0]},{cuts[1]}/fake.tar"
    dl = tmp_path / "dl"
    caplog.set_level(logging.INFO, logger="fsood")
    got = registry.fetch(tar_source(data, [url]), [], dl)
    assert got.read_bytes() == data and listing(dl) == ["fake.tar"]
    sent = gets(requests, "/cuts/")
    assert [r["range"] for r in sent] == [None, f"bytes={cuts[0]}-", f"bytes={cuts[1]}-"]
    assert [r["sent"] for r in sent] == [cuts[0], cuts[1] - cuts[0], len(data) - cuts[1]]
    assert sum(r["sent"] for r in sent) == len(data)  # not a byte twice
    assert (f"fake: {url}: transfer ended after {cuts[0]} of {len(data)} bytes; retrying in 0 s (attempt 2 of 3)"
            in caplog.messages)
    # without a terminal, the log says what the bar would: the size at the start, bytes and rate at the end
    start = f"fake: downloading {url} ({len(data)} bytes, resuming at byte {cuts[1]}) into {dl}/fake.tar.part"
    assert start in caplog.messages
    assert any(re.fullmatch(rf"fake: {re.escape(url)} complete: {len(data) - cuts[1]} bytes received in [\d.]+ s "
                            rf"\([\d.]+ MB/s\)", m) for m in caplog.messages)


@trust
def test_a_rerun_resumes_the_part_a_stopped_run_left(served, tmp_path, monkeypatch):
    """One try per run, as when snakemake is stopped: each run keeps what it got, the last one finishes."""
    folder, base, requests = served
    monkeypatch.setattr(transfer, "RETRY", transfer.Retry(attempts=1))
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    cuts = [len(data) // 3, 2 * len(data) // 3]
    url = f"{base}/cuts/{cuts[0]},{cuts[1]}/fake.tar"
    source, dl = tar_source(data, [url]), tmp_path / "dl"
    part = dl / "fake.tar.part"
    for cut in cuts:
        with pytest.raises(DatasetError) as err:
            registry.fetch(source, [], dl)
        assert str(err.value) == no_copy(source, dl, (
            f"{url}: gave up after 1 attempt (last: transfer ended after {cut} of {len(data)} bytes); {cut} bytes "
            f"are kept in {part} and a rerun resumes from there"))
        assert listing(dl) == ["fake.tar.part", "fake.tar.part.json"] and part.read_bytes() == data[:cut]
    assert registry.fetch(source, [], dl).read_bytes() == data
    assert listing(dl) == ["fake.tar"]
    assert sum(r["sent"] for r in requests) == len(data)


@trust
def test_a_run_killed_mid_transfer_is_resumed_by_the_next(served, tmp_path):
    """SIGKILL, as when a job is killed: the .part holds what reached the disk, and the rerun asks for the rest."""
    folder, base, requests = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    stall = len(data) // 2
    url, dl = f"{base}/stall/{stall}/fake.tar", tmp_path / "dl"
    source = tar_source(data, [url])
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom fsood.datasets import registry\n"
        "source = registry.Source('fake', 'fake.tar', (sys.argv[1],), 'tar', sys.argv[2], ('train',), "
        "checksum=registry.Checksum('sha256', sys.argv[3], 'the test'))\n"
        "registry.fetch(source, [], sys.argv[4])\n"), url, TOP, source.checksum.value, str(dl)])
    part = dl / "fake.tar.part"
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < stall) and time.monotonic() < deadline:
        time.sleep(0.05)
    child.kill()
    assert child.wait(timeout=10) == -9
    assert part.read_bytes() == data[:stall] and not (dl / "fake.tar").exists()
    assert registry.fetch(source, [], dl).read_bytes() == data
    assert [r["range"] for r in requests] == [None, f"bytes={stall}-"]
    assert sum(r["sent"] for r in requests) == len(data)


@trust
def test_a_file_changed_between_runs_is_fetched_whole_not_spliced(served, tmp_path, monkeypatch):
    """If-Range: the .part's validator no longer matches, so the host sends the new file whole."""
    folder, base, requests = served
    monkeypatch.setattr(transfer, "RETRY", transfer.Retry(attempts=1))
    old, new = archive(0), archive(1)
    (folder / "fake.tar").write_bytes(old)
    url = f"{base}/cuts/{len(old) // 2}/fake.tar"
    source, dl = tar_source(None, [url]), tmp_path / "dl"  # no digest: only the format check would catch a splice
    with pytest.raises(DatasetError, match="transfer ended after") as err:
        registry.fetch(source, [], dl)
    assert str(err.value).startswith("fake (no published digest: its sha256 is recorded at first use): fake.tar is in")
    (folder / "fake.tar").write_bytes(new)  # a new ETag
    assert registry.fetch(source, [], dl).read_bytes() == new
    assert [r["status"] for r in requests] == [200, 200] and requests[1]["range"] == f"bytes={len(old) // 2}-"


@trust
def test_a_resumed_copy_that_fails_its_check_is_fetched_whole_once_more(served, tmp_path, monkeypatch, caplog):
    """The .part of one origin, continued from another that serves other bytes: caught, redone whole."""
    folder, base, requests = served
    monkeypatch.setattr(transfer, "RETRY", transfer.Retry(attempts=1))
    old, new = archive(0), archive(1)
    (folder / "old.tar").write_bytes(old)
    (folder / "fake.tar").write_bytes(new)
    first, second = f"{base}/cuts/{len(old) // 2}/old.tar", f"{base}/fake.tar"
    dl = tmp_path / "dl"
    caplog.set_level(logging.WARNING, logger="fsood")
    assert registry.fetch(tar_source(new, [first, second]), [], dl).read_bytes() == new
    assert [(r["path"], r["range"]) for r in requests] == [
        (f"/cuts/{len(old) // 2}/old.tar", None), ("/fake.tar", f"bytes={len(old) // 2}-"), ("/fake.tar", None)]
    assert any("put together from 2 pieces, fails its check" in m and "downloading it whole once more" in m
               for m in caplog.messages)
    assert listing(dl) == ["fake.tar"]


@trust
def test_a_part_longer_than_the_file_is_started_over(served, tmp_path):
    """A 416 (the range starts past the end): the .part is not this file's; it is emptied and fetched again."""
    folder, base, requests = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    dl = tmp_path / "dl"
    dl.mkdir()
    (dl / "fake.tar.part").write_bytes(data + b"stale bytes")  # no .part.json: nothing says where it came from
    assert registry.fetch(tar_source(data, [f"{base}/fake.tar"]), [], dl).read_bytes() == data
    assert [(r["range"], r["status"]) for r in requests] == [(f"bytes={len(data) + 11}-", 416), (None, 200)]
    assert listing(dl) == ["fake.tar"]


@trust
def test_the_progress_bar_shows_size_resumed_bytes_and_rate(served, tmp_path, monkeypatch):
    folder, base, _ = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    shown, bars, tqdm = io.StringIO(), [], transfer.tqdm

    def bar(**kwargs):  # as on a terminal, into a buffer
        bars.append(kwargs)
        return tqdm(**{**kwargs, "file": shown, "disable": False, "mininterval": 0})

    monkeypatch.setattr(transfer, "tqdm", bar)
    registry.fetch(tar_source(data, [f"{base}/cuts/{len(data) // 2}/fake.tar"]), [], tmp_path / "dl")
    assert [(b["total"], b["initial"], b["unit"]) for b in bars] == [(len(data), 0, "B"),
                                                                      (len(data), len(data) // 2, "B")]
    text = shown.getvalue()
    assert f"{len(data) / 1000:.0f}k/{len(data) / 1000:.0f}k" in text and "B/s" in text  # size, rate


# --- 2. 429 and 5xx: retried with doubling waits; too long a wait, or too many: refused ---------------

@trust
def test_429_then_200_is_retried_and_ends_in_the_file(served, tmp_path, caplog):
    folder, base, requests = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    url = f"{base}/status/429x1/fake.tar"
    caplog.set_level(logging.WARNING, logger="fsood")
    assert registry.fetch(tar_source(data, [url]), [], tmp_path / "dl").read_bytes() == data
    assert [r["status"] for r in requests] == [429, 200]
    host = base.removeprefix("http://")
    assert caplog.messages == [f"fake: {url}: {host} answered HTTP 429 (Too Many Requests); retrying in 0 s "
                               f"(attempt 2 of 3)"]


def test_waits_double_and_retry_after_is_honoured(served, tmp_path, monkeypatch):
    default = transfer.Retry()  # what a user gets: 5 tries, 2 4 8 16 s apart, at most 60 s
    assert default.attempts == 5 and [default.wait(k) for k in (1, 2, 3, 4, 7)] == [2, 4, 8, 16, 60]
    folder, base, _ = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    slept = []
    monkeypatch.setattr(transfer.time, "sleep", slept.append)
    monkeypatch.setattr(transfer, "RETRY", transfer.Retry(attempts=4, first_wait=1.5, max_wait=60))
    registry.fetch(tar_source(data, [f"{base}/status/503x3/fake.tar"]), [], tmp_path / "a")
    assert slept == [1.5, 3.0, 6.0]
    slept.clear()
    registry.fetch(tar_source(data, [f"{base}/status/429x1r7/fake.tar"]), [], tmp_path / "b")
    assert slept == [7.0]


def refused(served, tmp_path, route: str, kind: type[DatasetError] = HostRefused):
    """Fetch a good file by a ``route`` that refuses; the message, and what it names. Nothing is left behind."""
    folder, base, requests = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    url, dl = f"{base}/{route}", tmp_path / "dl"
    source = tar_source(data, [url])
    with pytest.raises(kind) as err:
        registry.fetch(source, [], dl)
    assert listing(dl) == []
    return str(err.value), (source, dl, url, base.removeprefix("http://"), len(requests))


@trust
def test_429_every_time_is_refused_after_the_last_try(served, tmp_path):
    message, (source, dl, url, host, tries) = refused(served, tmp_path, "status/429x99/fake.tar", DatasetError)
    assert message == no_copy(source, dl, f"{url}: gave up after 3 attempts (last: {host} answered HTTP 429 "
                                          f"(Too Many Requests)); nothing was kept")
    assert tries == 3


@trust
def test_a_retry_after_longer_than_fsood_waits_is_refused_at_once(served, tmp_path):
    message, (source, dl, url, host, tries) = refused(served, tmp_path, "status/503x1r3600/fake.tar")
    assert message == no_copy(source, dl, f"{url}: refused: {host} answered HTTP 503 (Service Unavailable) and asked "
                                          f"to retry after 3600 s (fsood waits at most 60 s)")
    assert tries == 1


# --- 3. a web page with status 200: refused naming host, status, what to do; never a checksum mismatch -----

@trust
@pytest.mark.parametrize("route, content_type", [("page", "text/html"), ("disguised-page", "application/octet-stream")])
def test_a_web_page_with_status_200_is_refused_not_reported_as_a_mismatch(served, tmp_path, route, content_type):
    message, (source, dl, url, host, tries) = refused(served, tmp_path, f"{route}/fake.tar?dl=1")
    assert message == no_copy(source, dl, (
        f"{url}: refused: {host} answered HTTP 200 with a web page (\"Dropbox - Error\") of type {content_type}, not "
        f"the file: the host may be limiting downloads, or the link may have moved"))
    assert tries == 1  # a page is not retried; HostRefused is no ChecksumMismatch


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip", "npy", "mat", "pt"])
def test_a_file_labelled_text_html_by_a_misconfigured_server_is_still_the_file(served, tmp_path, fmt):
    """Only the declared type says HTML, and the first bytes are the format's own: not a page."""
    folder, base, _ = served
    data = payload(fmt)
    (folder / f"fake.{fmt}").write_bytes(data)
    source = make_source(fmt, data, urls=[f"{base}/mislabelled/fake.{fmt}"])
    assert registry.fetch(source, [], tmp_path / "dl").read_bytes() == data


def test_an_http_error_other_than_429_or_5xx_is_final_for_its_url(served, tmp_path):
    message, (source, dl, url, host, tries) = refused(served, tmp_path, "status/403x1/fake.tar")
    assert message == no_copy(source, dl, f"{url}: refused: {host} answered HTTP 403 (Forbidden)")
    assert tries == 1


# --- 4. Google Drive: the confirmation page followed, the quota page refused with advice ---------------

@trust
def test_a_drive_confirmation_page_is_followed_to_the_file(served, tmp_path, caplog):
    folder, base, requests = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    url, dl = f"{base}/drive/fake.tar", tmp_path / "dl"
    caplog.set_level(logging.INFO, logger="fsood")
    assert registry.fetch(tar_source(data, [url]), [], dl).read_bytes() == data
    assert [r["path"] for r in requests] == [
        "/drive/fake.tar", f"/drive-download?id=fake.tar&export=download&confirm=t&uuid={DRIVE_UUID}"]
    host = base.removeprefix("http://")
    assert (f"fake: {host} answered with Google Drive's confirmation page (\"Google Drive - Virus scan warning\"); "
            f"following its download form") in caplog.messages
    assert listing(dl) == ["fake.tar"]


@trust
def test_a_drive_quota_page_is_refused_with_what_to_do(served, tmp_path):
    message, (source, dl, url, host, tries) = refused(served, tmp_path, "drive-quota/fake.tar")
    assert message == no_copy(source, dl, (
        f"{url}: refused: {host} answered HTTP 200 with a web page, Google Drive's quota page (\"{QUOTA_TEXT}\"), not "
        f"the file. Google Drive limits how often a shared file may be downloaded: wait (up to 24 hours) and rerun, "
        f"or open {url} in a browser signed in to Google, save the file as {dl / 'fake.tar'}, and rerun"))
    assert tries == 1


# --- 5. several origins, one checksum; a source without a digest says so everywhere ----------------

@trust
def test_each_origin_is_verified_against_the_same_checksum(served, tmp_path, caplog):
    folder, base, _ = served
    data, other = archive(0), archive(1)
    (folder / "other.tar").write_bytes(other)  # a mirror that serves another version
    (folder / "fake.tar").write_bytes(data)
    dl = tmp_path / "dl"
    caplog.set_level(logging.WARNING, logger="fsood")
    source = tar_source(data, [f"{base}/other.tar", f"{base}/fake.tar"])
    assert registry.fetch(source, [], dl).read_bytes() == data
    assert any(m.startswith(f"fake: {base}/other.tar: refused: {dl / 'fake.tar'}: checksum mismatch")
               and m.endswith("; trying the next origin") for m in caplog.messages)
    # every origin wrong: a ChecksumMismatch naming each
    with pytest.raises(ChecksumMismatch) as err:
        registry.fetch(tar_source(data, [f"{base}/other.tar", f"{base}/other.tar?again"]), [], tmp_path / "dl2")
    assert str(err.value).count(f"actual {hashlib.sha256(other).hexdigest()}") == 2
    assert listing(tmp_path / "dl2") == []


@trust
@pytest.mark.parametrize("name", ["lsun-fix", "tiny-imagenet-200"])
def test_a_registry_source_falls_back_to_its_second_origin(served, tmp_path, monkeypatch, caplog, name):
    """lsun-fix (no digest) and tiny-imagenet-200 have a second public copy: when the first origin
    refuses, the second is tried; a source without a digest says so in every line about it."""
    folder, base, _ = served
    builtin = registry.builtin_sources()[name]
    assert len(builtin.urls) == 2
    data = tar_bytes({"a/0.png": b"x" * 100}, top=builtin.top, gz=False)  # readable, any format check passes
    (folder / builtin.filename).write_bytes(data)
    checksum = None if builtin.checksum is None else Checksum("md5", hashlib.md5(data).hexdigest(), "the test")
    source = Source(builtin.name, builtin.filename, (f"{base}/drive-quota/{builtin.filename}",
                                                     f"{base}/drive/{builtin.filename}"),
                    "tar", builtin.top, builtin.members, checksum=checksum, note=builtin.note)
    dl = tmp_path / "dl"
    caplog.set_level(logging.INFO, logger="fsood")
    assert registry.fetch(source, [], dl).read_bytes() == data
    assert registry.fetch(source, [], dl).read_bytes() == data  # the copy in the download folder
    about = [m for m in caplog.messages if name in m]
    assert len(about) >= 5
    no_digest = "(no published digest: its sha256 is recorded at first use)"
    assert all(no_digest in m for m in about) == (builtin.checksum is None)
    assert any(no_digest in m for m in about) == (builtin.checksum is None)
    assert listing(dl) == sorted([builtin.filename] + ([f"{builtin.filename}.sha256"] if checksum is None else []))


# --- parallel jobs: one downloads, the others wait for its verified copy ---------------------------

def test_a_second_process_waits_for_the_first_and_uses_its_copy(served, tmp_path):
    folder, base, requests = served
    data = archive()
    (folder / "fake.tar").write_bytes(data)
    dl = tmp_path / "dl"
    source = tar_source(data, [f"{base}/fake.tar"])
    got = []
    waiter = threading.Thread(target=lambda: got.append(registry.fetch(source, [], dl)))
    with transfer.claimed(dl / "fake.tar"):  # as another process holds it
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not requests  # it waits, and downloads nothing
        (dl / "fake.tar").write_bytes(data)  # the holder's verified copy, renamed into place
    waiter.join(timeout=10)
    assert got == [dl / "fake.tar"] and not requests and listing(dl) == ["fake.tar"]

def test_the_resume_benchmark_sends_each_byte_once(tmp_path):
    """benchmarks/resume_download.py at 2 MB: its figures add up, and its copy has the published md5."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "resume_download.py"), "--size-mb", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"] and rows[-1][-3:] == ["complete,", "md5", "verified"]
    total = re.search(r"total: (\d+) bytes sent for a (\d+)-byte file .* \(= published\)", proc.stdout)
    assert total and total.group(1) == total.group(2) == rows[-1][3]  # sent once; the .part grew to the file
    assert sum(int(row[2]) for row in rows) == int(total.group(1))

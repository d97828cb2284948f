"""Downloading one URL into a resumable ``.part`` file: range requests, bounded retries, web pages refused.

The origins are university web servers, Dropbox and Google Drive. A 4.4 GB transfer cut at
90 % must not start over, a 429 or a 503 is often gone a minute later, and a host that answers
with a web page (a rate-limit notice, a moved link, Drive's confirmation or quota page) must
be told apart from a corrupt file, which a checksum alone would report.

- The bytes go to ``<dest>.part``, never to ``dest`` (fsood.datasets.fetching verifies the
  complete file, then renames it into place). ``<dest>.part.json`` holds the URL, its
  validator (a strong ETag, else Last-Modified) and the total size. A later attempt, or a later
  run, asks for the rest (``Range: bytes=<have>-``, with ``If-Range`` when the validator came
  from the same URL); a host that answers with the whole file instead (it cannot resume, or
  the file changed) is read again from byte 0.
- Connection errors, transfers cut short, HTTP 429 and 5xx are retried up to
  ``Retry.attempts`` times per URL, waiting ``first_wait`` seconds, doubled each time, at most
  ``max_wait`` (a ``Retry-After`` is honoured; one longer than ``max_wait`` ends the tries at
  once). Other HTTP errors are final for that URL.
- A reply of type text/html, or whose first bytes are HTML, is never written: Google Drive's
  confirmation page is followed through its download form; any other page is refused
  (``HostRefused``) with a message naming the host, the status and what to do
  (fsood.datasets.webpages).
- :func:`claimed` holds an exclusive ``flock`` on the ``.part`` while one process fetches it:
  parallel jobs that need the same file wait, then use the verified copy.
"""
from __future__ import annotations

import contextlib
import email.utils
import fcntl
import http.client
import http.cookiejar
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fsood.io import write_json

from . import webpages
from .errors import DatasetError, HostRefused
from .verify import CHUNK

log = logging.getLogger(__name__)

USER_AGENT = "fsood"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
SNIFF_BYTES = 512        # enough to see an HTML start tag
PAGE_LIMIT = 1 << 20     # bytes of a web page read to find Drive's form or error text
PAGE_HOPS = 2            # Drive pages followed within one attempt (one is the norm)


@dataclass(frozen=True)
class Retry:
    """How often one URL is tried, and how long fsood waits between tries (seconds)."""

    attempts: int = 5
    first_wait: float = 2.0
    max_wait: float = 60.0

    def wait(self, failed: int) -> float:
        """The pause after the ``failed``-th failed attempt: doubling, capped."""
        return min(self.first_wait * 2 ** (failed - 1), self.max_wait)


RETRY = Retry()  # read at call time: tests replace it with one that does not sleep


@dataclass
class Transfer:
    """What one :func:`download` call made: the complete ``.part``, and from how many replies."""

    url: str
    part: Path
    pieces: int = 0  # replies whose bytes make up the .part (1 + each resumption; a whole reply resets it)

    @property
    def resumed(self) -> bool:
        """The file was put together from more than one response."""
        return self.pieces > 1


class _Cut(Exception):
    """A transfer that ended early: retried, its bytes kept."""


def part_paths(dest: Path) -> tuple[Path, Path]:
    """``(<dest>.part, <dest>.part.json)``: the bytes so far, and where they came from."""
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def discard(dest: Path) -> None:
    """Forget a ``.part`` whose bytes are wrong: emptied in place (the inode other processes lock stays)."""
    part, meta = part_paths(dest)
    if part.exists():
        os.truncate(part, 0)
    meta.unlink(missing_ok=True)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def claimed(dest: Path) -> Iterator[None]:
    """Hold ``<dest>.part`` for this process; on exit an empty one is removed (nothing to resume)."""
    part, meta = part_paths(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is downloading it; waiting until it is done", dest)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, part):  # else it was renamed into place while we waited: look again
            break
        os.close(fd)
    try:
        yield
    finally:
        if _same_file(fd, part) and os.fstat(fd).st_size == 0:
            part.unlink()
            meta.unlink(missing_ok=True)
        os.close(fd)


def _reason(err: BaseException) -> str:
    return str(getattr(err, "reason", "") or err) or type(err).__name__


def _read(response, size: int, at_once: bool = False) -> bytes:
    """Up to ``size`` bytes of the body (``at_once``: what has arrived, so the disk keeps up with the
    wire and a killed run loses nothing it received); a connection reset or timeout is a ``_Cut``."""
    try:
        return response.read1(size) if at_once else response.read(size)
    except (OSError, http.client.HTTPException) as err:  # a chunked body cut: IncompleteRead
        raise _Cut(_reason(err)) from None


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _retry_after(headers) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), or None."""
    value = (headers.get("Retry-After") if headers is not None else None) or ""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _length(headers) -> int | None:
    value = headers.get("Content-Length") or ""
    return int(value) if value.isdigit() else None


def _content_range(headers) -> tuple[int, int | None]:
    """``(first byte, total size)`` of a 206 reply's ``Content-Range: bytes a-b/n`` (-1: unreadable)."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (headers.get("Content-Range") or "").strip())
    if match is None:
        return -1, None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _validator(headers) -> str:
    etag = headers.get("ETag") or ""
    return etag if etag and not etag.startswith("W/") else headers.get("Last-Modified") or ""


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _bar(total: int | None, initial: int, name: str) -> tqdm:
    """Size, bytes so far and rate; off when stderr is not a terminal (the log lines say the same)."""
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=f"download {name}",
                mininterval=1.0, disable=None)


class _Download:
    def __init__(self, url: str, dest: Path, label: str, timeout: float):
        self.url, self.dest, self.label, self.timeout = url, dest, label, timeout
        self.part, self.meta_path = part_paths(dest)
        self.transfer = Transfer(url, self.part, pieces=1 if _size(self.part) else 0)
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def run(self, retry: Retry) -> Transfer:
        problem = ""
        for attempt in range(1, retry.attempts + 1):
            asked = None
            try:
                self._once()
                return self.transfer
            except urllib.error.HTTPError as err:
                err.close()
                problem = f"{_host(err.url or self.url)} answered HTTP {err.code} ({err.reason})"
                if err.code == 416 and _size(self.part):  # the .part is longer than the file is now
                    discard(self.dest)
                elif err.code not in RETRY_STATUS:
                    raise HostRefused(f"{self.url}: refused: {problem}") from None
                asked = _retry_after(err.headers)
                if asked is not None and asked > retry.max_wait:
                    raise HostRefused(f"{self.url}: refused: {problem} and asked to retry after {asked:.0f} s "
                                      f"(fsood waits at most {retry.max_wait:.0f} s)") from None
            except _Cut as err:
                problem = str(err)
            if attempt < retry.attempts:
                wait = asked if asked is not None else retry.wait(attempt)
                log.warning("%s: %s: %s; retrying in %.0f s (attempt %d of %d)", self.label, self.url, problem,
                            wait, attempt + 1, retry.attempts)
                time.sleep(wait)
        have = _size(self.part)
        kept = f"{have} bytes are kept in {self.part} and a rerun resumes from there" if have else "nothing was kept"
        tries = f"{retry.attempts} attempt{'s' if retry.attempts > 1 else ''}"
        raise DatasetError(f"{self.url}: gave up after {tries} (last: {problem}); {kept}")

    def _open(self, url: str, have: int):
        """The reply to a GET of ``url`` (from byte ``have``); an HTTP error status raises ``HTTPError``,
        a network failure ``_Cut`` (a full disk, an ``OSError`` of the .part, is not retried)."""
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            meta = _read_meta(self.meta_path)
            if meta.get("url") == self.url and meta.get("validator"):
                headers["If-Range"] = meta["validator"]  # a changed file comes whole, not as a wrong tail
        try:
            return self.opener.open(urllib.request.Request(url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError:
            raise
        except (OSError, http.client.HTTPException) as err:  # URLError, reset, timeout
            raise _Cut(_reason(err)) from None

    def _once(self) -> None:
        """One attempt: a request, Drive's confirmation page followed if it comes, the body appended."""
        have = _size(self.part)
        meta = _read_meta(self.meta_path)
        if have and meta.get("url") == self.url and meta.get("size") == have:
            log.info("%s: %s holds all %d bytes already", self.label, self.part, have)  # a run killed before the check
            return
        target = self.url
        for hop in range(PAGE_HOPS + 1):
            with self._open(target, have) as response:
                content_type = response.headers.get_content_type()
                if response.status == 206:  # a ranged body starts mid-file: only its type can say "page"
                    start, total = _content_range(response.headers)
                    head = b""
                else:
                    start, total, head = 0, _length(response.headers), _read(response, SNIFF_BYTES)
                if not webpages.looks_like_html(content_type, head):
                    self._body(response, start, total, head)
                    return
                page = webpages.read_page((head + _read(response, PAGE_LIMIT)).decode("utf-8", "replace"),
                                          response.url)
                if page.confirm_url is None or hop == PAGE_HOPS:
                    raise HostRefused(webpages.refusal(self.url, _host(response.url), response.status,
                                                       content_type, page, str(self.dest)))
                log.info("%s: %s answered with Google Drive's confirmation page (\"%s\"); following its "
                         "download form", self.label, _host(response.url), page.title)
                target = page.confirm_url

    def _body(self, response, start: int, total: int | None, head: bytes) -> None:
        have = _size(self.part)
        if start not in (0, have):  # 0: the whole file, whatever was asked for
            raise _Cut(f"{_host(response.url)} sent bytes from {start}, not from {have}")
        if start == 0 and have:
            log.info("%s: %s sent the whole file, not the rest from byte %d (it cannot resume, or the file "
                     "changed): starting again from byte 0", self.label, _host(response.url), have)
        self.transfer.pieces = self.transfer.pieces + 1 if start else 1
        meta = {"url": self.url, "validator": _validator(response.headers), "size": total}
        if _read_meta(self.meta_path) != meta:
            write_json(self.meta_path, meta)
        log.info("%s: downloading %s (%s bytes%s) into %s", self.label, self.url, total or "unknown number of",
                 f", resuming at byte {start}" if start else "", self.part)
        began, received = time.monotonic(), 0
        with open(self.part, "ab" if start else "wb") as out, _bar(total, start, self.dest.name) as bar:
            try:
                chunk = head or _read(response, CHUNK, at_once=True)
                while chunk:
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    chunk = _read(response, CHUNK, at_once=True)
            except _Cut as err:
                raise _Cut(f"transfer ended after {start + received} of {total or '?'} bytes ({err})") from None
            finally:
                out.flush()
                os.fsync(out.fileno())  # what a killed run leaves is what the next one resumes from
        if total is not None and start + received < total:
            raise _Cut(f"transfer ended after {start + received} of {total} bytes")
        seconds = max(time.monotonic() - began, 1e-9)
        log.info("%s: %s complete: %d bytes received in %.1f s (%.1f MB/s)", self.label, self.url, received,
                 seconds, received / seconds / 1e6)


def download(url: str, dest: str | Path, label: str = "", timeout: float = 60.0,
             retry: Retry | None = None) -> Transfer:
    """Fetch ``url`` into ``<dest>.part`` (resuming what it holds); return once it is complete.

    ``label`` names the source in log lines. Raises ``HostRefused`` (a web page, an HTTP error
    other than 429 / 5xx, a long ``Retry-After``) or ``DatasetError`` (every attempt failed; the
    bytes so far stay in the ``.part``). Callers that run in parallel hold :func:`claimed` around it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _Download(url, dest, label or dest.name, timeout).run(retry or RETRY)

"""A small threaded HTTP server for tests: the files of a folder, on 127.0.0.1, and the faults of real hosts.

Usage::

    from fileserver import serve

    with serve(folder) as base_url:          # "http://127.0.0.1:<free port>"
        urllib.request.urlopen(f"{base_url}/a/b.tar.gz")

``serve(folder, requests=log)`` is a context manager: it starts the server on a free port in a
daemon thread, yields the base URL (no trailing slash) and shuts the server down on exit. Files
are read at request time, so a test may change them while the server runs. With a ``requests``
list, every request is appended to it as ``{"path", "range", "status", "sent"}`` (``sent``: the
body bytes written) before its reply goes out, so a test can count what went over the wire.

Routes (GET; HEAD answers the same headers without a body):

- ``/<path>``: the file ``folder/<path>`` (200, ``Content-Length``, ``application/octet-stream``,
  ``ETag``); ``Range: bytes=N-`` gets 206 with the rest (``If-Range`` with another ETag gets the
  whole file, 200), a start at or past the end 416;
- ``/redirect/<path>``: 302 to ``/<path>`` (an origin that moved; clients must follow it);
- ``/truncate/<path>``: sends the full ``Content-Length`` header of ``folder/<path>`` but only
  the first half of its bytes, then closes the connection, whatever the ``Range`` (a transfer
  cut short by a host that cannot resume);
- ``/cuts/<o1>,<o2>,.../<path>``: like ``/<path>`` (ranges honoured), but the n-th request of
  this route closes the connection once byte ``o_n`` of the file is sent; requests after the
  last cut are served in full (a connection dropped twice, then fine);
- ``/stall/<o1>,.../<path>``: like ``/cuts/``, but the connection stays open, silent, for
  ``STALL_SECONDS`` before it is closed (a client can be killed mid-transfer);
- ``/status/<code>x<n>[r<s>]/<path>``: the first ``n`` requests of this route answer HTTP
  ``code`` with a small HTML body (with ``Retry-After: <s>`` if ``r<s>`` is given), later ones
  serve the file (a host that rate-limits, then recovers);
- ``/page/<path>``: 200 with an HTML page of type text/html (a host that answers a web page
  instead of the file); ``/disguised-page/<path>``: the same page as application/octet-stream;
  ``/mislabelled/<path>``: the file itself, labelled text/html (a misconfigured server);
- ``/drive/<path>``: Google Drive's "Virus scan warning" page for a large file: 200 text/html
  with a ``download-form`` whose hidden fields lead to ``/drive-download?id=<path>&export=download&confirm=t&uuid=...``,
  which serves the file (ranges honoured), or the page again without ``confirm=t``;
- ``/drive-quota/<path>``: Google Drive's "Quota exceeded" page (200, text/html);
- anything else, a missing file, a folder or a path that leaves ``folder`` (``..``): 404.

Query strings are ignored (``/a.tar.gz?dl=1`` serves ``a.tar.gz``) except by ``/drive-download``,
as Dropbox-style links need. Nothing is logged to stderr.
"""
from __future__ import annotations

import contextlib
import html
import http.server
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

__all__ = ["serve", "DRIVE_UUID", "QUOTA_TEXT", "STALL_SECONDS"]

STALL_SECONDS = 10.0
DRIVE_UUID = "0f1e2d3c-fsood-test"
QUOTA_TEXT = ("Too many users have viewed or downloaded this file recently. Please try accessing the file "
              "again later. If the file you are trying to access is particularly large or is shared with many "
              "people, it may take up to 24 hours to be able to view or download the file.")
_PAGE = "<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>"


def _drive_warning(rel: str) -> bytes:
    """The shape of Drive's confirmation page (drive.usercontent.google.com) for a file it cannot scan."""
    fields = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
                     for k, v in (("id", rel), ("export", "download"), ("confirm", "t"), ("uuid", DRIVE_UUID)))
    body = ('<div class="uc-main"><p class="uc-warning-caption">Google Drive can\'t scan this file for viruses.</p>'
            f'<form id="download-form" action="/drive-download" method="get">'
            f'<input type="submit" id="uc-download-link" value="Download anyway">{fields}</form></div>')
    return _PAGE.format(title="Google Drive - Virus scan warning", body=body).encode()


def _drive_quota() -> bytes:
    body = ('<p class="uc-error-caption">Sorry, you can\'t view or download this file at this time.</p>'
            f'<p class="uc-error-subcaption">{QUOTA_TEXT}</p>')
    return _PAGE.format(title="Google Drive - Quota exceeded", body=body).encode()


def _handler(root: Path, requests: list | None) -> type[http.server.BaseHTTPRequestHandler]:
    seen: dict[str, int] = {}  # route prefix -> requests answered so far (cuts, status)
    lock = threading.Lock()

    def count(key: str) -> int:
        with lock:
            seen[key] = seen.get(key, 0) + 1
            return seen[key]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _file(self, rel: str) -> Path | None:
            path = (root / rel).resolve()
            if rel and path.is_relative_to(root) and path.is_file():
                return path
            return None

        def _log(self, status: int, sent: int) -> None:
            if requests is not None:
                requests.append({"path": self.path, "range": self.headers.get("Range"), "status": status,
                                 "sent": sent})

        def _reply(self, status: int, body: bytes, ctype: str, with_body: bool, headers=()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self._log(status, len(body) if with_body else 0)  # before the client can see the reply
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def _serve_file(self, path: Path, with_body: bool, cut_at: int | None = None, stall: bool = False) -> None:
            body = path.read_bytes()
            stat = path.stat()
            etag = f'"{stat.st_size}-{stat.st_mtime_ns}"'
            start = 0
            wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if wanted and self.headers.get("If-Range", etag) == etag:
                start = int(wanted.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self._log(416, 0)
                    self.end_headers()
                    return
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            if cut_at is not None:
                self.send_header("Connection", "close")
            end = len(body) if cut_at is None else max(cut_at, start)
            self._log(206 if start else 200, end - start if with_body else 0)
            self.end_headers()
            if with_body:
                self.wfile.write(body[start:end])
                self.wfile.flush()
            if cut_at is not None:
                if stall:
                    time.sleep(STALL_SECONDS)
                self.close_connection = True

        def _answer(self, with_body: bool) -> None:
            split = urllib.parse.urlsplit(self.path)
            rel = urllib.parse.unquote(split.path).lstrip("/")
            route, _, rest = rel.partition("/")
            if route == "redirect":
                self.send_response(302)
                self.send_header("Location", "/" + urllib.parse.quote(rest))
                self.send_header("Content-Length", "0")
                self._log(302, 0)
                self.end_headers()
                return
            if route == "drive-download":
                query = urllib.parse.parse_qs(split.query)
                path = self._file(query.get("id", [""])[0])
                if path is not None and query.get("confirm") == ["t"] and query.get("uuid") == [DRIVE_UUID]:
                    self._serve_file(path, with_body)
                elif path is not None:
                    self._reply(200, _drive_warning(query["id"][0]), "text/html; charset=utf-8", with_body)
                else:
                    self._not_found()
                return
            param, _, inner = rest.partition("/")
            if route in ("cuts", "stall", "status"):
                path = self._file(inner)
            else:
                path = self._file(rest if route in ("truncate", "page", "disguised-page", "mislabelled", "drive",
                                                    "drive-quota") else rel)
                inner = ""
            if path is None:
                self._not_found()
                return
            if route in ("cuts", "stall"):
                cuts = [int(c) for c in param.split(",")]
                n = count(f"{route}/{param}/{inner}")
                self._serve_file(path, with_body, cut_at=cuts[n - 1] if n <= len(cuts) else None,
                                 stall=route == "stall")
            elif route == "status":
                code, times, retry_after = re.fullmatch(r"(\d+)x(\d+)(?:r(\d+))?", param).groups()
                if count(f"status/{param}/{inner}") <= int(times):
                    page = _PAGE.format(title="Error", body=f"<p>HTTP {code}</p>").encode()
                    self._reply(int(code), page, "text/html; charset=utf-8", with_body,
                                headers=[("Retry-After", retry_after)] if retry_after else [])
                else:
                    self._serve_file(path, with_body)
            elif route in ("page", "disguised-page"):
                page = _PAGE.format(title="Dropbox - Error", body="<p>This link is temporarily disabled.</p>").encode()
                ctype = "text/html; charset=utf-8" if route == "page" else "application/octet-stream"
                self._reply(200, page, ctype, with_body)
            elif route == "mislabelled":
                self._reply(200, path.read_bytes(), "text/html", with_body)
            elif route == "drive":
                self._reply(200, _drive_warning(rest), "text/html; charset=utf-8", with_body)
            elif route == "drive-quota":
                self._reply(200, _drive_quota(), "text/html; charset=utf-8", with_body)
            elif route == "truncate":
                self._truncated(path, with_body)
            else:
                self._serve_file(path, with_body)

        def _truncated(self, path: Path, with_body: bool) -> None:
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self._log(200, len(body) // 2 if with_body else 0)
            self.end_headers()
            if with_body:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
            self.close_connection = True

        def _not_found(self) -> None:
            self._log(404, 0)
            self.send_error(404)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def log_message(self, *args) -> None:
            pass

    return Handler


@contextlib.contextmanager
def serve(folder: str | Path, requests: list | None = None) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) for the ``with`` block; yield the base URL."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"serve: {folder} is not a folder")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, requests))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name=f"fileserver {root}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

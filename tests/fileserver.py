"""A small threaded HTTP server for tests: the files of a folder, on 127.0.0.1.

Usage::

    from fileserver import serve

    with serve(folder) as base_url:          # "http://127.0.0.1:<free port>"
        urllib.request.urlopen(f"{base_url}/a/b.tar.gz")

``serve(folder)`` is a context manager: it starts the server on a free port in a daemon
thread, yields the base URL (no trailing slash) and shuts the server down on exit. Files are
read at request time, so a test may change them while the server runs.

Routes (GET; HEAD answers the same headers without a body):

- ``/<path>``: the file ``folder/<path>`` (200, ``Content-Length``, ``application/octet-stream``);
- ``/redirect/<path>``: 302 to ``/<path>`` (an origin that moved; clients must follow it);
- ``/truncate/<path>``: sends the full ``Content-Length`` header of ``folder/<path>`` but only
  the first half of its bytes, then closes the connection (a transfer cut short);
- anything else, a missing file, a folder or a path that leaves ``folder`` (``..``): 404.

Query strings are ignored (``/a.tar.gz?dl=1`` serves ``a.tar.gz``), as Dropbox-style links
need. Nothing is logged to stderr.
"""
from __future__ import annotations

import contextlib
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

__all__ = ["serve"]


def _handler(root: Path) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _file(self, rel: str) -> Path | None:
            path = (root / rel).resolve()
            if rel and path.is_relative_to(root) and path.is_file():
                return path
            return None

        def _answer(self, with_body: bool) -> None:
            rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            route, _, rest = rel.partition("/")
            if route == "redirect":
                self.send_response(302)
                self.send_header("Location", "/" + urllib.parse.quote(rest))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            truncate = route == "truncate"
            path = self._file(rest if truncate else rel)
            if path is None:
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            if truncate:
                self.send_header("Connection", "close")
            self.end_headers()
            if with_body:
                self.wfile.write(body[: len(body) // 2] if truncate else body)
                self.wfile.flush()
            if truncate:
                self.close_connection = True

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def log_message(self, *args) -> None:
            pass

    return Handler


@contextlib.contextmanager
def serve(folder: str | Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) for the ``with`` block; yield the base URL."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"serve: {folder} is not a folder")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root))
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

"""Telling a web page from the file asked for, and reading Google Drive's pages.

Hosts answer a download with a web page more often than with an error status: Dropbox when a
link is rate-limited or moved, Google Drive for every file too large to scan for viruses (a
confirmation page whose form leads to the file) and for a file whose download quota is used
up. Hashed, such a page would be reported as a checksum mismatch, which points the user at the
wrong problem; fsood.datasets.transfer refuses it before a byte is written, with the message
:func:`refusal` composes, or follows Drive's confirmation form (:func:`read_page`).
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser

HTML_TYPES = ("text/html", "application/xhtml+xml")
# first bytes of an HTML document; none of the registry's formats (gzip, tar, zip, npy, mat,
# torch zip) can start with "<"
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<meta", b"<title", b"<script")


# first bytes of the registry's formats: gzip, zip (and torch's zip), npy, MATLAB v5, HDF5 (MATLAB v7.3)
_BINARY_STARTS = (b"\x1f\x8b", b"PK\x03\x04", b"\x93NUMPY", b"MATLAB", b"\x89HDF")


def _binary(head: bytes) -> bool:
    return head.startswith(_BINARY_STARTS) or head[257:262] == b"ustar"  # a tar's magic at 257


def looks_like_html(content_type: str, head: bytes) -> bool:
    """Bytes that are HTML, or a reply declared as HTML whose first bytes are not one of the data
    formats (a server that labels a .tar.gz text/html is misconfigured, not refusing)."""
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS):
        return True
    return content_type.lower() in HTML_TYPES and not _binary(head)


@dataclass
class Page:
    """What fsood reads from a web page: its title, Drive's download link or form, Drive's error text."""

    title: str = ""
    confirm_url: str | None = None  # where Drive's "download anyway" form or link leads
    error: str = ""                  # Drive's uc-error-subcaption (the quota text)
    is_drive: bool = False


class _Reader(HTMLParser):
    def __init__(self, base_url: str):
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.page = Page()
        self._in = ""                 # "title", "error" or "": which text is being collected
        self._form_action: str | None = None
        self._fields: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "title":
            self._in = "title"
        elif tag == "p" and "uc-error-subcaption" in (a.get("class") or "").split():
            self._in = "error"
        elif tag == "form" and a.get("id") == "download-form":  # Drive since 2024: a GET form
            self._form_action = a.get("action") or ""
        elif tag == "input" and self._form_action is not None and a.get("type") == "hidden" and a.get("name"):
            self._fields.append((a["name"], a.get("value") or ""))
        elif tag == "a" and a.get("id") == "uc-download-link" and a.get("href"):  # Drive before 2024
            self.page.confirm_url = urllib.parse.urljoin(self.base_url, a["href"])

    def handle_endtag(self, tag):
        if tag == "form" and self._form_action is not None:
            action = urllib.parse.urljoin(self.base_url, self._form_action)
            query = urllib.parse.urlencode(self._fields)
            self.page.confirm_url = f"{action}{'&' if '?' in action else '?'}{query}"
            self._form_action = None
        if tag in ("title", "p"):
            self._in = ""

    def handle_data(self, data):
        if self._in == "title":
            self.page.title += data
        elif self._in == "error":
            self.page.error += data


def read_page(text: str, base_url: str) -> Page:
    """The parts of ``text`` (an HTML page fetched from ``base_url``) that fsood acts on."""
    reader = _Reader(base_url)
    reader.feed(text)
    reader.close()
    page = reader.page
    page.title, page.error = " ".join(page.title.split()), " ".join(page.error.split())
    if page.confirm_url and not page.confirm_url.startswith(("http://", "https://")):
        page.confirm_url = None
    page.is_drive = page.title.startswith("Google Drive") or page.confirm_url is not None or bool(page.error)
    return page


def refusal(url: str, host: str, status: int, content_type: str, page: Page, dest: str) -> str:
    """Why a web page is not the file, and what the user can do, for each kind of page."""
    answered = f"{url}: refused: {host} answered HTTP {status} with a web page"
    if page.is_drive and (page.error or "quota" in page.title.lower()):
        quoted = page.error or page.title
        return (f"{answered}, Google Drive's quota page (\"{quoted}\"), not the file. Google Drive limits how "
                f"often a shared file may be downloaded: wait (up to 24 hours) and rerun, or open {url} in a "
                f"browser signed in to Google, save the file as {dest}, and rerun")
    if page.is_drive:
        return (f"{answered} (\"{page.title}\") that fsood cannot follow, not the file. Open {url} in a browser, "
                f"save the file as {dest}, and rerun")
    title = f" (\"{page.title}\")" if page.title else ""
    return (f"{answered}{title} of type {content_type}, not the file: the host may be limiting downloads, or the "
            f"link may have moved")

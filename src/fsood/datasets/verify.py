"""Verifying a source's file: published checksum, tree sha256, or trust on first use (fsood.datasets.registry)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .errors import ChecksumMismatch, DatasetError
from .readers import check_readable, iter_members
from .sources import Source

CHUNK = 1 << 20

# --- hashing and verification --------------------------------------------------------------

def file_digests(path: str | Path, algorithms=("sha256",)) -> dict[str, str]:
    """``{algorithm: hex digest}`` of the file, in one pass."""
    hashes = {a: hashlib.new(a, usedforsecurity=False) for a in set(algorithms)}
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def tree_sha256(source: Source, archive: str | Path) -> str:
    """The tree hash over the source's data members (see the module docstring)."""
    lines = []
    for rel, data in iter_members(source, archive):
        lines.append((rel.encode(), f"{hashlib.sha256(data).hexdigest()}  {rel}\n".encode()))
    lines.sort(key=lambda item: item[0])
    return hashlib.sha256(b"".join(line for _, line in lines)).hexdigest()


def record_path(source: Source, download_dir: str | Path) -> Path:
    """Where the sha256 of a source without a full published checksum is recorded at first use."""
    return Path(download_dir) / f"{source.filename}.sha256"


def _read_record(record: Path) -> str:
    token = (record.read_text().split() or [""])[0]
    if not re.fullmatch(r"[0-9a-f]{64}", token):
        raise DatasetError(f"{record}: not a sha256 record (expected '<sha256>  <file name>')")
    return token


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, this process


def check_copy(source: Source, path: Path, record: Path | None) -> tuple[str, str, bool]:
    """``(how it was verified, sha256, whether the sha256 must now be recorded)``, or raise."""
    c = source.checksum
    kind = "archive" if source.is_archive else "file"
    digests = file_digests(path, {"sha256"} | ({c.algorithm} if c else set()))
    sha256 = digests["sha256"]
    full = c is not None and not c.prefix
    if full and digests[c.algorithm] == c.value:
        return f"{kind} {c.algorithm}", sha256, False
    if source.tree_sha256:
        try:
            tree = tree_sha256(source, path)
        except DatasetError as err:  # truncated, corrupt or unsafe
            expected = f"{c.algorithm} {c.value}, actual {digests[c.algorithm]}" if full else f"tree sha256 {source.tree_sha256}"
            raise ChecksumMismatch(f"{err}; expected {kind} {expected}") from err
        if tree == source.tree_sha256:
            return "tree sha256", sha256, False
        raise ChecksumMismatch(
            f"{path}: checksum mismatch for {source.name}: expected tree sha256 {source.tree_sha256}, actual {tree}"
            + (f" ({kind} {c.algorithm} expected {c.value}, actual {digests[c.algorithm]})" if full else "")
        )
    if full:
        raise ChecksumMismatch(
            f"{path}: checksum mismatch for {source.name}: expected {c.algorithm} {c.value} "
            f"(published by {c.published_by}), actual {digests[c.algorithm]}"
        )
    if c is not None and not sha256.startswith(c.value):  # a published prefix
        raise ChecksumMismatch(
            f"{path}: checksum mismatch for {source.name}: expected a sha256 starting {c.value} "
            f"(published by {c.published_by}), actual {sha256}"
        )
    if record is not None and record.is_file():
        recorded = _read_record(record)
        if recorded != sha256:
            raise ChecksumMismatch(
                f"{path}: checksum mismatch for {source.name}: expected sha256 {recorded} (recorded at first "
                f"use in {record}), actual {sha256}. The file changed since; if the new one is right, delete "
                f"the record and update the data manifest"
            )
        return "recorded sha256", sha256, False
    found = check_readable(source, path)
    return f"format check ({found}; no full published checksum)", sha256, True


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def remember_verified(path: Path, sha256: str) -> None:
    _VERIFIED[_key(path)] = sha256


def checked_copy(source: Source, path: Path, record: Path | None) -> tuple[str, str, bool]:
    how, sha256, first_use = check_copy(source, path, record)
    remember_verified(path, sha256)
    return how, sha256, first_use


def verify(source: Source, path: str | Path, record: str | Path | None = None) -> str:
    """Accept ``path`` or raise (``ChecksumMismatch``, ``DatasetError``); return how it was verified.

    ``record``: the first-use sha256 record for a source without a full published checksum
    (default: ``<path>.sha256``). ``verify`` never writes one; ``fetch`` does.
    """
    path = Path(path)
    record = Path(record) if record is not None else path.with_name(path.name + ".sha256")
    return checked_copy(source, path, record)[0]


def recorded_sha256(source: Source, path: str | Path, record: str | Path | None = None) -> str:
    """The sha256 to pin in the DVC-tracked data manifest for the copy at ``path`` (verified first).

    Free after ``fetch`` in the same process (the digest is remembered for that very file).
    """
    path = Path(path)
    known = _VERIFIED.get(_key(path))
    if known is not None:
        return known
    record = Path(record) if record is not None else path.with_name(path.name + ".sha256")
    return checked_copy(source, path, record)[1]

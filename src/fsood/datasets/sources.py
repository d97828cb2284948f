"""Dataset sources: the registry's entries (``sources.yaml``, then ``$FSOOD_SOURCES``) and their schema.

A :class:`Source` says where a file comes from (URLs, or a user path for data that may not be
redistributed), its format and how to verify it (:class:`Checksum`). See fsood.datasets.registry.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from .errors import DatasetError
from .readers import ARCHIVE_FORMATS, FILE_FORMATS, data_member

MIRROR_ENV = "FSOOD_MIRROR"  # os.pathsep-separated folders, searched before params' mirrors
SOURCES_ENV = "FSOOD_SOURCES"  # a YAML file of entries that replace or add sources by name
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

"""Finding and fetching a source's file: mirrors, the download folder, the origins; safe extraction.

Lookup order and download rules are in fsood.datasets.registry's docstring; one URL's transfer
(resume, retries, web pages) in fsood.datasets.transfer.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fsood.io import atomic_path, write_text

from .errors import ChecksumMismatch, DatasetError, HostRefused
from .readers import iter_members
from .sources import MIRROR_ENV, Source
from .transfer import claimed, discard, download, part_paths
from .verify import check_copy, checked_copy, record_path, remember_verified

log = logging.getLogger(__name__)

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


def described(source: Source) -> str:
    """The source as every log line and message names it, saying so where no full digest is published."""
    c = source.checksum
    if c is not None and c.prefix:
        return f"{source.name} (only a sha256 prefix is published: the full sha256 is recorded at first use)"
    if c is None and source.tree_sha256 is None:
        return f"{source.name} (no published digest: its sha256 is recorded at first use)"
    return source.name


def _write_record(record: Path, sha256: str, filename: str, label: str) -> None:
    write_text(record, f"{sha256}  {filename}\n")
    log.info("%s: sha256 %s of %s recorded at first use in %s", label, sha256, filename, record)


def _checked(source: Source, path: Path, record: Path, label: str, what: str) -> Path:
    """``path`` verified (its sha256 recorded where this is its first use), or raise."""
    how, sha256, first_use = checked_copy(source, path, record)
    if first_use:
        _write_record(record, sha256, source.filename, label)  # beside the downloads: mirrors stay read-only
    log.info("%s: %s %s verified (%s)", label, what, path, how)
    return path


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
        return _checked(source, path, record, described(source), "user copy")
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
    """A verified local copy of ``source``: from a mirror (read in place), the download folder, or an origin.

    ``user_paths`` ({source name: path}, e.g. from params.yaml) names the user's copy of a
    source that may not be downloaded; its environment variable is the fallback.
    """
    label = described(source)
    record = record_path(source, download_dir)
    if source.user_path is not None:
        return _user_copy(source, user_paths, record)
    for folder in mirror_folders(mirrors):
        if (folder / source.filename).is_file():  # a bad copy is an error, no fallback
            return _checked(source, folder / source.filename, record, label, "mirror copy")
    target = Path(download_dir) / source.filename
    if target.is_file():
        return _checked(source, target, record, label, "downloaded copy")
    with claimed(target):
        if target.is_file():  # another process fetched it while this one waited
            return _checked(source, target, record, label, "downloaded copy")
        return _from_origins(source, target, record, label, mirrors)


def _from_origins(source: Source, target: Path, record: Path, label: str, mirrors: Sequence[str | Path]) -> Path:
    """Each origin in turn, each copy verified against the same checksum (or first-use record)."""
    errors: list[DatasetError] = []
    for url in source.urls:
        try:
            how, sha256, first_use = _download_checked(source, url, target, record, label)
        except DatasetError as err:
            errors.append(err)
            if url != source.urls[-1]:
                log.warning("%s: %s; trying the next origin", label, err)
            continue
        os.replace(part_paths(target)[0], target)
        part_paths(target)[1].unlink(missing_ok=True)
        remember_verified(target, sha256)
        if first_use:
            _write_record(record, sha256, source.filename, label)
        log.info("%s: downloaded from %s, verified (%s)", label, url, how)
        return target
    searched = ", ".join(str(f) for f in mirror_folders(mirrors)) or "none"
    if any(isinstance(e, ChecksumMismatch) for e in errors):
        kind = ChecksumMismatch  # some origin served a wrong copy
    elif errors and all(isinstance(e, HostRefused) for e in errors):
        kind = HostRefused  # every host answered, none with the file
    else:
        kind = DatasetError
    raise kind(
        f"{label}: {source.filename} is in no mirror (searched: {searched}) and could not be "
        f"downloaded: {'; '.join(map(str, errors)) or 'no urls'}. Wait and rerun (a cut download resumes), "
        f"set {MIRROR_ENV} to a folder that holds {source.filename}, or save the file by hand (e.g. from a "
        f"browser) as {target}"
    )


def _download_checked(source: Source, url: str, target: Path, record: Path, label: str) -> tuple[str, str, bool]:
    """Download ``url`` into the ``.part`` and verify it whole; a resumed copy that fails is fetched once more
    from byte 0 (its parts may come from two versions of the file, or from two origins)."""
    part = part_paths(target)[0]
    for again in (False, True):
        transfer = download(url, target, label=label)
        try:
            return check_copy(source, part, record)
        except DatasetError as err:  # name the file it was to become, not the .part
            discard(target)
            if again or not transfer.resumed:
                raise type(err)(f"{url}: refused: {str(err).replace(str(part), str(target))}") from err
            log.warning("%s: the copy from %s, put together from %d pieces, fails its check (%s); "
                        "downloading it whole once more", label, url, transfer.pieces, err)
    raise AssertionError("not reached: the second pass returns or raises")

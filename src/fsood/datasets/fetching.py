"""Finding and fetching a source's file: mirrors, the download folder, the origin; safe extraction.

Lookup order and download rules are in fsood.datasets.registry's docstring.
"""
from __future__ import annotations

import http.client
import logging
import os
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from fsood.io import atomic_path, write_text

from .errors import ChecksumMismatch, DatasetError
from .readers import iter_members
from .sources import MIRROR_ENV, Source
from .verify import CHUNK, check_copy, checked_copy, remember_verified, record_path

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
        _, sha256, first_use = checked_copy(source, path, record)
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
            how, sha256, first_use = checked_copy(source, candidate, record)  # a bad copy is an error, no fallback
            if first_use:
                _write_record(record, sha256, source.filename)  # beside the downloads: mirrors stay read-only
            log.info("%s: mirror copy %s verified (%s)", source.name, candidate, how)
            return candidate
    target = Path(download_dir) / source.filename
    if target.is_file():
        how, sha256, first_use = checked_copy(source, target, record)
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
                    how, sha256, first_use = check_copy(source, tmp, record)
                except DatasetError as err:  # name the file it was to become, not the temporary one
                    raise type(err)(f"{url}: refused: {str(err).replace(str(tmp), str(target))}") from err
        except ChecksumMismatch:
            raise
        except (OSError, http.client.HTTPException, DatasetError) as err:  # URLError, HTTPError: OSErrors
            errors.append(str(err) if str(err).startswith(url) else f"{url}: {err}")
            continue
        remember_verified(target, sha256)
        if first_use:
            _write_record(record, sha256, source.filename)
        log.info("%s: downloaded from %s, verified (%s)", source.name, url, how)
        return target
    searched = ", ".join(str(f) for f in mirror_folders(mirrors)) or "none"
    raise DatasetError(
        f"{source.name}: {source.filename} is in no mirror (searched: {searched}) and could not be "
        f"downloaded: {'; '.join(errors) or 'no urls'}. Set {MIRROR_ENV} to a folder that holds it."
    )

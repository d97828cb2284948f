"""Atomic, deterministic writers.

Every output is written to a hidden temporary file in the target folder and renamed
into place: an interrupted job leaves nothing that looks finished. Writers also avoid
anything that varies between runs (zip timestamps, temp names inside archives), so a
rerun yields the same bytes and DVC sees the same hash.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():  # a directory cannot be renamed over a full one
            trash = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (datasets, checkpoints, provenance, resume keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: str | Path, data: bytes) -> None:
    """An error while writing (a full disk: ENOSPC) names ``path``; the file object's own error
    would not, and the temp file is removed by ``atomic_path``."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise OSError(err.errno, f"{err.strerror or err} while writing {len(data)} bytes",
                          str(path)) from err


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    """Sorted keys, fixed indentation: the same object always gives the same bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-reproducible (fixed member order and timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    write_bytes(path, buf.getvalue())


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_state_dict(path: str | Path, state: dict) -> None:
    """torch.save via a buffer: the archive's inner name must not be the temp file's name."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(path, buf.getvalue())

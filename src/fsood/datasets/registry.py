"""Dataset registry: where each source comes from, how to verify it, how to read it safely.

This module gathers the names of :mod:`.sources` (the entries), :mod:`.verify` (checksums and
trust on first use) and :mod:`.fetching` (mirrors, downloads, extraction) in one namespace.

The sources are listed in ``sources.yaml`` (beside this module); ``$FSOOD_SOURCES`` may name
a YAML file of the same shape whose entries replace or add sources by name (institutional
mirrors with other URLs; tests that serve fabricated copies on 127.0.0.1).

Lookup order for a source's file: every mirror folder (``$FSOOD_MIRROR``, then
``datasets.mirrors`` in params.yaml), then the download folder, then the public origins in
the order the registry lists them. A mirror is read in place and never written to. A download
goes to ``<download_dir>/<file>.part`` (resumed by range requests across attempts and runs,
retried on connection errors, 429 and 5xx, a web page refused: fsood.datasets.transfer), is
verified whole, and only then renamed into place; a copy that fails its check is deleted and
the next origin tried. Sources that may not be redistributed (ImageNet) have no URL: the user
points ``$<env>`` or a params key at them.

Verification, in order:

1. the published checksum of the file (md5 or sha256, with who publishes it);
2. else or when that fails, the *tree* sha256 over the data members where the registry has
   one (GitHub ``archive/<commit>.tar.gz`` downloads are re-gzipped on demand, so their
   bytes change while their content does not), defined as
   for every regular file under the data members, the line ``<sha256>  <path relative to the
   top folder>\\n``, lines sorted bytewise by path, and the sha256 of their concatenation;
3. trust on first use where no full checksum is published anywhere (or only a prefix, as in
   torchvision's weight file names): the first copy must read in full as its format says
   (``readers.check_readable``), its sha256 is then recorded in ``<download_dir>/<file>.sha256``,
   and every later use must match that record. ``recorded_sha256`` gives the hash to pin in
   the DVC-tracked data manifest.
"""
from __future__ import annotations

from fsood.io import file_sha256

from .errors import ChecksumMismatch, DatasetError, HostRefused, UnsafeArchive
from .fetching import described, extract, fetch, mirror_folders
from .readers import check_readable, iter_members, load_checkpoint, load_mat, load_npy
from .sources import (
    MIRROR_ENV,
    SOURCES_ENV,
    Checksum,
    Source,
    UserPath,
    as_entry,
    builtin_sources,
    get_source,
    load_sources,
    parse_sources,
    sources,
)
from .transfer import Retry, download, part_paths
from .verify import file_digests, record_path, recorded_sha256, tree_sha256, verify

__all__ = [
    "builtin_sources",
    "Checksum",
    "ChecksumMismatch",
    "DatasetError",
    "HostRefused",
    "Retry",
    "Source",
    "UnsafeArchive",
    "UserPath",
    "as_entry",
    "check_readable",
    "described",
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
    "part_paths",
    "record_path",
    "recorded_sha256",
    "sources",
    "tree_sha256",
    "verify",
]

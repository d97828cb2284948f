"""What can go wrong finding, verifying or reading a dataset source (re-exported by ``registry``)."""
from __future__ import annotations


class DatasetError(RuntimeError):
    """A source that cannot be found, verified or read safely."""


class ChecksumMismatch(DatasetError):
    """A file whose bytes are not the ones the registry (or the first-use record) names."""


class UnsafeArchive(DatasetError):
    """An archive member that would escape its folder or is not a plain file or folder."""


class HostRefused(DatasetError):
    """An origin that answered with something other than the file (a web page, an HTTP error) or
    asked for a longer wait than fsood makes: retrying at once will not help, another origin may."""

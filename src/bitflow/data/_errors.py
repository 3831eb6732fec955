"""Exceptions raised by :mod:`bitflow.data` (numpy only, no torch)."""

from __future__ import annotations

__all__ = ["DatasetError", "DatasetNotFoundError"]


class DatasetError(ValueError):
    """A data set is malformed: bad IDX header, truncated payload, wrong count, bad label,
    empty class folder, CSV without the needed columns, unreadable image, bad spec.

    The message always names the offending file or folder.
    """


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data set file or folder does not exist.

    Subclasses both :class:`DatasetError` (hence ``ValueError``) and ``FileNotFoundError``
    so callers may catch either.
    """

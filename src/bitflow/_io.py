"""Atomic file writes (torch-free): used for model files, checkpoints, metrics and reports."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, make_dirs: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is flushed, fsync'ed and then
    renamed over ``path`` (``os.replace``), so a reader sees either the old file or the complete
    new one; on any error (or an interrupt) the temporary file is removed and ``path`` is left
    untouched. ``make_dirs=False`` refuses a missing directory with ``FileNotFoundError``.
    """
    p = Path(path)
    d = p.parent if str(p.parent) else Path(".")
    if make_dirs:
        d.mkdir(parents=True, exist_ok=True)
    elif not d.is_dir():
        raise FileNotFoundError(f"directory {str(d)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=d)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON and a newline, atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_report(out: Path, text_name: str, text: str, report: Any) -> None:
    """A run's report: ``out/<text_name>`` (the text and a newline) and ``out/report.json``."""
    atomic_write_bytes(out / text_name, (text + "\n").encode())
    atomic_write_json(out / "report.json", report)

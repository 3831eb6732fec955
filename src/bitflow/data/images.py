"""Decode one image file with Pillow (imported lazily) into uint8 RGB pixels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._errors import DatasetError, DatasetNotFoundError

__all__ = ["load_image"]


def load_image(path: str | os.PathLike[str], size: int | tuple[int, int]) -> np.ndarray:
    """Read ``path``, convert to RGB and resize to ``size`` (int = square, or ``(H, W)``).

    Returns ``uint8 [H, W, 3]``.  The resize is a plain bilinear resample to the target
    shape (no crop, aspect ratio not kept), as in the BitFlow-Net paper's 11K Hands set-up
    (Sec. IV.C: "all the images ... are resized into 224x224").  For JPEG, Pillow's ``draft``
    mode first decodes at the smallest DCT scale still >= the target, which is much faster for
    the 1600x1200 11K Hands photos and changes the result only by resampling detail.

    Raises DatasetNotFoundError if the file is missing, DatasetError if Pillow cannot decode it.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading image files needs Pillow: pip install pillow (or bitflow[train])"
        ) from exc
    if isinstance(size, int):
        h = w = size
    else:
        h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError(f"image file not found: {p}")
    try:
        with Image.open(p) as img:
            if img.format == "JPEG":
                img.draft("RGB", (w, h))
            rgb = img.convert("RGB")
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {p}: {exc}") from exc

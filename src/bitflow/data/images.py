"""Decode one image file with Pillow (imported lazily) into uint8 pixels (grey or RGB), and
read an image's size and colour without decoding it (:func:`probe_image`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DatasetError, DatasetNotFoundError

__all__ = [
    "load_image",
    "probe_image",
    "image_geometry",
    "ImageGeometry",
    "GREY_MODES",
    "DEFAULT_IMAGE_SIZE",
    "folder_geometry",
]

#: Pillow modes that hold one grey channel (bit-level, 8-bit, 16/32-bit integer, float; with alpha).
GREY_MODES: frozenset[str] = frozenset(
    {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
)


def _pil() -> tuple[Any, type[Exception]]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading image files needs Pillow: pip install pillow (or bitflow[train])"
        ) from exc
    return Image, UnidentifiedImageError


def probe_image(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(height, width, channels)`` of an image file from its header (no full decode).

    ``channels`` is 1 for grey modes (:data:`GREY_MODES`; a palette image whose palette is all
    grey counts as grey too) and 3 otherwise (RGB, RGBA, CMYK, YCbCr, colour palettes; alpha
    is dropped). Raises DatasetNotFoundError for a missing file and DatasetError naming the
    file when Pillow cannot read it.
    """
    Image, bad = _pil()
    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError(f"image file not found: {p}")
    try:
        with Image.open(p) as img:
            w, h = img.size
            mode = img.mode
            grey = mode in GREY_MODES
            if mode == "P":
                pal = img.getpalette() or []
                rgb = np.asarray(pal[: 3 * (len(pal) // 3)], np.int64).reshape(-1, 3)
                grey = bool(rgb.size) and bool(np.all(rgb == rgb[:, :1]))
            img.verify()  # checks the file's structure (cheap; catches truncated PNG chunks)
    except (bad, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {p}: {exc}") from exc
    if w < 1 or h < 1:
        raise DatasetError(f"image {p} has no pixels ({w}x{h})")
    return h, w, 1 if grey else 3


def load_image(
    path: str | os.PathLike[str], size: int | tuple[int, int], channels: int = 3
) -> np.ndarray:
    """Read ``path``, convert to RGB (``channels=3``) or grey (``channels=1``, Pillow's ITU-R
    601-2 luma for colour files) and resize to ``size`` (int = square, or ``(H, W)``).

    Returns ``uint8 [H, W, channels]``.  The resize is a plain bilinear resample to the target
    shape (no crop, aspect ratio not kept), as in the BitFlow-Net paper's 11K Hands set-up
    (Sec. IV.C: "all the images ... are resized into 224x224").  For JPEG, Pillow's ``draft``
    mode first decodes at the smallest DCT scale still >= the target, which is much faster for
    the 1600x1200 11K Hands photos and changes the result only by resampling detail.

    Raises DatasetNotFoundError if the file is missing, DatasetError if Pillow cannot decode it.
    """
    Image, UnidentifiedImageError = _pil()
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
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
            mode = "RGB" if channels == 3 else "L"
            if img.format == "JPEG":
                img.draft(mode, (w, h))
            conv = img.convert(mode)
            if conv.size != (w, h):
                conv = conv.resize((w, h), Image.Resampling.BILINEAR)
            out = np.asarray(conv, dtype=np.uint8)
            return (out[:, :, None] if out.ndim == 2 else out).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {p}: {exc}") from exc


#: Image side used when the images of a folder differ in size (the BitFlow-Net papers' 224).
DEFAULT_IMAGE_SIZE = 224
#: At most this many files are probed to infer a folder's geometry (a seeded sample beyond).
PROBE_LIMIT = 20_000


@dataclass(frozen=True)
class ImageGeometry:
    """What the images of a folder agree on (:func:`image_geometry`).

    ``sizes`` maps each ``(height, width)`` seen to its count; ``channels`` is 1 when every
    probed image is grey, else 3; ``probed`` of ``count`` files were read (all, up to
    :data:`PROBE_LIMIT`). ``uniform`` is True when all probed images share one size.
    """

    count: int
    probed: int
    sizes: dict[tuple[int, int], int]
    channels: int

    @property
    def uniform(self) -> bool:
        return len(self.sizes) == 1

    def image_size(self, fallback: int = DEFAULT_IMAGE_SIZE) -> int:
        """The square side to train at: the images' own side when they all share one size (the
        larger side of a non-square size: the zoo models take square inputs), else ``fallback``."""
        if not self.uniform:
            return fallback
        h, w = next(iter(self.sizes))
        return max(h, w)

    def describe(self) -> str:
        top = sorted(self.sizes.items(), key=lambda kv: -kv[1])[:3]
        shown = ", ".join(f"{h}x{w} ({n})" for (h, w), n in top) + (
            ", ..." if len(self.sizes) > 3 else ""
        )
        kind = "grey" if self.channels == 1 else "colour"
        return f"{self.count} images ({self.probed} probed), {kind}, sizes {shown}"


def image_geometry(paths: Sequence[str | os.PathLike[str]], seed: int = 0) -> ImageGeometry:
    """Probe image headers (:func:`probe_image`) to infer a common size and channel count.

    Every file is probed when there are at most :data:`PROBE_LIMIT`, else a seeded sample of that
    many. Unreadable files raise DatasetError naming up to five of them (and how many in all).
    """
    paths = list(paths)
    if not paths:
        raise DatasetError("no images to infer the image size from")
    pick: Sequence[int] = range(len(paths))
    if len(paths) > PROBE_LIMIT:
        pick = sorted(
            np.random.default_rng(seed).choice(len(paths), PROBE_LIMIT, replace=False).tolist()
        )
    sizes: dict[tuple[int, int], int] = {}
    grey = True
    bad: list[str] = []
    for i in pick:
        try:
            h, w, c = probe_image(paths[i])
        except DatasetError as e:
            bad.append(str(e))
            continue
        sizes[(h, w)] = sizes.get((h, w), 0) + 1
        grey = grey and c == 1
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DatasetError(
            f"{len(bad)} image file(s) cannot be read: "
            + "; ".join(bad[:5])
            + more
            + "; remove or replace them"
        )
    return ImageGeometry(count=len(paths), probed=len(pick), sizes=sizes, channels=1 if grey else 3)


def folder_geometry(root: str | os.PathLike[str], seed: int = 0) -> ImageGeometry:
    """:func:`image_geometry` of every image of an image folder (``train/`` and ``val/`` or
    ``test/`` together when present), as :func:`bitflow.data.get_data` infers it."""
    from .folders import image_folder_splits

    train, test = image_folder_splits(root)
    return image_geometry(train.paths + (test.paths if test is not None else ()), seed)

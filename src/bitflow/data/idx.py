"""IDX files (the MNIST / Fashion-MNIST container) read with numpy only.

IDX layout (LeCun et al., "The MNIST database"): a 4-byte magic number
``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 dimension sizes, then the
payload of ``prod(dims)`` big-endian elements in C order.  Dtype codes:
``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32,
``0x0E`` float64.  Files may be gzip-compressed (detected by the gzip magic ``1f 8b``,
whatever the file name).

Model input convention used across bitflow: a pixel ``p`` in 0..255 enters a model as the
float32 ``p / 255`` in [0, 1], CHW, without mean/std normalisation (the first layer and its
BatchNorm absorb any affine scale; zero padding then means a black pixel and an int8 first
layer stays exact).  :func:`to_float01` implements it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from ._errors import DatasetError, DatasetNotFoundError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_DEFAULT_ROOT",
    "read_idx",
    "write_idx",
    "load_fashion_mnist",
    "fashion_mnist_root",
    "to_float01",
]

#: Class names of Fashion-MNIST, in label order 0..9 (Xiao, Rasul & Vollgraf, 2017).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Environment variable that overrides the default Fashion-MNIST folder.
FASHION_MNIST_ENV = "BITFLOW_FASHION_MNIST"
#: Folder used when neither an argument nor the environment variable names one.
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[np.dtype, int] = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Whole file content, gunzipped when it starts with the gzip magic."""
    if not path.exists():
        raise DatasetNotFoundError(f"IDX file not found: {path}")
    if not path.is_file():
        raise DatasetError(f"IDX path is not a regular file: {path}")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip stream
        raise DatasetError(f"corrupt or truncated gzip file {path}: {exc}") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (plain or gzip) into a native-endian numpy array.

    Validates the magic number (two zero bytes, a known dtype code, ``ndim >= 1``), that
    the header is complete, and that the payload has exactly ``prod(dims) * itemsize``
    bytes (no truncation, no trailing garbage).

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetError: anything malformed; the message names the file.
    """
    p = Path(path)
    data = _read_bytes(p)
    if len(data) < 4:
        raise DatasetError(f"IDX file {p} is too short for a header ({len(data)} bytes)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DatasetError(
            f"bad IDX magic number in {p}: first two bytes are {zero0:#04x} {zero1:#04x},"
            " expected 0x00 0x00"
        )
    if code not in _DTYPES:
        known = ", ".join(f"{c:#04x}" for c in _DTYPES)
        raise DatasetError(f"unknown IDX dtype code {code:#04x} in {p} (known: {known})")
    if ndim == 0:
        raise DatasetError(f"IDX file {p} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"IDX file {p} is truncated inside its header: needs {header} bytes, has {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    count = 1
    for d in dims:
        count *= d
    expected = count * dtype.itemsize
    payload = len(data) - header
    if payload < expected:
        raise DatasetError(
            f"IDX file {p} is truncated: dims {dims} need {expected} payload bytes, found {payload}"
        )
    if payload > expected:
        raise DatasetError(
            f"IDX file {p} has {payload - expected} unexpected trailing bytes after the "
            f"payload of dims {dims}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None
) -> None:
    """Write ``array`` as an IDX file (the inverse of :func:`read_idx`).

    ``compress=None`` gzips when the file name ends in ``.gz``.  Supported dtypes: uint8,
    int8, int16, int32, float32, float64.  Used by tests and to export subsets.
    """
    arr = np.asarray(array)
    dt = arr.dtype.newbyteorder("=")
    if dt not in _CODES:
        raise TypeError(
            f"IDX cannot store dtype {arr.dtype}; use one of {sorted(map(str, _CODES))}"
        )
    if arr.ndim < 1 or arr.ndim > 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {arr.ndim}")
    p = Path(path)
    header = bytes([0, 0, _CODES[dt], arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(arr, dtype=dt.newbyteorder(">")).tobytes()
    blob = header + body
    if compress is None:
        compress = p.name.endswith(".gz")
    if compress:
        blob = gzip.compress(blob, mtime=0)
    p.write_bytes(blob)


def fashion_mnist_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding Fashion-MNIST: ``root`` if given, else ``$BITFLOW_FASHION_MNIST``,
    else ``/usr/share/datasets/fashion-mnist``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(FASHION_MNIST_ENV)
    if env:
        return Path(env)
    return FASHION_MNIST_DEFAULT_ROOT


def _find_file(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        candidate = root / name
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root} (pass root=..., or set "
        f"${FASHION_MNIST_ENV}; default {FASHION_MNIST_DEFAULT_ROOT})"
    )


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    split: Literal["train", "test"] = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split as ``(images uint8 [N,28,28], labels int64 [N])``.

    Files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` or plain) are looked up
    in :func:`fashion_mnist_root` (argument > ``$BITFLOW_FASHION_MNIST`` > system default).
    Nothing is downloaded or cached.  Checks: images are ``[N,28,28]`` uint8, labels are
    ``[N]`` uint8 with the same N, every label is in 0..9.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = fashion_mnist_root(root)
    if not base.is_dir():
        raise DatasetNotFoundError(
            f"Fashion-MNIST folder not found: {base} (pass root=..., or set ${FASHION_MNIST_ENV})"
        )
    prefix = "train" if split == "train" else "t10k"
    img_path = _find_file(base, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_file(base, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{img_path}: expected uint8 images of shape [N,28,28], got {images.dtype} "
            f"{list(images.shape)}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(
            f"{lbl_path}: expected a 1-d uint8 label vector, got {labels.dtype} {list(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"Fashion-MNIST count mismatch: {img_path} has {images.shape[0]} images but "
            f"{lbl_path} has {labels.shape[0]} labels"
        )
    n_cls = len(FASHION_MNIST_CLASSES)
    if labels.size and int(labels.max()) >= n_cls:
        bad = int(np.flatnonzero(labels >= n_cls)[0])
        raise DatasetError(
            f"{lbl_path}: label {int(labels[bad])} at index {bad} is out of range 0..{n_cls - 1}"
        )
    return images, labels.astype(np.int64)


def to_float01(images: np.ndarray, *, channels_last: bool = False) -> np.ndarray:
    """uint8 pixels -> float32 ``p / 255`` in [0, 1] with a channel axis, shape ``[N,C,H,W]``.

    Input ``[N,H,W]`` (grey, C = 1) or ``[N,H,W,C]`` with ``channels_last=True``.  The
    division is a single correctly rounded IEEE float32 operation, so torch's
    ``x.float() / 255`` gives bit-identical values.
    """
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {a.dtype}")
    if channels_last:
        if a.ndim != 4:
            raise ValueError(f"channels_last images must be [N,H,W,C], got shape {a.shape}")
        a = a.transpose(0, 3, 1, 2)
    elif a.ndim == 3:
        a = a[:, None, :, :]
    elif a.ndim != 4:
        raise ValueError(f"images must be [N,H,W] or [N,C,H,W], got shape {a.shape}")
    out = np.ascontiguousarray(a, dtype=np.float32)
    out /= np.float32(255.0)
    return out

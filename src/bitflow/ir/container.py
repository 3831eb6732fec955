"""The ``.bfn`` container: bytes <-> (graph description, tensors), numpy only.

The file format (a safetensors container; see :mod:`bitflow.ir.bfn` for the layout) without
any knowledge of graphs, so that :class:`~bitflow.ir.graph.Graph` can write itself and
:mod:`bitflow.ir.bfn` can build and validate graphs on top: ``container -> graph -> bfn``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT = "bitflow-bfn"
FORMAT_VERSION = "2"  # 2: DAG graphs (graph version 2); version-1 files still load
SUPPORTED_FORMAT_VERSIONS = ("1", "2")
MAX_HEADER = 64 * 1024 * 1024
MAX_NDIM = 8  # no bitflow tensor has more axes (conv weights of MBBN planes have 6)

_DTYPES: dict[str, np.dtype[Any]] = {
    "U64": np.dtype("<u8"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "F32": np.dtype("<f4"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
}
_CODES = {v: k for k, v in _DTYPES.items()}


class ModelFileError(ValueError):
    """A ``.bfn`` file is missing, truncated, corrupt, of another version or inconsistent."""


def encode(description: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of a ``.bfn`` file holding the graph ``description`` (its JSON, see
    :meth:`bitflow.ir.graph.Graph.to_json`) and the named ``tensors``."""
    gjson = json.dumps(description, sort_keys=True, separators=(",", ":"))
    header: dict[str, Any] = {
        "__metadata__": {"format": FORMAT, "version": FORMAT_VERSION, "graph": gjson},
    }
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("a tensor may not be called '__metadata__'")
        t = np.asarray(tensors[name])
        dt = t.dtype.newbyteorder("<") if t.dtype.byteorder == ">" else t.dtype
        code = _CODES.get(np.dtype(dt))
        if code is None:
            raise ValueError(
                f"tensor {name!r}: dtype {t.dtype} cannot be stored (uint64, int32, int64, float32, int8, uint8)"
            )
        data = np.ascontiguousarray(t, dtype=_DTYPES[code]).tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    return len(hb).to_bytes(8, "little") + hb + b"".join(blobs)


def _fail(path: str, msg: str) -> ModelFileError:
    return ModelFileError(f"{path}: {msg}")


def decode(data: bytes, path: str = "<bytes>") -> tuple[Any, dict[str, np.ndarray]]:
    """Check the container of a ``.bfn`` file (header, format, version, every tensor's dtype, shape
    and byte range) and return the parsed graph description (JSON, not yet checked) and the
    tensors."""
    size = len(data)
    if size < 8:
        raise _fail(
            path,
            f"file is truncated ({size} bytes; a .bfn file starts with an 8-byte header length)",
        )
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > MAX_HEADER:
        raise _fail(path, f"not a .bfn file: implausible header length {n}")
    if 8 + n > size:
        raise _fail(path, f"file is truncated: header length {n} exceeds the file size {size}")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError, int too long
        raise _fail(path, f"corrupt header (not valid JSON): {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise _fail(path, "corrupt header: expected a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, f"not a bitflow model file (metadata format is not {FORMAT!r})")
    if meta.get("version") not in SUPPORTED_FORMAT_VERSIONS:
        raise _fail(
            path,
            f"unsupported .bfn version {meta.get('version')!r} (this reader supports "
            f"{', '.join(SUPPORTED_FORMAT_VERSIONS)})",
        )
    body = memoryview(data)[8 + n :]
    tensors: dict[str, np.ndarray] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _fail(path, f"tensor {name!r}: entry must be an object")
        code, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(code, str) or code not in _DTYPES:
            raise _fail(
                path,
                f"tensor {name!r}: unsupported dtype {code!r} (expected one of {sorted(_DTYPES)})",
            )
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_NDIM
            and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= len(body) * 8
                for s in shape
            )
        ):
            raise _fail(
                path,
                f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} non-negative integers "
                f"that fit the data section, got {shape!r}",
            )
        if not (
            isinstance(offs, list)
            and len(offs) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise _fail(path, f"tensor {name!r}: data_offsets must be [begin, end], got {offs!r}")
        begin, end = offs
        if not 0 <= begin <= end <= len(body):
            raise _fail(
                path,
                f"tensor {name!r}: data_offsets {offs} out of range (data section has {len(body)} bytes; truncated file?)",
            )
        dt = _DTYPES[code]
        if end - begin != math.prod(shape) * dt.itemsize:
            raise _fail(
                path, f"tensor {name!r}: {end - begin} bytes do not match shape {shape} of {code}"
            )
        spans.append((begin, end, name))
        tensors[name] = (
            np.frombuffer(body[begin:end], dtype=dt)
            .reshape(shape)
            .astype(dt.newbyteorder("="), copy=True)
        )
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin < pos:
            raise _fail(path, f"tensor {name!r} overlaps the previous tensor")
        if begin > pos:
            raise _fail(path, f"gap of {begin - pos} bytes before tensor {name!r}")
        pos = end
    if pos != len(body):
        raise _fail(
            path, f"data section has {len(body) - pos} trailing bytes not covered by any tensor"
        )
    gtext = meta.get("graph")
    if not isinstance(gtext, str):
        raise _fail(path, "metadata has no graph description")
    try:
        gdict = json.loads(gtext)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, int too long
        raise _fail(
            path, f"corrupt graph description (not valid JSON): {type(e).__name__}: {e}"
        ) from None
    return gdict, tensors


__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "decode", "encode"]

"""The ``.bfn`` model file: a safetensors container written and read with numpy only.

Layout (the safetensors format, written here from its description)::

    [8 bytes]  little-endian uint64 n: length of the JSON header
    [n bytes]  UTF-8 JSON: {"<tensor>": {"dtype": "U64"|"I32"|"I64"|"F32"|"I8"|"U8", "shape": [...],
                                         "data_offsets": [begin, end]}, ...,
                            "__metadata__": {"format": "bitflow-bfn", "version": "1",
                                             "graph": "<graph JSON string>"}}
               padded with spaces to a multiple of 8 bytes
    [rest]     raw little-endian tensor data; offsets are relative to the start of this part,
               tensors are contiguous, non-overlapping and cover it exactly

The graph JSON (see :meth:`bitflow.ir.graph.Graph.to_json`) holds the version, the input spec
(shape ``[C, H, W]``, preprocessing), class names, the ops with attributes and tensor
references, the output name and the provenance. Loading validates all of it and raises
:class:`ModelFileError` with a message naming the problem; nothing is ever unpickled or
evaluated.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from .graph import Graph, GraphError

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


def _encode(graph: Graph) -> bytes:
    gjson = json.dumps(graph.to_json(), sort_keys=True, separators=(",", ":"))
    header: dict[str, Any] = {
        "__metadata__": {"format": FORMAT, "version": FORMAT_VERSION, "graph": gjson},
    }
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(graph.tensors):
        if name == "__metadata__":
            raise ValueError("a tensor may not be called '__metadata__'")
        t = np.asarray(graph.tensors[name])
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


def save_graph(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Validate ``graph`` and write it to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is flushed, fsync'ed and then
    renamed over ``path`` (``os.replace``), so a reader sees either the old file or the complete
    new one; on any error the temporary file is removed and ``path`` is left untouched.
    """
    atomic_write_bytes(path, _encode(graph), make_dirs=False)


def _fail(path: str, msg: str) -> ModelFileError:
    return ModelFileError(f"{path}: {msg}")


def parse_bfn(data: bytes, path: str = "<bytes>") -> Graph:
    """Parse and validate the bytes of a ``.bfn`` file (see :func:`load_graph`)."""
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
    try:
        graph = Graph.from_json(gdict, tensors)
    except GraphError as e:
        raise _fail(path, f"inconsistent graph: {e}") from None
    except (
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        ValueError,
        OverflowError,
        RecursionError,
    ) as e:
        # a field of the wrong JSON type that the graph checks did not anticipate: still the
        # file's fault, never a crash of the caller
        raise _fail(path, f"malformed graph description: {type(e).__name__}: {e}") from None
    used = {t for op in graph.ops for t in op.params.values()}
    extra = sorted(set(tensors) - used)
    if extra:
        raise _fail(path, f"tensors not referenced by any op: {extra[:5]}")
    return graph


def load_graph(path: str | os.PathLike[str]) -> Graph:
    """Read and validate a ``.bfn`` file.

    Checks the header length against the file size, the JSON, format name and version, every
    tensor's dtype, shape and byte range (in range, contiguous, non-overlapping), the graph
    version, every op (known type, referenced tensors present with the shapes and dtypes the op
    needs, int32 accumulator bounds) and the values between ops. Raises ``FileNotFoundError``
    for a missing file and :class:`ModelFileError` (a ``ValueError``) for anything else.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"model file {str(p)!r} is a directory, not a .bfn file")
    if not p.exists():
        raise FileNotFoundError(f"model file {str(p)!r} does not exist")
    if not p.is_file():
        raise ModelFileError(f"model file {str(p)!r} is not a regular file")
    return parse_bfn(p.read_bytes(), str(p))


__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "load_graph", "parse_bfn", "save_graph"]

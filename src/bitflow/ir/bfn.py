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

import os
from pathlib import Path

from .container import FORMAT, FORMAT_VERSION, ModelFileError, _fail, decode
from .graph import Graph, GraphError


def save_graph(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Validate ``graph`` and write it to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is flushed, fsync'ed and then
    renamed over ``path`` (``os.replace``), so a reader sees either the old file or the complete
    new one; on any error the temporary file is removed and ``path`` is left untouched.
    """
    graph.save(path)


def parse_bfn(data: bytes, path: str = "<bytes>") -> Graph:
    """Parse and validate the bytes of a ``.bfn`` file (see :func:`load_graph`)."""
    gdict, tensors = decode(data, path)
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

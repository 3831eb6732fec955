"""Engine graph IR, ``.bfn`` model files and the numpy reference executor (torch-free).

``Graph`` / ``Op`` / ``ValueInfo`` / ``InputSpec`` describe a network in the native engine's op
set; ``save_graph`` / ``load_graph`` write and validate ``.bfn`` files; ``run`` executes a
graph with plain numpy and defines what every engine op computes.
"""

from .bfn import ModelFileError, load_graph, parse_bfn, save_graph
from .bits import pack_bits, signs_to_bits, unpack_bits
from .graph import (
    BINARY_OPS,
    FLOAT_OPS,
    GRAPH_VERSION,
    OP_TYPES,
    Graph,
    GraphError,
    InputSpec,
    Op,
    ValueInfo,
    words_for,
)
from .reference import run

__all__ = [
    "BINARY_OPS",
    "FLOAT_OPS",
    "GRAPH_VERSION",
    "Graph",
    "GraphError",
    "InputSpec",
    "ModelFileError",
    "OP_TYPES",
    "Op",
    "ValueInfo",
    "load_graph",
    "pack_bits",
    "parse_bfn",
    "run",
    "save_graph",
    "signs_to_bits",
    "unpack_bits",
    "words_for",
]

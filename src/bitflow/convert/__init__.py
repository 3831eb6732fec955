"""Trained PyTorch BNN -> exact integer engine graph -> ``.bfn`` file (BitFlow-Net Sec. III).

- :func:`convert` (``mode="bitflow"`` integer-only BatchShift path, or ``"xnor"``)
- :func:`load_graph` / ``Graph.save(path)``: the ``.bfn`` model file
- :func:`run` (also ``bitflow.convert.reference.run``): the numpy reference executor
- :func:`verify`: PyTorch vs reference executor, sign by sign
- :mod:`bitflow.convert.batchshift`: the threshold math (torch-free)
"""

from ..ir import Graph, GraphError, ModelFileError, load_graph, save_graph
from . import batchshift, reference
from ._trace import UnsupportedLayerError
from .converter import CONVERTER_VERSION, convert
from .reference import run
from .verify import verify

__all__ = [
    "CONVERTER_VERSION",
    "Graph",
    "GraphError",
    "ModelFileError",
    "UnsupportedLayerError",
    "batchshift",
    "convert",
    "load_graph",
    "reference",
    "run",
    "save_graph",
    "verify",
]

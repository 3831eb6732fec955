"""Trained PyTorch BNN -> exact integer engine graph -> ``.bfn`` file (BitFlow-Net Sec. III).

- :func:`convert` (``mode="bitflow"`` integer-only BatchShift path, or ``"xnor"``)
- :func:`load_graph` / ``Graph.save(path)``: the ``.bfn`` model file
- :func:`run` (also ``bitflow.convert.reference.run``): the numpy reference executor
- :func:`verify`: PyTorch vs reference executor, sign by sign
- :mod:`bitflow.convert.batchshift`: the threshold math (torch-free), including the
  ``2^M - 1``-step rules of MBBN quantizers (``level_int_thresholds``, ``level_float_thresholds``)

MBBN models (``MBitConv2d`` / ``MBitLinear``, e.g. ``mbbn_vgg_small``) convert to
``threshold_planes`` -> ``bconv2d_planes`` / ``bdense_planes`` (M activation planes x K weight
planes, MBBN Eq. 7-9), bit-exact like the 1-bit BatchShift path.
"""

from ..ir import Graph, GraphError, ModelFileError, load_graph, save_graph
from . import batchshift, reference
from ._rows import expand_shared_rows, share_repeated_rows
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
    "expand_shared_rows",
    "load_graph",
    "reference",
    "run",
    "save_graph",
    "share_repeated_rows",
    "verify",
]

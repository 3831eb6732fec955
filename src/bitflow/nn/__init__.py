"""Binarized layers and quantizers for PyTorch (``bitflow.nn``)."""

from . import functional, quantizers
from .layers import (
    BinaryConv2d,
    BinaryLinear,
    Int8Conv2d,
    Scale,
    binary_layers,
    clip_weights_,
    set_real_mode,
)

__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "Int8Conv2d",
    "Scale",
    "binary_layers",
    "clip_weights_",
    "set_real_mode",
    "functional",
    "quantizers",
]

from . import mbbn  # noqa: E402  (registers the MBBN quantizers)
from .mbbn import (  # noqa: E402
    MBitConv2d,
    MBitEncoder,
    MBitLinear,
    MBitWeight,
    OddLinearQuantizer,
    OddLinearWeight,
)

__all__ += [
    "MBitConv2d",
    "MBitEncoder",
    "MBitLinear",
    "MBitWeight",
    "OddLinearQuantizer",
    "OddLinearWeight",
    "mbbn",
]

from .fixedpoint import FixedPointBN, StreamClamp  # noqa: E402

__all__ += ["FixedPointBN", "StreamClamp"]
from . import survey  # noqa: E402,F401  (registers the survey methods' quantizers, issue 12)

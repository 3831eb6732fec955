"""Bit packing in the engine layout (docs/architecture.md §2), numpy only.

Channel ``c`` of a row sits at bit ``c % 64`` of word ``c // 64`` (LSB first); a packed bit is 1
iff the value is -1 (value < 0, so 0 and -0.0 pack to 0); padding bits of the last word are 0.
"""

from __future__ import annotations

import numpy as np

from .._bits import pack_bits, unpack_bits


def plane_levels(planes: np.ndarray, channels: int, groups: int = 1) -> np.ndarray:
    """Packed bit planes ``[M, ..., words]`` -> the odd levels ``sum_m 2^m c_m`` (MBBN Eq. 7,
    ``c_m = -1`` where bit ``m`` is set) as int64 ``[..., groups * C]``."""
    return sum(  # type: ignore[return-value]
        (1 << m) * (1 - 2 * unpack_bits(planes[m], channels, groups).astype(np.int64))
        for m in range(planes.shape[0])
    )


def signs_to_bits(values: np.ndarray) -> np.ndarray:
    """Pack real values by ``sign`` with ``sign(0) = +1`` (BitFlow-Net Eq. 2): bit = value < 0."""
    return pack_bits(np.asarray(values) < 0)


__all__ = ["pack_bits", "plane_levels", "signs_to_bits", "unpack_bits"]

"""Bit packing in the engine layout (docs/architecture.md §2), numpy only.

Channel ``c`` of a row sits at bit ``c % 64`` of word ``c // 64`` (LSB first); a packed bit is 1
iff the value is -1 (value < 0, so 0 and -0.0 pack to 0); padding bits of the last word are 0.
"""

from __future__ import annotations

import numpy as np


def pack_bits(negative: np.ndarray) -> np.ndarray:
    """Pack a boolean array ``[..., C]`` (True = -1) into uint64 ``[..., ceil(C / 64)]``."""
    neg = np.asarray(negative, dtype=bool)
    if neg.ndim < 1:
        raise ValueError("pack_bits needs at least one axis")
    c = neg.shape[-1]
    words = (c + 63) // 64
    by = np.packbits(neg, axis=-1, bitorder="little")  # [..., ceil(C/8)], last byte zero-padded
    if by.shape[-1] != words * 8:
        full = np.zeros((*by.shape[:-1], words * 8), np.uint8)
        full[..., : by.shape[-1]] = by
        by = full
    return np.ascontiguousarray(by).view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, channels: int, groups: int = 1) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint64 ``[..., groups * ceil(C/64)]`` -> bool ``[..., groups * C]``.

    ``groups > 1`` unpacks a flattened map whose groups (pixels) each keep their word padding.
    """
    w = np.ascontiguousarray(words, dtype="<u8")
    cw = (channels + 63) // 64
    if w.shape[-1] != groups * cw:
        raise ValueError(f"expected {groups * cw} words in the last axis, got {w.shape[-1]}")
    w = w.reshape(*w.shape[:-1], groups, cw)
    bits = np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little")[..., :channels]
    return bits.astype(bool).reshape(*w.shape[:-2], groups * channels)


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

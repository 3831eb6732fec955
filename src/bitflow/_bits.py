"""Bit packing in the engine layout (docs/architecture.md §2), numpy only: the one
implementation in Python, shared by ``bitflow.ir`` (the graph's bits), ``bitflow.nn.mbbn``
(packed planes) and the tools on top.

Channel ``c`` of a row sits at bit ``c % 64`` of word ``c // 64`` (LSB first); padding bits of
the last word are 0. In the engine's bits a set bit means -1.
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


__all__ = ["pack_bits", "unpack_bits"]

"""Independent numpy oracles for the native kernel tests (no call into bitflow._native)."""

from __future__ import annotations

import numpy as np

ALL_KERNELS = ("ref", "scalar", "avx2", "avx512", "neon")


def pack_bits(x: np.ndarray) -> np.ndarray:
    """Pack the last axis LSB-first into uint64 words: bit c%64 of word c//64 is (x[c] < 0)."""
    c = x.shape[-1]
    words = -(-c // 64)
    bits = np.zeros(x.shape[:-1] + (words * 64,), dtype=np.uint64)
    bits[..., :c] = (x < 0).astype(np.uint64)
    bits = bits.reshape(x.shape[:-1] + (words, 64))
    return np.bitwise_or.reduce(bits << np.arange(64, dtype=np.uint64), axis=-1)


def unpack_pm(words: np.ndarray, c: int) -> np.ndarray:
    """Inverse of pack_bits to +-1 float64 values over the first c channels."""
    shifts = np.arange(64, dtype=np.uint64)
    bits = (words[..., :, None] >> shifts) & np.uint64(1)
    bits = bits.reshape(words.shape[:-1] + (words.shape[-1] * 64,))[..., :c]
    return 1.0 - 2.0 * bits.astype(np.float64)


def random_pm(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random +-1 float32 values."""
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)

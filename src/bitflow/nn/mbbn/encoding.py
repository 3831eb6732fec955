"""MBBN levels and planes: the odd-level code of Eq. 7, ``encode`` / ``decode`` between levels
and ``{-1,+1}`` planes, and the unsigned form ``q = (v + A) / 2`` (see :mod:`bitflow.nn.mbbn`)."""

from __future__ import annotations

from typing import Any, overload

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

MAX_BITS = 16
"""Largest plane count accepted (levels up to 2^16 - 1 keep int32 products of planes exact)."""

# ============================================================================ levels and planes


def _check_bits(bits: object, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(bits).__name__}")
    if not 1 <= int(bits) <= MAX_BITS:
        raise ValueError(f"{name} must be in 1..{MAX_BITS}, got {bits}")
    return int(bits)


def max_level(bits: int) -> int:
    """``A = 2^M - 1``: the largest odd level of an ``M``-bit code (Eq. 7 with all planes +1)."""
    return (1 << _check_bits(bits)) - 1


def odd_levels(bits: int) -> list[int]:
    """All ``2^M`` odd levels ``-(2^M-1), ..., -1, 1, ..., 2^M-1`` of an ``M``-bit code."""
    a = max_level(bits)
    return list(range(-a, a + 1, 2))


def _int_values(v: Any, what: str) -> NDArray[np.int64]:
    """``v`` (numpy array, tensor or array-like) as int64, refusing non-integral values."""
    if isinstance(v, Tensor):
        v = v.detach().cpu().numpy()
    arr = np.asarray(v)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(
            f"{what} must hold integers (integer or float dtype), got dtype {arr.dtype}"
        )
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} contains NaN or infinity")
        if np.any(arr != np.round(arr)):
            bad = tuple(int(i) for i in np.argwhere(arr != np.round(arr))[0])
            raise ValueError(f"{what} must be integer-valued; element {bad} is {arr[bad]!r}")
    return arr.astype(np.int64)


@overload
def encode(v: Tensor, bits: int) -> Tensor: ...
@overload
def encode(v: np.ndarray, bits: int) -> np.ndarray: ...
def encode(v: Tensor | np.ndarray, bits: int) -> Tensor | np.ndarray:
    """Planes ``[M, *v.shape]`` in ``{-1, +1}`` of odd levels ``v`` (Eq. 7, engine convention).

    ``c_m = +1`` iff bit ``m`` of ``q = (v + 2^M - 1) / 2`` is 1; ``decode(encode(v, M)) == v``.
    Returns the type of ``v`` (a tensor keeps its dtype and device; numpy gives int8 planes).
    Raises ``ValueError`` for a non-integer, even or out-of-range level.
    """
    m_bits = _check_bits(bits)
    a = (1 << m_bits) - 1
    vi = _int_values(v, "encode: levels")
    odd = (vi % 2) == 1  # numpy % follows the divisor's sign, so -3 % 2 == 1
    if not np.all(odd):
        bad = tuple(int(i) for i in np.argwhere(~odd)[0])
        raise ValueError(
            f"encode: level {int(vi[bad])} at index {bad} is even; {m_bits}-bit levels are odd"
        )
    if vi.size and np.abs(vi).max() > a:
        bad = tuple(int(i) for i in np.argwhere(np.abs(vi) > a)[0])
        raise ValueError(
            f"encode: level {int(vi[bad])} at index {bad} is outside [-{a}, {a}] for bits={m_bits}"
        )
    q = (vi + a) // 2
    planes = np.stack([((q >> m) & 1) * 2 - 1 for m in range(m_bits)]).astype(np.int8)
    if isinstance(v, Tensor):
        return torch.from_numpy(planes).to(device=v.device, dtype=v.dtype)
    return planes


@overload
def decode(planes: Tensor) -> Tensor: ...
@overload
def decode(planes: np.ndarray) -> np.ndarray: ...
def decode(planes: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Levels ``v = sum_m 2^m planes[m]`` of planes ``[M, ...]`` in ``{-1, +1}`` (Eq. 7).

    Numpy input gives int64 levels; a tensor keeps its dtype (the sum is differentiable).
    """
    if isinstance(planes, Tensor):
        vals = planes.detach()
        if planes.dim() < 1:
            raise ValueError("decode: planes need a leading plane axis, got a 0-d tensor")
        _check_bits(planes.shape[0], "decode: number of planes")
        if not bool(((vals == 1) | (vals == -1)).all()):
            raise ValueError("decode: planes must hold only -1 and +1")
        weights = torch.tensor(
            [float(1 << m) for m in range(planes.shape[0])],
            dtype=planes.dtype,
            device=planes.device,
        )
        return torch.tensordot(weights, planes, dims=([0], [0]))
    arr = _int_values(planes, "decode: planes")
    if arr.ndim < 1:
        raise ValueError("decode: planes need a leading plane axis, got a 0-d array")
    _check_bits(arr.shape[0], "decode: number of planes")
    if not np.all((arr == 1) | (arr == -1)):
        raise ValueError("decode: planes must hold only -1 and +1")
    weights64 = np.array([1 << m for m in range(arr.shape[0])], dtype=np.int64)
    return np.tensordot(weights64, arr, axes=([0], [0]))


def levels_to_unsigned(v: Any, bits: int) -> NDArray[np.int64]:
    """``q = (v + 2^M - 1) / 2`` in ``0..2^M-1``: the ``{0,1}`` code ``x^{0,1}`` of Eq. 17."""
    a = max_level(bits)
    vi = _int_values(v, "levels")
    if np.any(vi % 2 != 1) or (vi.size and np.abs(vi).max() > a):
        raise ValueError(f"levels must be odd integers in [-{a}, {a}] for bits={bits}")
    return (vi + a) // 2


def unsigned_to_levels(q: Any, bits: int) -> NDArray[np.int64]:
    """``v = 2q - (2^M - 1)``: Eq. 17 times ``2^M - 1``, the inverse of :func:`levels_to_unsigned`."""
    a = max_level(bits)
    qi = _int_values(q, "unsigned codes")
    if qi.size and (qi.min() < 0 or qi.max() > a):
        raise ValueError(f"unsigned codes must lie in 0..{a} for bits={bits}")
    return 2 * qi - a

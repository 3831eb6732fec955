"""The MBBN arithmetic on packed planes in numpy (Eq. 8, Eq. 18): the definition the native
``bgemm_planes`` / ``bconv2d_planes`` kernels are tested against, plus the speed-up model and the
accumulator bound."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import Tensor

from ..._bits import pack_bits as pack_bits_shared
from .encoding import _check_bits, _int_values, encode, max_level

# ============================================================================ packed bits (numpy)


def pack_bits(bits01: Any) -> NDArray[np.uint64]:
    """Pack a ``{0, 1}`` array ``[..., N]`` along its last axis into ``uint64 [..., ceil(N/64)]``.

    LSB first: element ``n`` lands in bit ``n % 64`` of word ``n // 64``; padding bits are 0.
    """
    arr = np.asarray(bits01)
    if arr.ndim < 1:
        raise ValueError("pack_bits: need at least one axis")
    if arr.dtype != np.bool_:
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError("pack_bits: values must be 0 or 1")
    if arr.shape[-1] == 0:
        return np.zeros(arr.shape[:-1] + (1,), dtype=np.uint64)
    return pack_bits_shared(arr.astype(bool))


def pack_planes(planes: Any) -> NDArray[np.uint64]:
    """Pack ``{-1, +1}`` planes ``[M, ..., N]`` into engine bits (bit 1 iff the value is -1)."""
    arr = np.asarray(planes.detach().cpu().numpy() if isinstance(planes, Tensor) else planes)
    if not np.all((arr == 1) | (arr == -1)):
        raise ValueError("pack_planes: planes must hold only -1 and +1")
    return pack_bits(arr < 0)


def popcount(a: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Number of set bits of every ``uint64`` word."""
    return np.bitwise_count(np.asarray(a, dtype=np.uint64)).astype(np.int64)


def _check_packed(a: Any, name: str) -> NDArray[np.uint64]:
    arr = np.asarray(a)
    if arr.dtype != np.uint64:
        raise TypeError(f"{name} must be uint64 packed bits, got dtype {arr.dtype}")
    return arr


def xnor_popcount(a: NDArray[np.uint64], b: NDArray[np.uint64], n: int) -> NDArray[np.int64]:
    """``dot = N - 2 popcount(a XOR b)`` over the last axis (``XnorPopcount`` of Eq. 8).

    ``popcount(XNOR)`` over the ``N`` real positions counts agreements ``N - popcount(XOR)``;
    agreements minus disagreements is the ``{-1, +1}`` dot product. Padding bits are 0 in both
    operands, so they never count.
    """
    a, b = _check_packed(a, "a"), _check_packed(b, "b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"packed operands disagree in words: {a.shape[-1]} vs {b.shape[-1]}")
    if not 0 <= n <= 64 * a.shape[-1]:
        raise ValueError(f"n={n} real positions do not fit in {a.shape[-1]} words")
    return n - 2 * popcount(a ^ b).sum(axis=-1)


def plane_gemm(a: NDArray[np.uint64], b: NDArray[np.uint64], n: int) -> NDArray[np.int64]:
    """Reference of the engine's ``bgemm_planes`` (Eq. 8 without the scale).

    ``a`` uint64 ``[Pa, R, Kw]`` (activation planes, rows), ``b`` uint64 ``[Pw, C, Kw]`` (weight
    planes) -> int64 ``[R, C]`` with ``out[r, c] = sum_i sum_j 2^(i+j) (n - 2 popcount(a[i, r]
    ^ b[j, c]))``.
    """
    a, b = _check_packed(a, "a"), _check_packed(b, "b")
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(
            f"plane_gemm needs a [Pa, R, Kw] and b [Pw, C, Kw], got {a.shape} and {b.shape}"
        )
    out = np.zeros((a.shape[1], b.shape[1]), dtype=np.int64)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out += (1 << (i + j)) * xnor_popcount(a[i][:, None, :], b[j][None, :, :], n)
    return out


def encoded_dot(x_levels: Any, w_levels: Any, bits_x: int, bits_w: int) -> NDArray[np.int64]:
    """``x . w`` of odd-level vectors through Eq. 8: encode, pack, ``M*K`` xnor-popcounts.

    ``x_levels`` ``[R, N]`` (or ``[N]``) and ``w_levels`` ``[C, N]`` (or ``[N]``) -> int64
    ``[R, C]`` (scalars/vectors for 1-D inputs, like ``np.dot``).
    """
    x = _int_values(x_levels, "x_levels")
    w = _int_values(w_levels, "w_levels")
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(f"length mismatch: {x.shape[-1]} vs {w.shape[-1]}")
    x2, w2 = np.atleast_2d(x), np.atleast_2d(w)
    out = plane_gemm(pack_planes(encode(x2, bits_x)), pack_planes(encode(w2, bits_w)), x.shape[-1])
    if x.ndim == 1 and w.ndim == 1:
        return out[0, 0]
    if x.ndim == 1:
        return out[0]
    if w.ndim == 1:
        return out[:, 0]
    return out


def unsigned_plane_dot(qx: Any, qw: Any, bits_x: int, bits_w: int) -> int:
    """``sum_n qx_n qw_n`` of ``{0,1}``-coded unsigned integers by AND-popcount planes (Eq. 6).

    ``qx`` in ``0..2^M-1``, ``qw`` in ``0..2^K-1``; ``x = sum_m 2^m c_m`` with ``c_m`` in
    ``{0, 1}`` (Eq. 4), so ``x . w = sum_{m,k} 2^(m+k) popcount(c_m AND d_k)``.
    """
    m_bits, k_bits = _check_bits(bits_x, "bits_x"), _check_bits(bits_w, "bits_w")
    x, w = _int_values(qx, "qx").ravel(), _int_values(qw, "qw").ravel()
    if x.shape != w.shape:
        raise ValueError(f"length mismatch: {x.size} vs {w.size}")
    if x.size and (x.min() < 0 or x.max() >= 1 << m_bits or w.min() < 0 or w.max() >= 1 << k_bits):
        raise ValueError(f"codes must lie in 0..{(1 << m_bits) - 1} and 0..{(1 << k_bits) - 1}")
    cx = [pack_bits((x >> m) & 1) for m in range(m_bits)]
    dw = [pack_bits((w >> k) & 1) for k in range(k_bits)]
    return int(
        sum(
            (1 << (m + k)) * int(popcount(cx[m] & dw[k]).sum())
            for m in range(m_bits)
            for k in range(k_bits)
        )
    )


def zero_one_dot(qx: Any, qw: Any, bits_x: int, bits_w: int) -> int:
    """``sum_n v_x v_w`` computed the ``{0,1}`` way (Eq. 17-18), ``v = 2q - (2^M - 1)``.

    Eq. 17 reads ``x^q = 2 x01 / A - 1`` with ``A = 2^M - 1`` (so ``A x^q = v``); per element
    Eq. 18 is ``x^q w^q = 4 x01 w01 / (AB) - 2 x01 / A - 2 w01 / B + 1``. Multiplying by ``AB``
    and summing over the ``N`` positions gives integers only::

        sum v_x v_w = 4 sum x01 w01 - 2B sum x01 - 2A sum w01 + N A B

    The first sum is :func:`unsigned_plane_dot` (AND-popcount planes); the two correction sums
    and the constant are the extra work that the ``{-1,+1}`` code (Eq. 19) avoids.
    """
    a, b = max_level(bits_x), max_level(bits_w)
    x, w = _int_values(qx, "qx").ravel(), _int_values(qw, "qw").ravel()
    n = x.size
    return (
        4 * unsigned_plane_dot(x, w, bits_x, bits_w)
        - 2 * b * int(x.sum())
        - 2 * a * int(w.sum())
        + n * a * b
    )


def speedup_theory(
    m_bits: int,
    k_bits: int,
    n: int,
    gamma: float = 1.91,
    beta: float | None = None,
    register_bits: int = 64,
) -> float:
    """The MBBN paper's theoretical speed-up ``S_MK`` over a float MAC dot product (Eq. 16)::

        S_MK = N gamma / (M K (gamma + 2 ceil(N / L)) + (M K - 1) beta)

    ``gamma`` = MAC vs bitwise speed ratio (1.91, after TBN), ``beta = gamma / 2`` (the paper's
    assumption), ``L`` = register length (64). With ``N = 8192`` (the paper's 8192^3 GEMM) and
    ``M = K = 2`` this is 15.125, the "~15.13x" the paper quotes.
    """
    m_bits, k_bits = _check_bits(m_bits, "m_bits"), _check_bits(k_bits, "k_bits")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if beta is None:
        beta = gamma / 2
    mk = m_bits * k_bits
    return n * gamma / (mk * (gamma + 2 * math.ceil(n / register_bits)) + (mk - 1) * beta)


def accumulator_bound(fan_in: int, bits_x: int, bits_w: int) -> int:
    """Largest ``|x . w|`` of a layer: ``fan_in (2^M - 1)(2^K - 1)``.

    Float32 accumulates exactly while this is ``< 2^24``; the engine's int32 needs ``< 2^31``.
    """
    return int(fan_in) * max_level(bits_x) * max_level(bits_w)

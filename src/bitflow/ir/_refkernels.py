"""numpy kernels of the reference executor (the definitions the engines reproduce; see
:mod:`bitflow.ir.reference` for the semantics and :mod:`bitflow.ir.ops` for the op table)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .bits import pack_bits, plane_levels
from .nodes import GraphError, Op

F32_EXACT = 2**24  # float32 represents every integer below 2^24 exactly


def popcount(a: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a)
    lut = np.array([bin(i).count("1") for i in range(256)], np.uint8)  # pragma: no cover
    return lut[a.view(np.uint8)].reshape(*a.shape, 8).sum(-1)  # pragma: no cover


def windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """``[N, Hp, Wp, C]`` -> view ``[N, Ho, Wo, kh, kw, C]`` of sliding windows."""
    v = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))  # [N,H',W',C,kh,kw]
    return v[:, ::sh, ::sw].transpose(0, 1, 2, 4, 5, 3)


def pad(x: np.ndarray, ph: int, pw: int, value: float | int) -> np.ndarray:
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=value)


def im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Padded ``[N, Hp, Wp, C]`` -> ``[N*Ho*Wo, kh*kw*C]`` rows (tap-major, channel-minor)."""
    n, hp, wp, c = xp.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols = np.empty((n, ho, wo, kh, kw, c), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[
                :, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :
            ]
    return cols.reshape(n * ho * wo, kh * kw * c)


def conv_generic(
    xp: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int],
    acc: type,
    expand: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Cross-correlation of a padded ``xp [N,Hp,Wp,B]`` with ``w [O,kh,kw,K]`` in ``acc``.

    ``y[n, p, q, o] = sum_{i, j, k} X[n, p*sh + i, q*sw + j, k] * w[o, i, j, k]`` where ``X`` is
    ``expand(xp)`` (``expand`` maps the last axis of B codes to K values; identity by default;
    it is applied after gathering so that only the small codes are copied around). For stride 1
    in height only the ``kw`` horizontal taps of every padded row are gathered, multiplied by all
    ``kh`` kernel rows in one GEMM, and the ``kh`` row-shifted partial results are summed
    (``kh`` times less copying than a full im2col).
    """
    o, kh, kw, k = w.shape
    sh, sw = stride
    n, hp, wp, _ = xp.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    ex = expand if expand is not None else (lambda a: a.astype(acc, copy=False))
    wa: np.ndarray = w.astype(acc, copy=False)
    if sh != 1 or kw * k < 64:  # strided, or too few columns for the row trick to pay off
        cols = ex(im2col(xp, kh, kw, sh, sw))
        return (cols.reshape(n * ho * wo, kh * kw * k) @ wa.reshape(o, -1).T).reshape(n, ho, wo, o)
    rows = np.empty((n, hp, wo, kw, xp.shape[3]), xp.dtype)  # horizontal taps of every padded row
    for j in range(kw):
        rows[:, :, :, j, :] = xp[:, :, j : j + (wo - 1) * sw + 1 : sw, :]
    # z[n, r, q, i, o] = sum_{j, k} X[n, r, q + j, k] w[o, i, j, k]  (one GEMM for all i)
    z = ex(rows).reshape(n * hp * wo, kw * k) @ wa.transpose(2, 3, 1, 0).reshape(kw * k, kh * o)
    z = z.reshape(n, hp, wo, kh, o)
    y = z[:, 0:ho, :, 0, :].copy()
    for i in range(1, kh):
        y += z[:, i : i + ho, :, i, :]
    return y


def conv(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    pad_value: float,
    acc: type,
) -> np.ndarray:
    """Zero-padded cross-correlation of ``x [N,H,W,C]`` with ``w [O,kh,kw,C]`` in ``acc``."""
    xp = pad(x.astype(acc, copy=False), padding[0], padding[1], pad_value)
    return conv_generic(xp, w, stride, acc)


def pool(x: np.ndarray, op: Op, fill: Any, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    kh, kw = op.attrs["kernel"]
    sh, sw = op.attrs["stride"]
    ph, pw = op.attrs["padding"]
    win = windows(pad(x, ph, pw, fill), kh, kw, sh, sw)
    return np.ascontiguousarray(reduce(reduce(win, axis=3), axis=3))


_LUT_CACHE: dict[type, np.ndarray] = {}
_ZERO_CODE = 256  # byte code of a zero-padded position: expands to eight 0 values


def byte_lut(dtype: type) -> np.ndarray:
    """``[257, 8]`` table: byte -> its 8 bits as +-1 values (LSB first, bit 1 = -1); row 256 = 0."""
    lut = _LUT_CACHE.get(dtype)
    if lut is None:
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
        lut = np.concatenate([(1 - 2 * bits), np.zeros((1, 8), np.int64)]).astype(dtype)
        _LUT_CACHE[dtype] = lut
    return lut


def byte_codes(words: np.ndarray, channels: int) -> np.ndarray:
    """Packed words ``[..., Cw]`` -> the ``ceil(C/8)`` little-endian bytes holding the channels
    (channel ``c`` is bit ``c % 8`` of byte ``c // 8``), as uint16 codes."""
    by = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return by[..., : (channels + 7) // 8].astype(np.uint16)


def pm1(words: np.ndarray, channels: int, dtype: type) -> np.ndarray:
    """Packed bits -> +-1 values ``[..., C]`` (bit 1 = -1)."""
    vals = byte_lut(dtype)[byte_codes(words, channels)]
    return vals.reshape(*vals.shape[:-2], -1)[..., :channels]


def expect(op: Op, x: np.ndarray, dtype: type) -> None:
    if x.dtype != dtype:
        raise GraphError(
            f"op {op.name!r} ({op.type}) got a {x.dtype} tensor, expected {np.dtype(dtype)}"
        )


def bconv(op: Op, x: np.ndarray, w: np.ndarray, channels: int) -> np.ndarray:
    """``sign(x) (*) sign(w)`` with zero (``pad_value=0``) or +1 (``pad_value=1``) padding.

    Works on byte codes of the packed channels: padding is the code 256 (eight zeros) or 0 (eight
    +1), and the codes are expanded to +-1 floats only after the im2col gather. Channels past
    ``C`` in the last byte meet zero weights, so they never count. Exact: integer sums below
    2^24 in float32 (else float64).
    """
    o, kh, kw, _ = w.shape
    acc = np.float32 if kh * kw * channels < F32_EXACT else np.float64
    nb = (channels + 7) // 8
    ws = np.zeros((o, kh, kw, nb * 8), acc)
    ws[..., :channels] = pm1(w, channels, acc)
    ph, pw = op.attrs["padding"]
    fill = _ZERO_CODE if int(op.attrs["pad_value"]) == 0 else 0
    xp = pad(byte_codes(x, channels), ph, pw, fill)
    lut = byte_lut(acc)

    def expand(codes: np.ndarray) -> np.ndarray:
        v = lut[codes]
        return v.reshape(*v.shape[:-2], -1)

    y = conv_generic(xp, ws, tuple(op.attrs["stride"]), acc, expand)
    return y.astype(np.int32)


def bconv_levels(op: Op, xs: np.ndarray, w: np.ndarray, channels: int) -> np.ndarray:
    """MBBN convolution of ``M`` activation planes with ``K`` weight planes: the integer
    convolution of the decoded levels (one GEMM; the definition the engine's ``M x K`` plane
    products, Eq. 8, must reproduce). A plane padded with 0 pads level 0; one padded with +1
    (``pad_value=1``) pads level ``2^M - 1``. Exact: float32 while the fan-in times the largest
    product ``(2^M - 1)(2^K - 1)`` stays below 2^24, float64 (below 2^53) otherwise."""
    m, k_planes = xs.shape[0], w.shape[0]
    _, kh, kw, _ = w.shape[1:]
    bound = kh * kw * channels * ((1 << m) - 1) * ((1 << k_planes) - 1)
    if bound >= 2**53:
        raise GraphError(
            f"op {op.name!r}: accumulator bound {bound} exceeds exact float64 integers"
        )
    acc = np.float32 if bound < F32_EXACT else np.float64
    xl = plane_levels(xs, channels).astype(acc)
    wl = plane_levels(w, channels).astype(acc)
    ph, pw = op.attrs["padding"]
    pad_level = 0 if int(op.attrs["pad_value"]) == 0 else (1 << m) - 1
    y = conv_generic(pad(xl, ph, pw, pad_level), wl, tuple(op.attrs["stride"]), acc)
    return y.astype(np.int64).astype(np.int32)


def bdense(x: np.ndarray, w: np.ndarray, k_bits: int) -> np.ndarray:
    n, kw = x.shape
    o = w.shape[0]
    out = np.empty((n, o), np.int64)
    step = max(1, (1 << 22) // max(1, o * kw))
    for i in range(0, n, step):
        pc = popcount(x[i : i + step, None, :] ^ w[None, :, :]).sum(axis=-1, dtype=np.int64)
        out[i : i + step] = k_bits - 2 * pc
    return out


def threshold(x: np.ndarray, thr: np.ndarray, direction: np.ndarray) -> np.ndarray:
    neg = np.where(direction > 0, x < thr, x > thr)
    return pack_bits(neg)

"""Reference executor: runs a :class:`~bitflow.ir.graph.Graph` with plain numpy.

This is the definition every engine must reproduce: integer and bit ops exactly, float ops
within rounding (float convolutions and dense layers accumulate in float64 and round once).

- Binary convolution (BitFlow-Net Eq. 4): ``y = sign(x) (*) sign(w)``, computed by unpacking
  the bits to +-1 and summing products (exact: integer sums below 2^24 in float32, else float64).
  Zero padding (``pad_value=0``) pads the +-1 map with 0, one-padding with +1 (ARCHITECTURE 2).
- Binary dense: ``dot = k_bits - 2 popcount(a XOR b)`` on the packed words (padding bits are 0
  in both operands, so they never count).
- MBBN plane convolution (``bconv2d_planes``): the integer convolution of the decoded odd
  levels ``sum_i 2^i c_i`` (MBBN Eq. 7) in one GEMM; the engines compute it as ``M x K``
  weighted binary products (Eq. 8), two independent routes to the same integers. The plane
  dense layer (``bdense_planes``, small) sums the ``M x K`` popcount products.
- Thresholds: bit 1 (-1) iff ``x < thr`` (direction +1) or ``x > thr`` (direction -1), i.e.
  +1 iff ``x >= thr`` resp. ``x <= thr``; a NaN float is never on the -1 side. Plane
  thresholds (``threshold_planes`` on int32, ``threshold_f32_planes`` on float32) count the
  passed thresholds ``q`` of a channel's ``2^M - 1`` and emit bit ``m`` of ``q`` as plane ``m``.
- Pools ignore padded positions (PyTorch pads max-pooling with -inf); on bits the max of +-1
  values is an AND of packed bits and the min an OR.

In ``bitflow`` mode only integer/bit tensors may flow between the first and the last layer;
the graph validation enforces it and every binary op re-checks its input dtype at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .bits import pack_bits, plane_levels
from .graph import Graph, GraphError, Op, ValueInfo

_F32_EXACT = 2**24  # float32 represents every integer below 2^24 exactly


def _popcount(a: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a)
    lut = np.array([bin(i).count("1") for i in range(256)], np.uint8)  # pragma: no cover
    return lut[a.view(np.uint8)].reshape(*a.shape, 8).sum(-1)  # pragma: no cover


def _windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """``[N, Hp, Wp, C]`` -> view ``[N, Ho, Wo, kh, kw, C]`` of sliding windows."""
    v = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))  # [N,H',W',C,kh,kw]
    return v[:, ::sh, ::sw].transpose(0, 1, 2, 4, 5, 3)


def _pad(x: np.ndarray, ph: int, pw: int, value: float | int) -> np.ndarray:
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=value)


def _im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Padded ``[N, Hp, Wp, C]`` -> ``[N*Ho*Wo, kh*kw*C]`` rows (tap-major, channel-minor)."""
    n, hp, wp, c = xp.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols = np.empty((n, ho, wo, kh, kw, c), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i: i + (ho - 1) * sh + 1: sh, j: j + (wo - 1) * sw + 1: sw, :]
    return cols.reshape(n * ho * wo, kh * kw * c)


def _conv_generic(
    xp: np.ndarray, w: np.ndarray, stride: tuple[int, int], acc: type,
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
        cols = ex(_im2col(xp, kh, kw, sh, sw))
        return (cols.reshape(n * ho * wo, kh * kw * k) @ wa.reshape(o, -1).T).reshape(n, ho, wo, o)
    rows = np.empty((n, hp, wo, kw, xp.shape[3]), xp.dtype)  # horizontal taps of every padded row
    for j in range(kw):
        rows[:, :, :, j, :] = xp[:, :, j: j + (wo - 1) * sw + 1: sw, :]
    # z[n, r, q, i, o] = sum_{j, k} X[n, r, q + j, k] w[o, i, j, k]  (one GEMM for all i)
    z = ex(rows).reshape(n * hp * wo, kw * k) @ wa.transpose(2, 3, 1, 0).reshape(kw * k, kh * o)
    z = z.reshape(n, hp, wo, kh, o)
    y = z[:, 0:ho, :, 0, :].copy()
    for i in range(1, kh):
        y += z[:, i: i + ho, :, i, :]
    return y


def _conv(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], padding: tuple[int, int],
          pad_value: float, acc: type) -> np.ndarray:
    """Zero-padded cross-correlation of ``x [N,H,W,C]`` with ``w [O,kh,kw,C]`` in ``acc``."""
    xp = _pad(x.astype(acc, copy=False), padding[0], padding[1], pad_value)
    return _conv_generic(xp, w, stride, acc)


def _pool(x: np.ndarray, op: Op, fill: Any, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    kh, kw = op.attrs["kernel"]
    sh, sw = op.attrs["stride"]
    ph, pw = op.attrs["padding"]
    win = _windows(_pad(x, ph, pw, fill), kh, kw, sh, sw)
    return np.ascontiguousarray(reduce(reduce(win, axis=3), axis=3))


_LUT_CACHE: dict[type, np.ndarray] = {}
_ZERO_CODE = 256  # byte code of a zero-padded position: expands to eight 0 values


def _byte_lut(dtype: type) -> np.ndarray:
    """``[257, 8]`` table: byte -> its 8 bits as +-1 values (LSB first, bit 1 = -1); row 256 = 0."""
    lut = _LUT_CACHE.get(dtype)
    if lut is None:
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
        lut = np.concatenate([(1 - 2 * bits), np.zeros((1, 8), np.int64)]).astype(dtype)
        _LUT_CACHE[dtype] = lut
    return lut


def _byte_codes(words: np.ndarray, channels: int) -> np.ndarray:
    """Packed words ``[..., Cw]`` -> the ``ceil(C/8)`` little-endian bytes holding the channels
    (channel ``c`` is bit ``c % 8`` of byte ``c // 8``), as uint16 codes."""
    by = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return by[..., : (channels + 7) // 8].astype(np.uint16)


def _pm1(words: np.ndarray, channels: int, dtype: type) -> np.ndarray:
    """Packed bits -> +-1 values ``[..., C]`` (bit 1 = -1)."""
    vals = _byte_lut(dtype)[_byte_codes(words, channels)]
    return vals.reshape(*vals.shape[:-2], -1)[..., :channels]


def _expect(op: Op, x: np.ndarray, dtype: type) -> None:
    if x.dtype != dtype:
        raise GraphError(f"op {op.name!r} ({op.type}) got a {x.dtype} tensor, expected {np.dtype(dtype)}")


def _bconv(op: Op, x: np.ndarray, w: np.ndarray, channels: int) -> np.ndarray:
    """``sign(x) (*) sign(w)`` with zero (``pad_value=0``) or +1 (``pad_value=1``) padding.

    Works on byte codes of the packed channels: padding is the code 256 (eight zeros) or 0 (eight
    +1), and the codes are expanded to +-1 floats only after the im2col gather. Channels past
    ``C`` in the last byte meet zero weights, so they never count. Exact: integer sums below
    2^24 in float32 (else float64).
    """
    o, kh, kw, _ = w.shape
    acc = np.float32 if kh * kw * channels < _F32_EXACT else np.float64
    nb = (channels + 7) // 8
    ws = np.zeros((o, kh, kw, nb * 8), acc)
    ws[..., :channels] = _pm1(w, channels, acc)
    ph, pw = op.attrs["padding"]
    fill = _ZERO_CODE if int(op.attrs["pad_value"]) == 0 else 0
    xp = _pad(_byte_codes(x, channels), ph, pw, fill)
    lut = _byte_lut(acc)

    def expand(codes: np.ndarray) -> np.ndarray:
        v = lut[codes]
        return v.reshape(*v.shape[:-2], -1)

    y = _conv_generic(xp, ws, tuple(op.attrs["stride"]), acc, expand)
    return y.astype(np.int32)


def _bconv_levels(op: Op, xs: np.ndarray, w: np.ndarray, channels: int) -> np.ndarray:
    """MBBN convolution of ``M`` activation planes with ``K`` weight planes: the integer
    convolution of the decoded levels (one GEMM; the definition the engine's ``M x K`` plane
    products, Eq. 8, must reproduce). A plane padded with 0 pads level 0; one padded with +1
    (``pad_value=1``) pads level ``2^M - 1``. Exact: float32 while the fan-in times the largest
    product ``(2^M - 1)(2^K - 1)`` stays below 2^24, float64 (below 2^53) otherwise."""
    m, k_planes = xs.shape[0], w.shape[0]
    _, kh, kw, _ = w.shape[1:]
    bound = kh * kw * channels * ((1 << m) - 1) * ((1 << k_planes) - 1)
    if bound >= 2**53:
        raise GraphError(f"op {op.name!r}: accumulator bound {bound} exceeds exact float64 integers")
    acc = np.float32 if bound < _F32_EXACT else np.float64
    xl = plane_levels(xs, channels).astype(acc)
    wl = plane_levels(w, channels).astype(acc)
    ph, pw = op.attrs["padding"]
    pad = 0 if int(op.attrs["pad_value"]) == 0 else (1 << m) - 1
    y = _conv_generic(_pad(xl, ph, pw, pad), wl, tuple(op.attrs["stride"]), acc)
    return y.astype(np.int64).astype(np.int32)


def _bdense(x: np.ndarray, w: np.ndarray, k_bits: int) -> np.ndarray:
    n, kw = x.shape
    o = w.shape[0]
    out = np.empty((n, o), np.int64)
    step = max(1, (1 << 22) // max(1, o * kw))
    for i in range(0, n, step):
        pc = _popcount(x[i: i + step, None, :] ^ w[None, :, :]).sum(axis=-1, dtype=np.int64)
        out[i: i + step] = k_bits - 2 * pc
    return out


def _threshold(x: np.ndarray, thr: np.ndarray, direction: np.ndarray) -> np.ndarray:
    neg = np.where(direction > 0, x < thr, x > thr)
    return pack_bits(neg)


def _run_op(g: Graph, op: Op, x: np.ndarray, vin: ValueInfo) -> np.ndarray:
    t = op.type
    p = {role: g.tensors[name] for role, name in op.params.items()}
    a = op.attrs
    if t == "conv2d_f32":
        _expect(op, x, np.float32)
        y = _conv(x, p["w"], tuple(a["stride"]), tuple(a["padding"]), 0.0, np.float64)
        if "bias" in p:
            y = y + p["bias"].astype(np.float64)
        return y.astype(np.float32)
    if t == "conv2d_u8i8":
        _expect(op, x, np.uint8)
        y = _conv(x, p["w"], tuple(a["stride"]), tuple(a["padding"]), 0.0, np.float64)
        return y.astype(np.int32)
    if t == "bconv2d":
        _expect(op, x, np.uint64)
        return _bconv(op, x, p["w"], vin.channels or 0)
    if t == "bconv2d_planes":
        _expect(op, x, np.uint64)
        xs = x if vin.planes > 1 else x[None]
        return _bconv_levels(op, xs, p["w"], vin.channels or 0)
    if t == "bdense":
        _expect(op, x, np.uint64)
        return _bdense(x, p["w"], int(a["k_bits"])).astype(np.int32)
    if t == "bdense_planes":
        _expect(op, x, np.uint64)
        xs = x if vin.planes > 1 else x[None]
        acc = sum(
            (1 << (i + j)) * _bdense(xs[i], p["w"][j], int(a["k_bits"]))
            for i in range(xs.shape[0]) for j in range(p["w"].shape[0])
        )
        return np.asarray(acc).astype(np.int32)
    if t == "maxpool_bits":
        _expect(op, x, np.uint64)
        if a["op"] == "and":
            return _pool(x, op, np.uint64(0xFFFFFFFFFFFFFFFF), np.bitwise_and.reduce)
        return _pool(x, op, np.uint64(0), np.bitwise_or.reduce)
    if t == "maxpool_i32":
        _expect(op, x, np.int32)
        return _pool(x, op, np.iinfo(np.int32).min, np.max)
    if t == "maxpool_f32":
        _expect(op, x, np.float32)
        return _pool(x, op, -np.inf, np.max)
    if t == "threshold_bits":
        _expect(op, x, np.int32)
        return _threshold(x, p["thr"], p["direction"])
    if t == "threshold_f32_bits":
        _expect(op, x, np.float32)
        return _threshold(x, p["thr"], p["direction"])
    if t in ("threshold_planes", "threshold_f32_planes"):
        _expect(op, x, np.int32 if t == "threshold_planes" else np.float32)
        thr, d = p["thr"], p["direction"]
        ge = (~(x[..., None] < thr)).sum(-1)  # a NaN passes every float threshold (as in bitpack)
        le = (~(x[..., None] > thr)).sum(-1)
        q = np.where(d > 0, ge, le)
        m = int(a["planes"])
        return np.stack([pack_bits(((q >> k) & 1) == 0) for k in range(m)])
    if t == "scale_bias":
        _expect(op, x, np.int32)
        return (x.astype(np.float32) * p["scale"]).astype(np.float32) + p["bias"]
    if t == "affine_f32":
        _expect(op, x, np.float32)
        return (x * p["scale"]).astype(np.float32) + p["bias"]
    if t == "relu_f32":
        _expect(op, x, np.float32)
        return np.maximum(x, np.float32(0))
    if t == "bitpack":
        _expect(op, x, np.float32)
        return pack_bits(x < 0)
    if t == "flatten":
        lead = 2 if vin.planes > 1 else 1  # planes [P, N, ...] keep both leading axes
        return np.ascontiguousarray(x).reshape(*x.shape[:lead], -1)
    if t == "dense_f32":
        _expect(op, x, np.float32)
        y = x.astype(np.float64) @ p["w"].astype(np.float64).T
        if "bias" in p:
            y = y + p["bias"].astype(np.float64)
        return y.astype(np.float32)
    raise GraphError(f"reference executor has no rule for op {t!r}")  # pragma: no cover


def conv_f32_error_bound(graph: Graph, op: Op) -> np.ndarray:
    """Per-output-channel bound on ``|float32 conv2d_f32 - exact|`` for inputs in [0, 1]:
    ``K eps32 (sum|w| + |b|)`` with fan-in ``K`` and ``eps32 = 2^-23 = 2u`` (the first-order
    summation bound, Higham Eq. 3.5, for any summation order). Two correct float32 convolutions
    may put an output within this distance of a threshold on different sides."""
    w = graph.tensors[op.params["w"]].astype(np.float64)
    b = graph.tensors[op.params["bias"]].astype(np.float64) if "bias" in op.params else 0.0
    fan = w[0].size
    return fan * float(np.finfo(np.float32).eps) * (np.abs(w).reshape(w.shape[0], -1).sum(1) + np.abs(b))


def preprocess(g: Graph, x: np.ndarray) -> np.ndarray:
    """Check ``x`` (float NCHW in [0, 1]) and convert it to the first layer's input (NHWC)."""
    arr = np.asarray(x)
    spec = g.input
    want = (spec.channels, spec.height, spec.width)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != want:
        raise ValueError(f"input must have shape [N, {want[0]}, {want[1]}, {want[2]}] (NCHW), got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"input must be a float array with values in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("input contains NaN or infinity")
    nhwc = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    if spec.preprocess == "uint8":
        return np.clip(np.round(nhwc * np.float32(255.0)), 0, 255).astype(np.uint8)
    return nhwc


def run(
    graph: Graph, x: np.ndarray, *, return_intermediates: bool = False, batch_size: int = 32,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``graph`` on float32 NCHW images ``x`` (``[N, C, H, W]``, values in [0, 1]).

    Returns float32 logits ``[N, classes]``; with ``return_intermediates=True`` also a dict
    value name -> array (the whole batch at once, storage layout: NHWC, packed bits) holding the
    preprocessed input and every op output. Without intermediates the images run in batches
    of ``batch_size`` (32 keeps the working set in cache; measured fastest).
    """
    values = graph.validate()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    arr = np.asarray(x)
    if return_intermediates:
        inter = _run_all(graph, values, arr)
        return inter[graph.output], inter
    n = arr.shape[0] if arr.ndim >= 1 else 0
    if arr.ndim != 4 or n == 0:
        preprocess(graph, arr)  # raises the descriptive error
    outs = [_run_all(graph, values, arr[i: i + batch_size])[graph.output] for i in range(0, n, batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, values[graph.output].shape[0]), np.float32)


def _run_all(graph: Graph, values: dict[str, ValueInfo], x: np.ndarray) -> dict[str, np.ndarray]:
    env: dict[str, np.ndarray] = {graph.input.name: preprocess(graph, x)}
    for op in graph.ops:
        vin = values[op.inputs[0]]
        y = _run_op(graph, op, env[op.inputs[0]], vin)
        vout = values[op.outputs[0]]
        want = vout.storage_shape(y.shape[1] if vout.planes > 1 else y.shape[0])
        if tuple(y.shape) != want:  # internal consistency of the executor with shape inference
            raise GraphError(f"op {op.name!r} produced shape {y.shape}, expected {want}")
        env[op.outputs[0]] = y
    return env


__all__ = ["conv_f32_error_bound", "preprocess", "run"]

"""Ops of the survey's methods (issue 12) that no other family needs.

- ``rprelu_f32``: ReActNet's RPReLU (Liu et al. 2020, ReActNet Eq. 3) on a float32 value,
  per channel ``c`` (the last axis)::

      t = fl(x - gamma_c);  u = t if t > 0 else fl(slope_c * t);  y = fl(u + zeta_c)

  every step rounded in float32 in this order, which is exactly what
  :class:`bitflow.nn.survey.RPReLU` computes in PyTorch (``F.prelu(x - gamma, slope) + zeta``),
  so the engine, the reference and PyTorch agree bit for bit on equal inputs. The op table keeps
  the dtype in the name so that an integer variant on the fixed-point residual stream
  (``rprelu_i32``: the same three steps on ``r 2^-f`` with fixed-point ``gamma``, ``zeta`` and a
  requantized slope) can follow as its own entry.
- ``conv2d_f32b1`` / ``dense_f32b1``: +-1 weights over float32 activations (BinaryConnect, BWN:
  binary weights, real activations; survey Sec. 3.1, Eq. 6-8). Weights are packed bits (bit 1
  iff -1, as ``bconv2d``); every output is the float32 sum ``acc = acc + (+-x)`` over the taps in
  the order ``(ky, kx, c)`` (dense: ``k``), from ``+0.0``, each partial sum rounded. Only
  additions and subtractions: the sign flip is exact, and the fixed order makes the engine equal
  the reference bit for bit. Zero padding: padded taps add ``+-0``, which leaves a sum that is
  never ``-0`` unchanged (IEEE: ``a + b = -0`` needs ``a = b = -0``; the sum starts at ``+0``).
  The per-channel scale ``alpha`` (BWN: ``mean |W_o|``) and bias follow as ``affine_f32``, in
  PyTorch's order (``conv(x, sign W) * alpha``). Against PyTorch (another summation order) the
  outputs differ within the float32 summation bound ``K eps sum |x|`` (Higham Eq. 3.5), which
  ``float_error_bounds`` propagates to every later float decision.
- ``threshold_u8`` / ``threshold_f32_u8``: k-bit unsigned levels ``q = #{l : x >= thr[c, l]}``
  (DoReFa, PACT) as uint8, the input of ``conv2d_u8b1`` / ``dense_u8b1`` (exact int32).
- ``threshold_bits_hw``: ``threshold_bits`` with one threshold per (position, channel)
  (XNOR-Net++'s factorized scale ``Gamma[o, y, x]`` makes BatchShift's threshold differ per
  output position).
- ``scale_hw``: ``y = fl(x Gamma[y, x, o])`` on an int32 accumulator, one rounding per value:
  XNOR-Net++'s scale where a float value follows (a residual add, a float layer), exactly
  PyTorch's ``conv(sign X, sign W) * Gamma`` (the convolution's integer sum is exact in
  float32 below 2^24, the product rounds once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .. import _refkernels as rk
from ..nodes import GraphError, Op, ValueInfo
from . import EngineContext, HasTensors, Kernel, OpDef, one, register
from ._common import int_attr, need, need_param, spatial, t2, window_geom
from .w1 import pm1_weights, u8b1_conv

RPRELU_PARAMS = ("gamma", "slope", "zeta")


def _infer_rprelu(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("float32",))
    c = x.shape[-1]
    for role in RPRELU_PARAMS:
        need_param(op, tensors, role, "float32", shape=(c,))
    return ValueInfo("float32", x.shape)


def rprelu_reference(
    x: np.ndarray, gamma: np.ndarray, slope: np.ndarray, zeta: np.ndarray
) -> np.ndarray:
    """The definition on the last axis, each step rounded in float32 (module docstring)."""
    t = (x - gamma).astype(np.float32)
    u = np.where(t > 0, t, (slope * t).astype(np.float32)).astype(np.float32)
    return (u + zeta).astype(np.float32)


def _ref_rprelu(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.float32)
    p = [g.tensors[op.params[r]] for r in RPRELU_PARAMS]
    return rprelu_reference(xs[0], *p)


def _eng_rprelu(c: EngineContext, op: Op) -> Kernel:
    p, N, th = c.params(op), c.native, c.threads
    return one(lambda x: N.rprelu_f32(x, p["gamma"], p["slope"], p["zeta"], th))


register(
    OpDef(
        "rprelu_f32",
        "float",
        "f32 [...,C] -> f32",
        "gamma, slope, zeta f32 (C): t = x - gamma; (t > 0 ? t : slope t) + zeta",
        frozenset(RPRELU_PARAMS),
        _infer_rprelu,
        _ref_rprelu,
        _eng_rprelu,
        ("rprelu_f32",),
        doc="ReActNet RPReLU (Eq. 3) on a float residual stream, float32 steps as PyTorch",
    )
)


# ----------------------------------------------------------------------------- W1 / A32


_CHUNK_BYTES = 1 << 18


def conv_f32b1_reference(
    x: np.ndarray, pm1: np.ndarray, stride: tuple[int, int], padding: tuple[int, int]
) -> np.ndarray:
    """``x`` float32 ``[N, H, W, C]``, ``pm1`` +-1 ``[O, kh, kw, C]`` -> float32 ``[N, Ho, Wo, O]``,
    each output summed in float32 in the order ``(ky, kx, c)`` (module docstring)."""
    o, kh, kw, c = pm1.shape
    xp = rk.pad(np.asarray(x, np.float32), padding[0], padding[1], 0.0)
    win = rk.windows(xp, kh, kw, stride[0], stride[1])  # [N, Ho, Wo, kh, kw, C]
    out = np.empty((*win.shape[:3], o), np.float32)
    s = pm1.astype(np.float32)
    # a few images at a time, so that the running sums stay in cache over the kh * kw * C steps
    # (3-4x faster than whole-batch steps on 10,000 images; the order per output is the same)
    per = max(1, _CHUNK_BYTES // max(1, out[:1].nbytes))
    for n0 in range(0, out.shape[0], per):
        wn, acc = win[n0 : n0 + per], out[n0 : n0 + per]
        acc[...] = 0.0
        tmp = np.empty_like(acc)
        for i in range(kh):
            for j in range(kw):
                for ch in range(c):
                    np.multiply(wn[:, :, :, i, j, ch][..., None], s[:, i, j, ch], out=tmp)  # +-x
                    np.add(acc, tmp, out=acc)  # float32 + float32: one rounding
    return out


def _weights(op: Op, tensors: Mapping[str, np.ndarray], c: int, ndim: int) -> np.ndarray:
    ch = int_attr(op, "channels")
    if ch != c:
        raise GraphError(f"op {op.name!r}: attribute channels={ch} but the input has {c}")
    wt = need_param(op, tensors, "w", "uint64", ndim=ndim)
    if wt.shape[-1] != (c + 63) // 64:
        raise GraphError(
            f"op {op.name!r}: weight has {wt.shape[-1]} words per tap, {c} channels need {(c + 63) // 64}"
        )
    return wt


def _infer_conv(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("float32",), 3)
    h, w, c = spatial(op, x)
    o, kh, kw, _ = _weights(op, tensors, c, 4).shape
    ho, wo = window_geom(op, h, w, kh, kw)
    return ValueInfo("float32", (ho, wo, o))


def _ref_conv(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.float32)
    w = pm1_weights(g.tensors[op.params["w"]], int(op.attrs["channels"]))
    return conv_f32b1_reference(xs[0], w, t2(op.attrs["stride"]), t2(op.attrs["padding"]))


def f32b1_conv(
    c: EngineContext,
    w: np.ndarray,
    channels: int,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
) -> Callable[[np.ndarray], np.ndarray]:
    """``x float32 [N, H, W, C] -> float32`` for packed +-1 weights ``w [O, kh, kw, Cw]``, the
    definition's value bit for bit on every kernel set.

    A kernel set with a packed float GEMM (``kernel_info()["sgemm_packed"]``: AVX2, AVX-512)
    sums every output of a float convolution in order ``k = 0..K-1``, from ``+0``, with one
    FMA per ``k`` (``SgemmPackedFn``'s contract in ``kernels.h``; the bias, none here, after
    the sum), and ``k`` runs over ``(ky, kx, c)``: the definition's order. With a +-1 weight
    ``fma(x, +-1, acc)`` rounds ``acc +- x`` once, exactly the definition's step (the product is
    exact), and a zero of the padding adds ``+-0``, which leaves the sum unchanged (it is never
    ``-0``). So the weights are expanded to +-1.0 once and the prepared float convolution
    (register-blocked, threaded) runs them. Other sets (ref, scalar) run the native
    ``conv2d_f32b1`` loop. A NaN input gives NaN either way (its sign bit may differ)."""
    N, th = c.native, c.threads
    if N.kernel_info(c.kernels)["sgemm_packed"] is None:
        return lambda x: N.conv2d_f32b1(x, w, channels, stride, padding, th)
    w32 = np.ascontiguousarray(pm1_weights(w, channels), np.float32)
    layer = N._Conv2dF32Layer(w32, None, stride, padding, kernels=c.kernels)
    return lambda x: layer(x, th)


def _eng_conv(c: EngineContext, op: Op) -> Kernel:
    st, pd, ch = t2(op.attrs["stride"]), t2(op.attrs["padding"]), int(op.attrs["channels"])
    return one(f32b1_conv(c, c.params(op)["w"], ch, st, pd))


def _infer_dense(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("float32",), 1)
    o = _weights(op, tensors, x.shape[0], 2).shape[0]
    return ValueInfo("float32", (o,))


def _ref_dense(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.float32)
    k = int(op.attrs["channels"])
    w = pm1_weights(g.tensors[op.params["w"]][:, None, None, :], k)
    return conv_f32b1_reference(x[:, None, None, :], w, (1, 1), (0, 0))[:, 0, 0, :]


def _eng_dense(c: EngineContext, op: Op) -> Kernel:
    k = int(op.attrs["channels"])
    conv = f32b1_conv(c, np.ascontiguousarray(c.params(op)["w"][:, None, None, :]), k)
    return one(lambda x: conv(x.reshape(x.shape[0], 1, 1, k)).reshape(x.shape[0], -1))


register(
    OpDef(
        "conv2d_f32b1",
        "float",
        "f32 [H,W,C] -> f32 [Ho,Wo,O]",
        "w u64 bits (O,kh,kw,Cw) (bit 1 = -1); channels, stride, padding; sums in (ky,kx,c) order",
        frozenset({"w"}),
        _infer_conv,
        _ref_conv,
        _eng_conv,
        ("conv2d_f32b1", "_Conv2dF32Layer"),
        doc="+-1 weights over float32 activations (BinaryConnect / BWN), fixed float32 order",
    )
)
register(
    OpDef(
        "dense_f32b1",
        "float",
        "f32 [K] -> f32 [O]",
        "w u64 bits (O,Kw) (bit 1 = -1); channels = K; sums in k order",
        frozenset({"w"}),
        _infer_dense,
        _ref_dense,
        _eng_dense,
        ("conv2d_f32b1", "_Conv2dF32Layer"),
        doc="+-1-weight dense layer over float32 activations (BinaryConnect / BWN)",
    )
)


# ----------------------------------------------------------------------------- k-bit unsigned levels
def _infer_levels(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    is_f32 = op.type == "threshold_f32_u8"
    need(op, x, ("float32",) if is_f32 else ("int32",))
    o = x.shape[-1]
    thr = need_param(op, tensors, "thr", "float32" if is_f32 else "int32", ndim=2)
    if thr.shape[0] != o or not 1 <= thr.shape[1] <= 255:
        raise GraphError(
            f"op {op.name!r}: thr must have shape (O={o}, L) with 1 <= L <= 255, got {thr.shape}"
        )
    if is_f32 and np.any(np.isnan(thr)):
        raise GraphError(f"op {op.name!r}: thresholds must not be NaN")
    d = need_param(op, tensors, "direction", "int8", shape=(o,))
    if not np.all(np.isin(d, (-1, 1))):
        raise GraphError(f"op {op.name!r}: direction entries must be +1 or -1")
    return ValueInfo("uint8", x.shape)


def levels_reference(x: np.ndarray, thr: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``q = #{l : not (x < thr[c, l])}`` (direction +1) or ``#{l : not (x > thr[c, l])}`` (-1),
    as uint8 (a NaN passes every threshold, as ``threshold_planes``)."""
    ge = (~(x[..., None] < thr)).sum(-1)
    le = (~(x[..., None] > thr)).sum(-1)
    return np.where(direction > 0, ge, le).astype(np.uint8)


def _ref_levels(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.float32 if op.type == "threshold_f32_u8" else np.int32)
    return levels_reference(xs[0], g.tensors[op.params["thr"]], g.tensors[op.params["direction"]])


def _eng_levels(c: EngineContext, op: Op) -> Kernel:
    p, N, th = c.params(op), c.native, c.threads
    f = N.threshold_f32_u8 if op.type == "threshold_f32_u8" else N.threshold_u8
    return one(lambda x: f(x, p["thr"], p["direction"], th))


register(
    OpDef(
        "threshold_u8",
        "integer",
        "i32 [...,O] -> u8 [...,O]",
        "thr i32 (O,L), direction i8 (O): q = #{l : x >= thr} (or <= for direction -1)",
        frozenset({"thr", "direction"}),
        _infer_levels,
        _ref_levels,
        _eng_levels,
        ("threshold_u8",),
        doc="k-bit unsigned activation levels (DoReFa / PACT) from exact integer thresholds",
    )
)
register(
    OpDef(
        "threshold_f32_u8",
        "float",
        "f32 [...,O] -> u8 [...,O]",
        "thr f32 (O,L), direction i8 (O): as threshold_u8",
        frozenset({"thr", "direction"}),
        _infer_levels,
        _ref_levels,
        _eng_levels,
        ("threshold_f32_u8",),
        doc="k-bit unsigned levels after a float first layer (exact float32 thresholds)",
    )
)


# ----------------------------------------------------------------------------- dense W1 / A8
def _infer_dense_u8b1(
    op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]
) -> ValueInfo:
    x = ins[0]
    need(op, x, ("uint8",), 1)
    k = x.shape[0]
    wt = _weights(op, tensors, k, 2)
    if 255 * k * 128 > 2**31 - 1:
        raise GraphError(f"op {op.name!r}: K = {k} is too large for an exact int32 sum")
    return ValueInfo("int32", (wt.shape[0],))


def _ref_dense_u8b1(
    g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]
) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.uint8)
    w = pm1_weights(g.tensors[op.params["w"]], int(op.attrs["channels"])).astype(np.int64)
    return (x.astype(np.int64) @ w.T).astype(np.int32)


def _eng_dense_u8b1(c: EngineContext, op: Op) -> Kernel:
    ch = int(op.attrs["channels"])
    conv = u8b1_conv(c, np.ascontiguousarray(c.params(op)["w"][:, None, None, :]), ch)
    return one(lambda x: conv(x.reshape(x.shape[0], 1, 1, ch)).reshape(x.shape[0], -1))


register(
    OpDef(
        "dense_u8b1",
        "integer",
        "u8 [K] -> i32 [O]",
        "w u64 bits (O,Kw) (bit 1 = -1); channels = K",
        frozenset({"w"}),
        _infer_dense_u8b1,
        _ref_dense_u8b1,
        _eng_dense_u8b1,
        ("conv2d_u8b1", "Int8ConvLayer"),
        doc="+-1-weight dense layer over uint8 levels (DoReFa / PACT), exact in int32",
    )
)


# ----------------------------------------------------------------------------- XNOR-Net++ tables
def _infer_thr_hw(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("int32",), 3)
    h, w, o = spatial(op, x)
    need_param(op, tensors, "thr", "int32", shape=(h, w, o))
    d = need_param(op, tensors, "direction", "int8", shape=(h, w, o))
    if not np.all(np.isin(d, (-1, 1))):
        raise GraphError(f"op {op.name!r}: direction entries must be +1 or -1")
    return ValueInfo("bits", (h, w, (o + 63) // 64), o)


def _ref_thr_hw(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.int32)
    return rk.threshold(xs[0], g.tensors[op.params["thr"]], g.tensors[op.params["direction"]])


def _eng_thr_hw(c: EngineContext, op: Op) -> Kernel:
    p, N, th = c.params(op), c.native, c.threads
    return one(lambda x: N.threshold_bits_hw(x, p["thr"], p["direction"], th))


register(
    OpDef(
        "threshold_bits_hw",
        "integer",
        "i32 [H,W,O] -> bits [H,W,Ow]",
        "thr i32 (H,W,O), direction i8 (H,W,O): one threshold per (position, channel)",
        frozenset({"thr", "direction"}),
        _infer_thr_hw,
        _ref_thr_hw,
        _eng_thr_hw,
        ("threshold_bits_hw",),
        doc="XNOR-Net++: the scale alpha(x)beta(x)gamma differs per position, so does BatchShift",
    )
)


# ----------------------------------------------------------------------------- XNOR-Net++ float scale
def _infer_scale_hw(
    op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]
) -> ValueInfo:
    x = ins[0]
    need(op, x, ("int32",), 3)
    h, w, o = spatial(op, x)
    s = need_param(op, tensors, "scale", "float32", shape=(h, w, o))
    if not np.all(np.isfinite(s)):
        raise GraphError(f"op {op.name!r}: scale contains NaN or infinity")
    return ValueInfo("float32", (h, w, o))


def _ref_scale_hw(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.int32)
    return (xs[0].astype(np.float32) * g.tensors[op.params["scale"]]).astype(np.float32)


def _eng_scale_hw(c: EngineContext, op: Op) -> Kernel:
    p, N, th = c.params(op), c.native, c.threads
    return one(lambda x: N.scale_hw(x, p["scale"], th))


register(
    OpDef(
        "scale_hw",
        "float",
        "i32 [H,W,O] -> f32",
        "scale f32 (H,W,O): one per (position, channel)",
        frozenset({"scale"}),
        _infer_scale_hw,
        _ref_scale_hw,
        _eng_scale_hw,
        ("scale_hw",),
        doc="XNOR-Net++: the scale Gamma on the int32 accumulator before a float value",
    )
)

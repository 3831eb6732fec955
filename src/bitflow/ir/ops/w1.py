"""W1/A8 layers: ``conv2d_u8b1``, +-1 weights over uint8 activations (MCN as deployed, W1/A32 in
the paper's Table VII with the activations in uint8).

``y[n, p, o] = sum_{taps, c} x[n, p + tap, c] * w[o, tap, c]`` with ``w`` in ``{-1, +1}`` stored
as packed bits (bit 1 iff -1, ``[O, kh, kw, ceil(C/64)]`` uint64, as ``bconv2d``), zero padding:
additions and subtractions only, exact in int32 (``|y| <= 255 kh kw C``). The modulation of an
MCN-1 layer (a positive per-channel scale) follows as the usual ``scale_bias`` or folds into the
next threshold. The native kernel expands the bits to +-1 int8 once per call and runs the exact
uint8 x int8 GEMM of ``conv2d_u8i8`` (VNNI / AVX2 kernels), so it is exact on every kernel set.

``threshold_u8`` / ``threshold_f32_u8`` make the uint8 codes such a layer reads: per channel
``L <= 255`` ascending thresholds, ``q = #{l : x >= thr[o, l]}`` (direction +1) or
``#{l : x <= thr[o, l]}`` (direction -1). An MCN activation quantizer
``q = clamp(floor(BN(y) 2^f + 1/2), 0, 255)`` after a BatchNorm is exactly such a count (the
converter computes the thresholds, integer ones exactly, see ``bitflow.convert._mcn``). In the
float form a NaN passes every threshold (as ``threshold_f32_planes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import _refkernels as rk
from ..bits import unpack_bits
from ..graph import Graph, GraphError, Op, ValueInfo
from . import EngineContext, Kernel, OpDef, one, register
from ._common import acc_check, int_attr, need, need_param, spatial, t2, window_geom


def pm1_weights(w: np.ndarray, channels: int) -> np.ndarray:
    """Packed weight bits ``[O, kh, kw, Cw]`` -> ``+-1`` int8 ``[O, kh, kw, C]`` (bit 1 = -1)."""
    return (1 - 2 * unpack_bits(w, channels).astype(np.int8)).astype(np.int8)


def _infer(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("uint8",), 3)
    h, w, c = spatial(op, x)
    ch = int_attr(op, "channels")
    if ch != c:
        raise GraphError(f"op {op.name!r}: attribute channels={ch} but the input has {c}")
    wt = need_param(op, tensors, "w", "uint64", ndim=4)
    o, kh, kw, wcw = wt.shape
    if wcw != (c + 63) // 64:
        raise GraphError(
            f"op {op.name!r}: weight has {wcw} words per tap, {c} channels need {(c + 63) // 64}"
        )
    acc_check(op, 255 * kh * kw * c)
    ho, wo = window_geom(op, h, w, kh, kw)
    return ValueInfo("int32", (ho, wo, o))


def _ref(g: Graph, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.uint8)
    w = pm1_weights(g.tensors[op.params["w"]], int(op.attrs["channels"]))
    y = rk.conv(x, w, t2(op.attrs["stride"]), t2(op.attrs["padding"]), 0, np.int64)
    return y.astype(np.int32)


def _eng(c: EngineContext, op: Op) -> Kernel:
    p, N, k, th = c.params(op), c.native, c.kernels, c.threads
    st, pd, ch = t2(op.attrs["stride"]), t2(op.attrs["padding"]), int(op.attrs["channels"])
    return one(lambda x: N.conv2d_u8b1(x, p["w"], ch, st, pd, k, th))


def _infer_u8(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    is_f32 = op.type == "threshold_f32_u8"
    dt = "float32" if is_f32 else "int32"
    need(op, x, (dt,))
    o = x.shape[-1]
    thr = need_param(op, tensors, "thr", dt, ndim=2)
    if thr.shape[0] != o or not 1 <= thr.shape[1] <= 255:
        raise GraphError(
            f"op {op.name!r}: thr must have shape (O, L) with O = {o} and 1 <= L <= 255, "
            f"got {thr.shape}"
        )
    if is_f32 and np.any(np.isnan(thr)):
        raise GraphError(f"op {op.name!r}: thresholds must not be NaN")
    if np.any(thr[:, 1:] < thr[:, :-1]):
        raise GraphError(f"op {op.name!r}: thresholds of every channel must be sorted ascending")
    d = need_param(op, tensors, "direction", "int8", shape=(o,))
    if not np.all(np.isin(d, (-1, 1))):
        raise GraphError(f"op {op.name!r}: direction entries must be +1 or -1")
    return ValueInfo("uint8", x.shape)


def u8_codes(x: np.ndarray, thr: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``q`` per element of ``x [..., O]``: passed thresholds of ``thr [O, L]`` (definition;
    comparisons in the input's own type, a float NaN passes every threshold)."""
    xe = x[..., None]
    ge = (~(xe < thr)).sum(-1)
    le = (~(xe > thr)).sum(-1)
    return np.where(direction > 0, ge, le).astype(np.uint8)


def _ref_u8(g: Graph, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.float32 if op.type == "threshold_f32_u8" else np.int32)
    return u8_codes(x, g.tensors[op.params["thr"]], g.tensors[op.params["direction"]])


def _eng_u8(c: EngineContext, op: Op) -> Kernel:
    p, N = c.params(op), c.native
    fn = N.threshold_f32_u8 if op.type == "threshold_f32_u8" else N.threshold_u8
    return one(lambda x: fn(x, p["thr"], p["direction"]))


for _t, _dt in (("threshold_u8", "i32"), ("threshold_f32_u8", "f32")):
    register(
        OpDef(
            _t,
            "integer" if _dt == "i32" else "float",
            f"{_dt} [...,O] -> u8 [...,O]",
            f"thr {_dt} (O, L <= 255) ascending, direction i8 (O)",
            frozenset({"thr", "direction"}),
            _infer_u8,
            _ref_u8,
            _eng_u8,
            (_t,),
            doc="uint8 codes q = passed thresholds (the W1/A8 MCN activation quantizer)",
        )
    )

register(
    OpDef(
        "conv2d_u8b1",
        "integer",
        "u8 [H,W,C] -> i32 [Ho,Wo,O]",
        "w u64 bits (O,kh,kw,Cw) (bit 1 = -1); channels, stride, padding",
        frozenset({"w"}),
        _infer,
        _ref,
        _eng,
        ("conv2d_u8b1",),
        doc="+-1 weights over uint8 activations, exact in int32 (MCN W1/A8)",
    )
)

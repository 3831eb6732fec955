"""W1/A8 layers: ``conv2d_u8b1``, +-1 weights over uint8 activations (MCN as deployed, W1/A32 in
the paper's Table VII with the activations in uint8).

``y[n, p, o] = sum_{taps, c} x[n, p + tap, c] * w[o, tap, c]`` with ``w`` in ``{-1, +1}`` stored
as packed bits (bit 1 iff -1, ``[O, kh, kw, ceil(C/64)]`` uint64, as ``bconv2d``), zero padding:
additions and subtractions only, exact in int32 (``|y| <= 255 kh kw C``). The modulation of an
MCN-1 layer (a positive per-channel scale) follows as the usual ``scale_bias`` or folds into the
next threshold. The engine expands the bits to +-1 int8 once, when it is built, into a prepared
``Int8ConvLayer`` (the exact uint8 x int8 GEMM of ``conv2d_u8i8``: VNNI / AVX2 kernels, weights
laid out once), so it is exact on every kernel set (the native ``conv2d_u8b1`` does the same
expansion on every call). Those kernels bound the sum for int8 weights up to 128 in magnitude,
so the fan-in is limited as ``conv2d_u8i8``'s: ``255 * 128 * kh * kw * C <= 2^31 - 1``
(``kh * kw * C <= 65,793``).

An MCN activation quantizer ``q = clamp(floor(BN(y) 2^f + 1/2), 0, 255)`` after a BatchNorm is
exactly a count of passed thresholds: ``threshold_u8`` / ``threshold_f32_u8``
(:mod:`bitflow.ir.ops.survey`) make the uint8 codes such a layer reads (the converter computes
the thresholds, integer ones exactly, see ``bitflow.convert._mcn``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .. import _refkernels as rk
from ..bits import unpack_bits
from ..nodes import GraphError, Op, ValueInfo
from . import EngineContext, HasTensors, Kernel, OpDef, one, register
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
    acc_check(op, 255 * 128 * kh * kw * c)  # the int8 kernels' bound (module docstring)
    ho, wo = window_geom(op, h, w, kh, kw)
    return ValueInfo("int32", (ho, wo, o))


def _ref(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.uint8)
    w = pm1_weights(g.tensors[op.params["w"]], int(op.attrs["channels"]))
    y = rk.conv(x, w, t2(op.attrs["stride"]), t2(op.attrs["padding"]), 0, np.int64)
    return y.astype(np.int32)


def u8b1_conv(
    c: EngineContext,
    w: np.ndarray,
    channels: int,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
) -> Callable[[np.ndarray], np.ndarray]:
    """``x uint8 [N, H, W, C] -> int32`` for packed +-1 weights ``w [O, kh, kw, Cw]``: a prepared
    ``Int8ConvLayer`` holding the +-1 int8 weights, expanded here once (expanded on every call,
    the 1152 x 256 dense layer of a DoReFa VGG-small took 1.41 ms instead of 0.006 ms)."""
    w8 = np.ascontiguousarray(pm1_weights(w, channels))
    layer, th = c.native.Int8ConvLayer(w8, stride, padding, c.kernels), c.threads
    return lambda x: layer(x, th)


def _eng(c: EngineContext, op: Op) -> Kernel:
    st, pd, ch = t2(op.attrs["stride"]), t2(op.attrs["padding"]), int(op.attrs["channels"])
    return one(u8b1_conv(c, c.params(op)["w"], ch, st, pd))


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
        ("conv2d_u8b1", "Int8ConvLayer"),
        doc="+-1 weights over uint8 activations, exact in int32 (MCN W1/A8)",
    )
)

"""Full-precision and fixed-point layers: ``conv2d_f32``, ``conv2d_u8i8``, ``dense_f32``.

The float references accumulate in float64 and round once (engines: float32 within the
summation bound of :func:`bitflow.ir.reference.conv_f32_error_bound`); the fixed-point first
layer (uint8 pixels x int8 weights) is exact in int32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import _refkernels as rk
from ..nodes import GraphError, Op, ValueInfo
from . import EngineContext, HasTensors, Kernel, OpDef, one, register
from ._common import acc_check, need, need_param, param, spatial, t2, window_geom


def _infer_conv(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x, f32 = ins[0], op.type == "conv2d_f32"
    need(op, x, ("float32",) if f32 else ("uint8",), 3)
    h, w, c = spatial(op, x)
    wt = need_param(op, tensors, "w", "float32" if f32 else "int8", ndim=4)
    o, kh, kw, wc = wt.shape
    if wc != c:
        raise GraphError(f"op {op.name!r}: weight has {wc} input channels, input has {c}")
    if f32:
        param(op, tensors, "bias", "float32", shape=(o,), optional=True)
    else:
        acc_check(op, 255 * 128 * kh * kw * c)
    ho, wo = window_geom(op, h, w, kh, kw)
    return ValueInfo("float32" if f32 else "int32", (ho, wo, o))


def _ref_conv(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x, f32 = xs[0], op.type == "conv2d_f32"
    rk.expect(op, x, np.float32 if f32 else np.uint8)
    y = rk.conv(
        x,
        g.tensors[op.params["w"]],
        t2(op.attrs["stride"]),
        t2(op.attrs["padding"]),
        0.0,
        np.float64,
    )
    if not f32:
        return y.astype(np.int32)
    if "bias" in op.params:
        y = y + g.tensors[op.params["bias"]].astype(np.float64)
    return y.astype(np.float32)


def _eng_conv(c: EngineContext, op: Op) -> Kernel:
    p, N, k, th = c.params(op), c.native, c.kernels, c.threads
    st, pd = t2(op.attrs["stride"]), t2(op.attrs["padding"])
    if op.type == "conv2d_f32":
        return one(lambda x: N.conv2d_f32(x, p["w"], p.get("bias"), st, pd, k, th))
    return one(lambda x: N.conv2d_u8i8(x, p["w"], st, pd, k, th))


def _infer_dense(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("float32",), 1)
    wt = need_param(op, tensors, "w", "float32", ndim=2)
    if wt.shape[1] != x.shape[0]:
        raise GraphError(
            f"op {op.name!r}: weight has {wt.shape[1]} inputs, the value has {x.shape[0]}"
        )
    param(op, tensors, "bias", "float32", shape=(wt.shape[0],), optional=True)
    return ValueInfo("float32", (wt.shape[0],))


def _ref_dense(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.float32)
    y = xs[0].astype(np.float64) @ g.tensors[op.params["w"]].astype(np.float64).T
    if "bias" in op.params:
        y = y + g.tensors[op.params["bias"]].astype(np.float64)
    return y.astype(np.float32)


def _eng_dense(c: EngineContext, op: Op) -> Kernel:
    p, N, k, th = c.params(op), c.native, c.kernels, c.threads
    return one(lambda x: N.dense_f32(x, p["w"], p.get("bias"), k, th))


register(
    OpDef(
        "conv2d_f32",
        "float",
        "f32 [H,W,C] -> f32 [Ho,Wo,O]",
        "w f32 (O,kh,kw,C), bias f32 (O)?; stride, padding",
        frozenset({"w", "bias"}),
        _infer_conv,
        _ref_conv,
        _eng_conv,
        ("conv2d_f32",),
    )
)
register(
    OpDef(
        "conv2d_u8i8",
        "integer",
        "u8 [H,W,C] -> i32 [Ho,Wo,O]",
        "w i8 (O,kh,kw,C); stride, padding",
        frozenset({"w"}),
        _infer_conv,
        _ref_conv,
        _eng_conv,
        ("conv2d_u8i8",),
    )
)
register(
    OpDef(
        "dense_f32",
        "float",
        "f32 [K] -> f32 [O]",
        "w f32 (O,K), bias f32 (O)?",
        frozenset({"w", "bias"}),
        _infer_dense,
        _ref_dense,
        _eng_dense,
        ("dense_f32",),
    )
)

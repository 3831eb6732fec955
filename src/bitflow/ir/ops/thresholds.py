"""Thresholds (BatchShift, BitFlow-Net Eq. 13-17 in the exact form) and sign packing.

Bit 1 (-1) iff ``x < thr`` (direction +1) or ``x > thr`` (direction -1), i.e. +1 iff
``x >= thr`` resp. ``x <= thr``; a NaN float is never on the -1 side. Plane thresholds count
the passed thresholds ``q`` of a channel's ``2^M - 1`` and emit bit ``m`` of ``q`` as plane
``m`` (the MBBN encoder). ``bitpack`` is ``sign`` with ``sign(0) = +1``: bit = ``x < 0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import _refkernels as rk
from ..bits import pack_bits
from ..nodes import GraphError, Op, ValueInfo, words_for
from . import EngineContext, HasTensors, Kernel, OpDef, one, register
from ._common import int_attr, need, need_param


def _infer_threshold(
    op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]
) -> ValueInfo:
    x, t = ins[0], op.type
    is_f32 = t in ("threshold_f32_bits", "threshold_f32_planes")
    need(op, x, ("float32",) if is_f32 else ("int32",))
    o = x.shape[-1]
    if t.endswith("_planes"):
        m = int_attr(op, "planes")
        if not 1 <= m <= 8:
            raise GraphError(f"op {op.name!r}: planes must be in 1..8, got {m}")
        thr = need_param(op, tensors, "thr", "float32" if is_f32 else "int32", shape=(o, 2**m - 1))
        if is_f32 and np.any(np.isnan(thr)):
            raise GraphError(f"op {op.name!r}: thresholds must not be NaN")
        if np.any(thr[:, 1:] < thr[:, :-1]):  # comparisons, not differences: inf - inf is NaN
            raise GraphError(
                f"op {op.name!r}: thresholds of every channel must be sorted ascending"
            )
    else:
        m = 1
        need_param(op, tensors, "thr", "float32" if is_f32 else "int32", shape=(o,))
    d = need_param(op, tensors, "direction", "int8", shape=(o,))
    if not np.all(np.isin(d, (-1, 1))):
        raise GraphError(f"op {op.name!r}: direction entries must be +1 or -1")
    return ValueInfo("bits", (*x.shape[:-1], words_for(o)), o, 1, m)


def _ref_threshold(
    g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]
) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.float32 if op.type == "threshold_f32_bits" else np.int32)
    return rk.threshold(x, g.tensors[op.params["thr"]], g.tensors[op.params["direction"]])


def _ref_planes(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.int32 if op.type == "threshold_planes" else np.float32)
    thr, d = g.tensors[op.params["thr"]], g.tensors[op.params["direction"]]
    ge = (~(x[..., None] < thr)).sum(-1)  # a NaN passes every float threshold (as in bitpack)
    le = (~(x[..., None] > thr)).sum(-1)
    q = np.where(d > 0, ge, le)
    m = int(op.attrs["planes"])
    return np.stack([pack_bits(((q >> k) & 1) == 0) for k in range(m)])


def _eng_threshold_bits(c: EngineContext, op: Op) -> Kernel:
    # the kernel set's range form: +1 iff lo <= acc <= hi, [T, INT32_MAX] for direction +1 and
    # [INT32_MIN, T] for -1 (common.h); equal to N.threshold_bits
    p, N, k = c.params(op), c.native, c.kernels
    d = p["direction"]
    lo = np.where(d > 0, p["thr"], np.iinfo(np.int32).min).astype(np.int32)
    hi = np.where(d > 0, np.iinfo(np.int32).max, p["thr"]).astype(np.int32)
    return one(lambda x: N.threshold_bits_range(x, lo, hi, k))


def _eng_threshold_f32_bits(c: EngineContext, op: Op) -> Kernel:
    p, N = c.params(op), c.native
    return one(lambda x: N.threshold_f32_bits(x, p["thr"], p["direction"]))


def _eng_planes(c: EngineContext, op: Op) -> Kernel:
    p, N = c.params(op), c.native
    f = N.threshold_planes if op.type == "threshold_planes" else N.threshold_f32_planes
    if int(op.attrs["planes"]) == 1:  # one plane is stored without its plane axis
        return one(lambda x: f(x, p["thr"], p["direction"])[0])
    return one(lambda x: f(x, p["thr"], p["direction"]))


def _infer_bitpack(
    op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]
) -> ValueInfo:
    x = ins[0]
    need(op, x, ("float32", "int32"))
    return ValueInfo("bits", (*x.shape[:-1], words_for(x.shape[-1])), x.shape[-1])


def _ref_bitpack(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.float32 if vins[0].dtype == "float32" else np.int32)
    return pack_bits(x < 0)


def _eng_bitpack(c: EngineContext, op: Op) -> Kernel:
    N, k = c.native, c.kernels
    return one(lambda x: N.bitpack(np.ascontiguousarray(x), k))


register(
    OpDef(
        "threshold_bits",
        "integer",
        "i32 [...,O] -> bits [...,Ow]",
        "thr i32 (O), direction i8 (O)",
        frozenset({"thr", "direction"}),
        _infer_threshold,
        _ref_threshold,
        _eng_threshold_bits,
        ("threshold_bits_range", "threshold_bits"),
    )
)
register(
    OpDef(
        "threshold_f32_bits",
        "float",
        "f32 [...,O] -> bits [...,Ow]",
        "thr f32 (O), direction i8 (O)",
        frozenset({"thr", "direction"}),
        _infer_threshold,
        _ref_threshold,
        _eng_threshold_f32_bits,
        ("threshold_f32_bits",),
    )
)
register(
    OpDef(
        "threshold_planes",
        "integer",
        "i32 [...,O] -> bits M x [...,Ow]",
        "thr i32 (O,2^M-1), direction i8 (O); planes M",
        frozenset({"thr", "direction"}),
        _infer_threshold,
        _ref_planes,
        _eng_planes,
        ("threshold_planes",),
    )
)
register(
    OpDef(
        "threshold_f32_planes",
        "float",
        "f32 [...,O] -> bits M x [...,Ow]",
        "thr f32 (O,2^M-1), direction i8 (O); planes M",
        frozenset({"thr", "direction"}),
        _infer_threshold,
        _ref_planes,
        _eng_planes,
        ("threshold_f32_planes",),
    )
)
register(
    OpDef(
        "bitpack",
        "float",
        "f32 or i32 [...,C] -> bits [...,Cw]",
        "bit = (x < 0): sign with sign(0) = +1",
        frozenset(),
        _infer_bitpack,
        _ref_bitpack,
        _eng_bitpack,
        ("bitpack",),
    )
)

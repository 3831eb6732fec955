"""Binary (xnor-popcount) layers: ``bconv2d``, ``bconv2d_planes``, ``bdense``, ``bdense_planes``.

Binary convolution (BitFlow-Net Eq. 4): ``y = sign(x) (*) sign(w)``; dense: ``dot = k_bits - 2
popcount(a XOR b)``; the MBBN plane forms accumulate ``sum_{m,k} 2^(m+k) dot(c_m, d_k)``
(MBBN Eq. 8). The int32 accumulator bound ``fan_in (2^Pa - 1)(2^Pw - 1)`` is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import _refkernels as rk
from ..nodes import GraphError, Op, ValueInfo
from . import EngineContext, HasTensors, Kernel, OpDef, one, register
from ._common import acc_check, int_attr, need, need_param, spatial, t2, window_geom


def _infer_bconv(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("bits",), 3, planes_ok=op.type == "bconv2d_planes")
    assert x.channels is not None
    h, w, cw = spatial(op, x)
    c = int_attr(op, "channels")
    if c != x.channels:
        raise GraphError(f"op {op.name!r}: attribute channels={c} but the input has {x.channels}")
    pv = op.attrs.get("pad_value")
    if type(pv) is not int or pv not in (0, 1):  # 1.0, -0.0 and True compare equal: type first
        raise GraphError(f"op {op.name!r}: pad_value must be 0 or 1, got {pv!r}")
    if op.type == "bconv2d":
        wt = need_param(op, tensors, "w", "uint64", ndim=4)
        pw_, (o, kh, kw, wcw) = 1, wt.shape
    else:
        wt = need_param(op, tensors, "w", "uint64", ndim=5)
        pw_, o, kh, kw, wcw = wt.shape
    if wcw != cw:
        raise GraphError(f"op {op.name!r}: weight has {wcw} words per tap, input has {cw}")
    acc_check(op, kh * kw * c * (2**x.planes - 1) * (2**pw_ - 1))
    ho, wo = window_geom(op, h, w, kh, kw)
    return ValueInfo("int32", (ho, wo, o))


def _infer_bdense(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("bits",), 1, planes_ok=op.type == "bdense_planes")
    kb = int_attr(op, "k_bits")
    if kb != x.real_bits:
        raise GraphError(f"op {op.name!r}: k_bits={kb} but the input holds {x.real_bits} real bits")
    if op.type == "bdense":
        wt = need_param(op, tensors, "w", "uint64", ndim=2)
        pw_, (o, kw_) = 1, wt.shape
    else:
        wt = need_param(op, tensors, "w", "uint64", ndim=3)
        pw_, o, kw_ = wt.shape
    if kw_ != x.shape[0]:
        raise GraphError(f"op {op.name!r}: weight rows have {kw_} words, input has {x.shape[0]}")
    acc_check(op, kb * (2**x.planes - 1) * (2**pw_ - 1))
    return ValueInfo("int32", (o,))


def _ref_bconv(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.uint64)
    return rk.bconv(op, xs[0], g.tensors[op.params["w"]], vins[0].channels or 0)


def _ref_bconv_planes(
    g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]
) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.uint64)
    planes = x if vins[0].planes > 1 else x[None]
    return rk.bconv_levels(op, planes, g.tensors[op.params["w"]], vins[0].channels or 0)


def _ref_bdense(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.uint64)
    return rk.bdense(xs[0], g.tensors[op.params["w"]], int(op.attrs["k_bits"])).astype(np.int32)


def _ref_bdense_planes(
    g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]
) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.uint64)
    planes = x if vins[0].planes > 1 else x[None]
    w = g.tensors[op.params["w"]]
    kb = int(op.attrs["k_bits"])
    acc = sum(
        (1 << (i + j)) * rk.bdense(planes[i], w[j], kb)
        for i in range(planes.shape[0])
        for j in range(w.shape[0])
    )
    return np.asarray(acc).astype(np.int32)


def _eng_bconv(c: EngineContext, op: Op) -> Kernel:
    a, w, N = op.attrs, c.graph.tensors[op.params["w"]], c.native
    st, pd, k, th = t2(a["stride"]), t2(a["padding"]), c.kernels, c.threads
    if op.type == "bconv2d":
        return one(lambda x: N.bconv2d(x, w, a["channels"], st, pd, a["pad_value"], k, th))
    single = (
        c.values[op.inputs[0]].planes == 1
    )  # a one-plane value is stored without its plane axis
    return one(
        lambda x: N.bconv2d_planes(
            x[None] if single else x, w, a["channels"], st, pd, a["pad_value"], k, th
        )
    )


def _eng_bdense(c: EngineContext, op: Op) -> Kernel:
    w, kb, N, k, th = (
        c.graph.tensors[op.params["w"]],
        op.attrs["k_bits"],
        c.native,
        c.kernels,
        c.threads,
    )
    if op.type == "bdense":
        return one(lambda x: N.bgemm(x, w, kb, k, th))
    single = c.values[op.inputs[0]].planes == 1
    return one(lambda x: N.bgemm_planes(x[None] if single else x, w, kb, k, th))


register(
    OpDef(
        "bconv2d",
        "binary",
        "bits [H,W,Cw] -> i32 [Ho,Wo,O]",
        "w u64 (O,kh,kw,Cw); channels, stride, padding, pad_value 0|1",
        frozenset({"w"}),
        _infer_bconv,
        _ref_bconv,
        _eng_bconv,
        ("bconv2d",),
    )
)
register(
    OpDef(
        "bconv2d_planes",
        "binary",
        "bits Pa x [H,W,Cw] -> i32 [Ho,Wo,O]",
        "w u64 (Pw,O,kh,kw,Cw); as bconv2d",
        frozenset({"w"}),
        _infer_bconv,
        _ref_bconv_planes,
        _eng_bconv,
        ("bconv2d_planes",),
    )
)
register(
    OpDef(
        "bdense",
        "binary",
        "bits [Kw] -> i32 [O]",
        "w u64 (O,Kw); k_bits real positions",
        frozenset({"w"}),
        _infer_bdense,
        _ref_bdense,
        _eng_bdense,
        ("bgemm",),
    )
)
register(
    OpDef(
        "bdense_planes",
        "binary",
        "bits Pa x [Kw] -> i32 [O]",
        "w u64 (Pw,O,Kw); k_bits",
        frozenset({"w"}),
        _infer_bdense,
        _ref_bdense_planes,
        _eng_bdense,
        ("bgemm_planes",),
    )
)

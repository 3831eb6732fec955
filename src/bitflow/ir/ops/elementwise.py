"""Elementwise, pooling and layout ops.

- ``scale_bias`` (int32 -> float32: ``x * scale + bias``, each step rounded in float32, no
  FMA), ``affine_f32`` (the same on float32), ``relu_f32``.
- ``add_f32``: ``x_0 + x_1 + ...`` summed left to right in float32 (every partial sum
  rounded: the engines compute exactly this, bit for bit); ``add_i32``: exact int32 sum (an
  overflow is an error, never a wrap-around), saturated to ``clamp = [lo, hi]`` when given (the
  fixed-point residual stream, :class:`bitflow.nn.StreamClamp`).
- ``requant_i32``: ``clamp(floor((x m_c + b_c) / 2^shift), lo, hi)`` on int32 accumulators with
  int64 ``m``, ``b`` (exact; :class:`bitflow.nn.FixedPointBN`'s eval form, a BatchNorm rounded
  to the stream grid). Without ``clamp`` a result outside int32 is an error.
- Pools: ``maxpool_*`` ignore padded positions (PyTorch pads max-pooling with -inf); on bits
  the max of +-1 values is an AND of packed bits and the min an OR. ``avgpool_f32`` divides
  the window sum by ``kh * kw`` (PyTorch's ``count_include_pad=True``; zero padding counts);
  ``global_avgpool_f32`` is the mean over all ``H * W`` positions (``AdaptiveAvgPool2d(1)``),
  output ``[1, 1, C]``. The float pools' reference sums in float64 and rounds once; engines
  sum in float32 (a documented float tolerance, like the float convolutions).
- ``concat``: along the channel (last) axis; bits values concatenate their channels bit by
  bit (the result is packed again: ``ceil(sum C_i / 64)`` words).
- ``flatten``: ``[H,W,C] -> [H*W*C]``; a bits ``[H,W,Cw]`` map keeps every pixel's word padding
  (``groups = H*W``), per plane.
- ``gather_channels``: ``y[..., o] = x[..., index[o]]`` on the channel (last) axis of a float32,
  int32 or uint8 value (exact: a copy). The converter puts it after a convolution whose output
  channels repeat (MCN-1: plane ``(h, k)`` is ``m_k`` times the same binary response, so the
  ``K`` rows of map ``h`` are equal): the convolution then computes each distinct row once
  (``bitflow.convert._rows``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .. import _refkernels as rk
from ..bits import pack_bits, unpack_bits
from ..nodes import GraphError, Op, ValueInfo, conv_out, words_for
from . import EngineContext, HasTensors, Kernel, OpDef, one, register
from ._common import need, need_param, pair, spatial, t2

_NP = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "bits": np.uint64}


# ----------------------------------------------------------------------------- affine / relu
def _infer_affine(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("int32",) if op.type == "scale_bias" else ("float32",))
    o = x.shape[-1]
    need_param(op, tensors, "scale", "float32", shape=(o,))
    need_param(op, tensors, "bias", "float32", shape=(o,))
    return ValueInfo("float32", x.shape)


def _ref_affine(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.int32 if op.type == "scale_bias" else np.float32)
    s, b = g.tensors[op.params["scale"]], g.tensors[op.params["bias"]]
    return (x.astype(np.float32) * s).astype(np.float32) + b


def _eng_affine(c: EngineContext, op: Op) -> Kernel:
    p, N = c.params(op), c.native
    if op.type == "scale_bias":
        return one(lambda x: N.scale_bias(x, p["scale"], p["bias"]))
    return one(lambda x: N.affine_f32(x, p["scale"], p["bias"]))


def _infer_relu(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    need(op, ins[0], ("float32",))
    return ins[0]


def _ref_relu(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], np.float32)
    return np.maximum(xs[0], np.float32(0))


def _eng_relu(c: EngineContext, op: Op) -> Kernel:
    N = c.native
    return one(lambda x: N.relu_f32(x))


# ----------------------------------------------------------------------------- integer clamp
_I32 = (int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max))


def _clamp_range(op: Op) -> tuple[int, int] | None:
    """The ``clamp`` attribute ``[lo, hi]`` (ints within int32, ``lo <= hi``) or None."""
    c = op.attrs.get("clamp")
    if c is None:
        return None
    if (
        not isinstance(c, (list, tuple))
        or len(c) != 2
        or any(type(v) is not int for v in c)
        or not _I32[0] <= c[0] <= c[1] <= _I32[1]
    ):
        raise GraphError(
            f"op {op.name!r} ({op.type}): clamp must be [lo, hi], ints within int32, lo <= hi; got {c!r}"
        )
    return int(c[0]), int(c[1])


def _saturate(op: Op, s: np.ndarray, what: str) -> np.ndarray:
    """int64 (or object) results -> int32: clamped to the op's range, else overflow is an error."""
    rng = _clamp_range(op)
    if rng is not None:
        return np.clip(s, rng[0], rng[1]).astype(np.int32)
    if s.size and (s.min() < _I32[0] or s.max() > _I32[1]):
        raise GraphError(f"op {op.name!r} ({op.type}): {what} overflows int32")
    return s.astype(np.int32)


# ----------------------------------------------------------------------------- requant
def _infer_requant(
    op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]
) -> ValueInfo:
    x = ins[0]
    need(op, x, ("int32",))
    c = x.shape[-1]
    need_param(op, tensors, "m", "int64", shape=(c,))
    need_param(op, tensors, "b", "int64", shape=(c,))
    sh = op.attrs.get("shift")
    if type(sh) is not int or not 0 <= sh <= 62:
        raise GraphError(
            f"op {op.name!r} (requant_i32): shift must be an int in [0, 62], got {sh!r}"
        )
    _clamp_range(op)
    return x


def _ref_requant(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.int32)
    m, b = g.tensors[op.params["m"]], g.tensors[op.params["b"]]
    sh = int(op.attrs["shift"])
    xmax = int(np.abs(x).max(initial=0))
    if xmax * int(np.abs(m).max(initial=0)) + int(np.abs(b).max(initial=0)) < 2**63:
        v = x.astype(np.int64) * m + b  # exact in int64
        q = v >> sh  # arithmetic shift: floor division by 2^shift
    else:  # exact Python integers (slow; only for extreme parameters)
        v = x.astype(object) * m.astype(object) + b.astype(object)
        q = v >> sh
    return _saturate(op, q, "a requantized value")


def _eng_requant(c: EngineContext, op: Op) -> Kernel:
    p, N = c.params(op), c.native
    sh, rng = int(op.attrs["shift"]), _clamp_range(op)
    lo, hi = rng if rng is not None else (None, None)
    t = c.threads
    return one(lambda x: N.requant_i32(x, p["m"], p["b"], sh, lo, hi, t))


# ----------------------------------------------------------------------------- add
def _infer_add(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    dt = "float32" if op.type == "add_f32" else "int32"
    if op.type == "add_i32":
        _clamp_range(op)
    elif "clamp" in op.attrs:
        raise GraphError(f"op {op.name!r} (add_f32): clamp applies to add_i32 only")
    for v in ins:
        need(op, v, (dt,))
        if v.shape != ins[0].shape:
            raise GraphError(
                f"op {op.name!r} ({op.type}): inputs have different shapes {ins[0].shape} and {v.shape}"
            )
    return ins[0]


def _ref_add(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    if op.type == "add_f32":
        for x in xs:
            rk.expect(op, x, np.float32)
        y = xs[0].copy()
        for x in xs[1:]:
            y = y + x  # float32, left to right, each partial sum rounded
        return y
    for x in xs:
        rk.expect(op, x, np.int32)
    s = np.sum([x.astype(np.int64) for x in xs], axis=0)
    return _saturate(op, s, "the sum")


def _eng_add(c: EngineContext, op: Op) -> Kernel:
    N = c.native
    if op.type == "add_f32":
        return lambda xs: N.add_f32(list(xs))
    rng = _clamp_range(op)
    lo, hi = rng if rng is not None else (None, None)
    t = c.threads
    return lambda xs: N.add_i32(list(xs), lo, hi, t)


# ----------------------------------------------------------------------------- pools
def _infer_pool(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    want = {
        "maxpool_bits": "bits",
        "maxpool_i32": "int32",
        "maxpool_f32": "float32",
        "avgpool_f32": "float32",
    }[op.type]
    need(op, x, (want,), 3)
    h, w, c = spatial(op, x)
    kh, kw = pair(op.attrs, "kernel", op.name, 1)
    sh, sw = pair(op.attrs, "stride", op.name, 1)
    ph, pw = pair(op.attrs, "padding", op.name, 0)
    if ph > kh // 2 or pw > kw // 2:
        raise GraphError(f"op {op.name!r}: padding must be at most half the kernel (PyTorch rule)")
    if op.type == "maxpool_bits" and op.attrs.get("op") not in ("and", "or"):
        raise GraphError(
            f"op {op.name!r}: maxpool_bits needs op 'and' or 'or', got {op.attrs.get('op')!r}"
        )
    ho, wo = conv_out(h, kh, sh, ph), conv_out(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise GraphError(f"op {op.name!r}: pool window {kh}x{kw} does not fit the {h}x{w} input")
    return ValueInfo(x.dtype, (ho, wo, c), x.channels, 1, x.planes)


def _ref_pool(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x, t = xs[0], op.type
    rk.expect(op, x, _NP[vins[0].dtype])
    if t == "maxpool_bits":
        if op.attrs["op"] == "and":
            return rk.pool(x, op, np.uint64(0xFFFFFFFFFFFFFFFF), np.bitwise_and.reduce)
        return rk.pool(x, op, np.uint64(0), np.bitwise_or.reduce)
    if t == "maxpool_i32":
        return rk.pool(x, op, np.iinfo(np.int32).min, np.max)
    if t == "maxpool_f32":
        return rk.pool(x, op, -np.inf, np.max)
    kh, kw = t2(op.attrs["kernel"])
    s = rk.pool(x.astype(np.float64), op, 0.0, np.sum)
    return (s / (kh * kw)).astype(np.float32)


def _eng_pool(c: EngineContext, op: Op) -> Kernel:
    a, N = op.attrs, c.native
    k, s, p = t2(a["kernel"]), t2(a["stride"]), t2(a["padding"])
    if op.type == "maxpool_bits":
        return one(lambda x: N.maxpool_bits(x, k, s, p, a["op"]))
    f = {"maxpool_i32": N.maxpool_i32, "maxpool_f32": N.maxpool_f32, "avgpool_f32": N.avgpool_f32}[
        op.type
    ]
    return one(lambda x: f(x, k, s, p))


def _infer_gap(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    need(op, ins[0], ("float32",), 3)
    _, _, c = spatial(op, ins[0])
    return ValueInfo("float32", (1, 1, c))


def _ref_gap(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    x = xs[0]
    rk.expect(op, x, np.float32)
    return x.astype(np.float64).mean(axis=(1, 2), keepdims=True).astype(np.float32)


def _eng_gap(c: EngineContext, op: Op) -> Kernel:
    N = c.native
    return one(lambda x: N.global_avgpool_f32(x))


# ----------------------------------------------------------------------------- layout
def _infer_flatten(
    op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]
) -> ValueInfo:
    x = ins[0]
    need(op, x, ("float32", "int32", "uint8", "bits"), planes_ok=True)
    if len(x.shape) == 1:
        raise GraphError(f"op {op.name!r}: input is already flat")
    n = math.prod(x.shape)
    if x.dtype == "bits":
        assert x.channels is not None
        return ValueInfo("bits", (n,), x.channels, x.groups * math.prod(x.shape[:-1]), x.planes)
    return ValueInfo(x.dtype, (n,))


def _ref_flatten(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    lead = 2 if vins[0].planes > 1 else 1  # planes [P, N, ...] keep both leading axes
    return np.ascontiguousarray(xs[0]).reshape(*xs[0].shape[:lead], -1)


def _eng_flatten(c: EngineContext, op: Op) -> Kernel:
    lead = 2 if c.values[op.inputs[0]].planes > 1 else 1
    return one(lambda x: x.reshape(*x.shape[:lead], -1))


def _infer_concat(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x0 = ins[0]
    for v in ins:
        need(op, v, ("float32", "int32", "uint8", "bits"))
        if v.dtype != x0.dtype or v.shape[:-1] != x0.shape[:-1] or v.groups != 1:
            raise GraphError(
                f"op {op.name!r} (concat): inputs must share dtype and all axes but the last (unflattened), "
                f"got {x0.dtype} {x0.shape} and {v.dtype} {v.shape}"
            )
    if x0.dtype == "bits":
        c = sum(int(v.channels or 0) for v in ins)
        return ValueInfo("bits", (*x0.shape[:-1], words_for(c)), c)
    return ValueInfo(x0.dtype, (*x0.shape[:-1], sum(v.shape[-1] for v in ins)))


def _ref_concat(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    for x, v in zip(xs, vins, strict=True):
        rk.expect(op, x, _NP[v.dtype])
    if vins[0].dtype != "bits":
        return np.concatenate(xs, axis=-1)
    return pack_bits(
        np.concatenate(
            [unpack_bits(x, v.channels or 0) for x, v in zip(xs, vins, strict=True)], axis=-1
        )
    )


def _eng_concat(c: EngineContext, op: Op) -> Kernel:
    N = c.native
    if c.values[op.inputs[0]].dtype == "bits":
        chans = [int(c.values[v].channels or 0) for v in op.inputs]
        return lambda xs: N.concat_bits(list(xs), chans)
    return lambda xs: N.concat(list(xs))


register(
    OpDef(
        "scale_bias",
        "float",
        "i32 [...,O] -> f32",
        "scale f32 (O), bias f32 (O)",
        frozenset({"scale", "bias"}),
        _infer_affine,
        _ref_affine,
        _eng_affine,
        ("scale_bias",),
    )
)
register(
    OpDef(
        "affine_f32",
        "float",
        "f32 [...,O] -> f32",
        "scale f32 (O), bias f32 (O)",
        frozenset({"scale", "bias"}),
        _infer_affine,
        _ref_affine,
        _eng_affine,
        ("affine_f32",),
    )
)
register(
    OpDef(
        "relu_f32",
        "float",
        "f32 -> f32",
        "",
        frozenset(),
        _infer_relu,
        _ref_relu,
        _eng_relu,
        ("relu_f32",),
    )
)
register(
    OpDef(
        "add_f32",
        "float",
        "f32 x n (same shape) -> f32",
        "left-to-right float32 sum",
        frozenset(),
        _infer_add,
        _ref_add,
        _eng_add,
        ("add_f32",),
        inputs=(2, None),
    )
)
register(
    OpDef(
        "add_i32",
        "integer",
        "i32 x n (same shape) -> i32",
        "exact; optional clamp [lo, hi] (saturation), else overflow is an error",
        frozenset(),
        _infer_add,
        _ref_add,
        _eng_add,
        ("add_i32",),
        inputs=(2, None),
    )
)
register(
    OpDef(
        "requant_i32",
        "integer",
        "i32 [..., C] -> i32 [..., C]",
        "m, b i64 (C,); shift; optional clamp [lo, hi]: floor((x m + b) / 2^shift)",
        frozenset({"m", "b"}),
        _infer_requant,
        _ref_requant,
        _eng_requant,
        ("requant_i32",),
    )
)
for _t, _grp, _sig, _nat in (
    ("maxpool_bits", "layout", "bits [H,W,Cw] -> bits [Ho,Wo,Cw]", "maxpool_bits"),
    ("maxpool_i32", "integer", "i32 [H,W,C] -> i32 [Ho,Wo,C]", "maxpool_i32"),
    ("maxpool_f32", "float", "f32 [H,W,C] -> f32 [Ho,Wo,C]", "maxpool_f32"),
    ("avgpool_f32", "float", "f32 [H,W,C] -> f32 [Ho,Wo,C]", "avgpool_f32"),
):
    register(
        OpDef(
            _t,
            _grp,
            _sig,
            "kernel, stride, padding" + ("; op and|or" if _t == "maxpool_bits" else ""),
            frozenset(),
            _infer_pool,
            _ref_pool,
            _eng_pool,
            (_nat,),
        )
    )
register(
    OpDef(
        "global_avgpool_f32",
        "float",
        "f32 [H,W,C] -> f32 [1,1,C]",
        "mean over H*W",
        frozenset(),
        _infer_gap,
        _ref_gap,
        _eng_gap,
        ("global_avgpool_f32",),
    )
)
register(
    OpDef(
        "flatten",
        "layout",
        "[H,W,C] -> [H*W*C]; bits keep per-pixel word padding",
        "",
        frozenset(),
        _infer_flatten,
        _ref_flatten,
        _eng_flatten,
        (),
    )
)


def _infer_gather(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    x = ins[0]
    need(op, x, ("float32", "int32", "uint8"))
    idx = need_param(op, tensors, "index", "int32", ndim=1)
    if idx.shape[0] < 1:
        raise GraphError(f"op {op.name!r} (gather_channels): index is empty")
    c = x.shape[-1]
    if int(idx.min()) < 0 or int(idx.max()) >= c:
        raise GraphError(
            f"op {op.name!r} (gather_channels): index values must lie in [0, {c}) "
            f"(the input's channels), got [{int(idx.min())}, {int(idx.max())}]"
        )
    return ValueInfo(x.dtype, (*x.shape[:-1], int(idx.shape[0])))


def _ref_gather(g: HasTensors, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    rk.expect(op, xs[0], _NP[vins[0].dtype])
    return np.take(xs[0], g.tensors[op.params["index"]].astype(np.int64), axis=-1)


def _eng_gather(c: EngineContext, op: Op) -> Kernel:
    p, N = c.params(op), c.native
    return one(lambda x: N.gather_channels(x, p["index"]))


register(
    OpDef(
        "gather_channels",
        "layout",
        "f32, i32 or u8 [...,C] -> [...,O]",
        "index i32 (O), values in [0, C): y[..., o] = x[..., index[o]]",
        frozenset({"index"}),
        _infer_gather,
        _ref_gather,
        _eng_gather,
        ("gather_channels",),
    )
)
register(
    OpDef(
        "concat",
        "layout",
        "x n [...,C_i] -> [...,sum C_i] (bits: channels bit by bit)",
        "",
        frozenset(),
        _infer_concat,
        _ref_concat,
        _eng_concat,
        ("concat", "concat_bits"),
        inputs=(2, None),
    )
)

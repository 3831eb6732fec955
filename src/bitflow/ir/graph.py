"""The engine graph: a small, typed, torch-free description of an inference network.

A :class:`Graph` is a list of :class:`Op` in topological order over named values. Every value
has a :class:`ValueInfo` (per-sample shape, without the batch axis, and dtype); constant
parameters live in ``Graph.tensors`` (numpy arrays) and ops refer to them by name. Op types and
their semantics mirror the native kernels of ``bitflow._native`` one to one (same names), so an
engine can run a graph op by op; :mod:`bitflow.ir.reference` defines what every op computes.

Conventions (ARCHITECTURE section 2): activations are NHWC; binary activations are packed along
the innermost (channel) axis into uint64 words, LSB first, bit 1 iff the value is -1, padding
bits 0. A ``"bits"`` value therefore has storage shape ``[..., groups * ceil(channels / 64)]``:
``channels`` real bits per group, and ``groups > 1`` only for a flattened ``[H, W, Cw]`` map
(``flatten`` keeps each pixel's word padding, so a dense layer can consume it directly; its dot
product runs over ``groups * channels`` real positions). Multi-bit (MBBN) activations add a
leading plane axis ``[P, N, ...]`` (``ValueInfo.planes``); the converter emits ``P = 1``.

Op set (inputs -> output; params in brackets):

====================  ==============================================================================
conv2d_f32            f32 [H,W,C] -> f32 [Ho,Wo,O]          [w f32 (O,kh,kw,C), bias f32 (O)?]
conv2d_u8i8           u8  [H,W,C] -> i32 [Ho,Wo,O]          [w i8 (O,kh,kw,C)]
bconv2d               bits [H,W,Cw] -> i32 [Ho,Wo,O]        [w u64 (O,kh,kw,Cw)] pad_value 0|1
bconv2d_planes        bits Pa x [H,W,Cw] -> i32 [Ho,Wo,O]   [w u64 (Pw,O,kh,kw,Cw)]
bdense                bits [Kw] -> i32 [O]                  [w u64 (O,Kw)]  k_bits real positions
bdense_planes         bits Pa x [Kw] -> i32 [O]             [w u64 (Pw,O,Kw)]
maxpool_bits          bits [H,W,Cw] -> bits [Ho,Wo,Cw]      op "and" (max of +-1) | "or" (min)
maxpool_i32 / _f32    [H,W,C] -> [Ho,Wo,C]                  padding ignored (PyTorch -inf)
threshold_bits        i32 [...,O] -> bits [...,Ow]          [thr i32 (O), direction i8 (O)]
threshold_f32_bits    f32 [...,O] -> bits [...,Ow]          [thr f32 (O), direction i8 (O)]
threshold_planes      i32 [...,O] -> bits M x [...,Ow]      [thr i32 (O,2^M-1), direction i8 (O)]
threshold_f32_planes  f32 [...,O] -> bits M x [...,Ow]      [thr f32 (O,2^M-1), direction i8 (O)]
scale_bias            i32 [...,O] -> f32                    [scale f32 (O), bias f32 (O)]
affine_f32            f32 [...,O] -> f32                    [scale f32 (O), bias f32 (O)]
relu_f32              f32 -> f32
bitpack               f32 [...,C] -> bits [...,Cw]          bit = (x < 0)
flatten               [H,W,C] -> [H*W*C]; bits [H,W,Cw] -> [H*W*Cw] (groups = H*W), per plane
dense_f32             f32 [K] -> f32 [O]                    [w f32 (O,K), bias f32 (O)?]
====================  ==============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GRAPH_VERSION = 1
INT32_MAX = 2**31 - 1

DTYPES = ("float32", "uint8", "int32", "bits")
PARAM_DTYPES = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "uint64": np.dtype("<u8"),
}


class GraphError(ValueError):
    """A graph is inconsistent (unknown op, missing tensor, wrong shape or dtype, ...)."""


def words_for(bits: int) -> int:
    """``ceil(bits / 64)``: uint64 words holding ``bits`` packed bits."""
    return (bits + 63) // 64


def conv_out(size: int, k: int, stride: int, pad: int) -> int:
    """PyTorch floor-mode output size ``floor((size + 2 pad - k) / stride) + 1`` (<= 0: none)."""
    span = size + 2 * pad - k
    return -1 if span < 0 else span // stride + 1


@dataclass(frozen=True)
class ValueInfo:
    """A value flowing between ops. ``shape`` is per sample (no batch axis).

    For ``dtype == "bits"`` the shape is the *storage* shape in uint64 words; ``channels`` is
    the number of real bits per group and ``groups`` the number of groups in the last axis
    (last axis = ``groups * ceil(channels / 64)`` words). ``planes`` > 1 adds a leading plane
    axis in storage: ``[planes, N, *shape]``.
    """

    dtype: str
    shape: tuple[int, ...]
    channels: int | None = None
    groups: int = 1
    planes: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise GraphError(f"unknown value dtype {self.dtype!r}; expected one of {DTYPES}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.shape or any(s < 1 for s in self.shape):
            raise GraphError(f"value shape must be non-empty with positive sizes, got {self.shape}")
        if self.planes < 1 or self.groups < 1:
            raise GraphError("planes and groups must be >= 1")
        if self.dtype == "bits":
            if self.channels is None or self.channels < 1:
                raise GraphError("a bits value needs channels >= 1")
            if self.shape[-1] != self.groups * words_for(self.channels):
                raise GraphError(
                    f"bits value: last axis {self.shape[-1]} words != groups {self.groups} x "
                    f"ceil({self.channels}/64)"
                )
        elif self.channels is not None or self.groups != 1 or self.planes != 1:
            raise GraphError(f"channels/groups/planes apply to bits values only (dtype {self.dtype})")

    @property
    def real_bits(self) -> int:
        """Real positions along the last axis of a bits value (the dot product length)."""
        assert self.channels is not None
        return self.groups * self.channels

    @property
    def last(self) -> int:
        """Logical size of the last axis (channels for bits, else ``shape[-1]``)."""
        return self.real_bits if self.dtype == "bits" else self.shape[-1]

    def storage_shape(self, batch: int) -> tuple[int, ...]:
        s = (batch, *self.shape)
        return (self.planes, *s) if self.planes > 1 else s

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape)}
        if self.dtype == "bits":
            d.update(channels=self.channels, groups=self.groups, planes=self.planes)
        return d

    @staticmethod
    def from_json(d: Any) -> ValueInfo:
        if not isinstance(d, dict):
            raise GraphError("a value description must be a JSON object")
        try:
            return ValueInfo(
                dtype=str(d["dtype"]), shape=tuple(_int_list(d["shape"], "shape")),
                channels=None if d.get("channels") is None else _int(d["channels"], "channels"),
                groups=_int(d.get("groups", 1), "groups"), planes=_int(d.get("planes", 1), "planes"),
            )
        except KeyError as e:
            raise GraphError(f"value description lacks {e}") from None


def _int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise GraphError(f"{what} must be an integer, got {x!r}")
    return x


def _int_list(x: Any, what: str, n: int | None = None) -> list[int]:
    if not isinstance(x, (list, tuple)):
        raise GraphError(f"{what} must be a list of integers, got {x!r}")
    out = [_int(v, what) for v in x]
    if n is not None and len(out) != n:
        raise GraphError(f"{what} must have {n} entries, got {len(out)}")
    return out


@dataclass
class Op:
    """One operation: ``type`` (native op name), unique ``name``, value names in/out, ``attrs``
    (JSON-serializable), ``params`` (role -> tensor name in ``Graph.tensors``)."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type, "name": self.name, "inputs": list(self.inputs),
            "outputs": list(self.outputs), "attrs": dict(self.attrs), "params": dict(self.params),
        }

    @staticmethod
    def from_json(d: Any) -> Op:
        if not isinstance(d, dict):
            raise GraphError("an op must be a JSON object")
        try:
            t, name, ins, outs = d["type"], d["name"], d["inputs"], d["outputs"]
        except KeyError as e:
            raise GraphError(f"op lacks field {e}") from None
        attrs, params = d.get("attrs", {}), d.get("params", {})
        if not (isinstance(t, str) and isinstance(name, str)):
            raise GraphError("op type and name must be strings")
        if not (isinstance(ins, list) and isinstance(outs, list) and all(isinstance(v, str) for v in ins + outs)):
            raise GraphError(f"op {name!r}: inputs/outputs must be lists of value names")
        if not isinstance(attrs, dict) or not isinstance(params, dict) or not all(
            isinstance(v, str) for v in params.values()
        ):
            raise GraphError(f"op {name!r}: attrs must be an object and params map roles to tensor names")
        return Op(type=t, name=name, inputs=list(ins), outputs=list(outs), attrs=dict(attrs), params=dict(params))


@dataclass(frozen=True)
class InputSpec:
    """Network input: float32 NCHW images ``[N, C, H, W]`` with values in ``[0, 1]``.

    ``preprocess``: ``"unit"`` feeds them as float32 (NHWC) to a float first layer; ``"uint8"``
    feeds ``round(255 x)`` clamped to 0..255 as uint8 to a fixed-point first layer.
    """

    channels: int
    height: int
    width: int
    preprocess: str = "unit"
    name: str = "input"

    def __post_init__(self) -> None:
        if min(self.channels, self.height, self.width) < 1:
            raise GraphError("input channels, height and width must be >= 1")
        if self.preprocess not in ("unit", "uint8"):
            raise GraphError(f"input preprocess must be 'unit' or 'uint8', got {self.preprocess!r}")

    @property
    def value(self) -> ValueInfo:
        dt = "float32" if self.preprocess == "unit" else "uint8"
        return ValueInfo(dt, (self.height, self.width, self.channels))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [self.channels, self.height, self.width], "preprocess": self.preprocess}

    @staticmethod
    def from_json(d: Any) -> InputSpec:
        if not isinstance(d, dict):
            raise GraphError("input spec must be a JSON object")
        try:
            c, h, w = _int_list(d["shape"], "input shape", 3)
            return InputSpec(c, h, w, str(d.get("preprocess", "unit")), str(d.get("name", "input")))
        except KeyError as e:
            raise GraphError(f"input spec lacks {e}") from None


# --------------------------------------------------------------------------- op specifications


def _pair(attrs: Mapping[str, Any], key: str, op: str, minimum: int) -> tuple[int, int]:
    if key not in attrs:
        raise GraphError(f"op {op!r}: missing attribute {key!r}")
    a, b = _int_list(attrs[key], f"op {op!r} attribute {key}", 2)
    if a < minimum or b < minimum:
        raise GraphError(f"op {op!r}: attribute {key} must be >= {minimum}, got {[a, b]}")
    return a, b


def _param(
    op: Op, tensors: Mapping[str, np.ndarray], role: str, dtype: str, shape: Sequence[int] | None = None,
    ndim: int | None = None, optional: bool = False,
) -> np.ndarray | None:
    name = op.params.get(role)
    if name is None:
        if optional:
            return None
        raise GraphError(f"op {op.name!r} ({op.type}): missing parameter {role!r}")
    if name not in tensors:
        raise GraphError(f"op {op.name!r} ({op.type}): tensor {name!r} ({role}) is not in the file")
    t = tensors[name]
    if t.dtype != PARAM_DTYPES[dtype]:
        raise GraphError(f"op {op.name!r}: tensor {name!r} ({role}) has dtype {t.dtype}, expected {dtype}")
    if ndim is not None and t.ndim != ndim:
        raise GraphError(f"op {op.name!r}: tensor {name!r} ({role}) has shape {t.shape}, expected {ndim} axes")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise GraphError(f"op {op.name!r}: tensor {name!r} ({role}) has shape {t.shape}, expected {tuple(shape)}")
    return t


def _need(op: Op, v: ValueInfo, dtypes: tuple[str, ...], ndim: int | None = None) -> None:
    if v.dtype not in dtypes:
        raise GraphError(f"op {op.name!r} ({op.type}) needs a {' or '.join(dtypes)} input, got {v.dtype}")
    if ndim is not None and len(v.shape) != ndim:
        raise GraphError(f"op {op.name!r} ({op.type}) needs a {ndim}-axis input (per sample), got shape {v.shape}")
    if v.planes != 1 and not op.type.endswith("_planes") and op.type != "flatten":
        raise GraphError(f"op {op.name!r} ({op.type}) does not take multi-plane input")


def _acc_check(op: Op, bound: int) -> None:
    if bound > INT32_MAX:
        raise GraphError(f"op {op.name!r} ({op.type}): accumulator bound {bound} exceeds int32")


def _conv_geom(op: Op, h: int, w: int, kh: int, kw: int) -> tuple[int, int]:
    sh, sw = _pair(op.attrs, "stride", op.name, 1)
    ph, pw = _pair(op.attrs, "padding", op.name, 0)
    ho, wo = conv_out(h, kh, sh, ph), conv_out(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise GraphError(f"op {op.name!r}: kernel {kh}x{kw} does not fit the {h}x{w} input")
    return ho, wo


def infer(op: Op, ins: Sequence[ValueInfo], tensors: Mapping[str, np.ndarray]) -> ValueInfo:
    """Check ``op`` against its input values and parameters and return its output value."""
    t = op.type
    if t not in OP_TYPES:
        raise GraphError(f"unknown op type {t!r} (op {op.name!r}); known: {', '.join(sorted(OP_TYPES))}")
    if len(ins) != 1 or len(op.outputs) != 1:
        raise GraphError(f"op {op.name!r} ({t}) takes exactly one input and one output")
    x = ins[0]
    extra = set(op.params) - _PARAM_ROLES[t]
    if extra:
        raise GraphError(f"op {op.name!r} ({t}) has unexpected parameters {sorted(extra)}")
    if t in ("conv2d_f32", "conv2d_u8i8"):
        _need(op, x, ("float32",) if t == "conv2d_f32" else ("uint8",), 3)
        h, w, c = x.shape
        wt = _param(op, tensors, "w", "float32" if t == "conv2d_f32" else "int8", ndim=4)
        assert wt is not None
        o, kh, kw, wc = wt.shape
        if wc != c:
            raise GraphError(f"op {op.name!r}: weight has {wc} input channels, input has {c}")
        if t == "conv2d_f32":
            _param(op, tensors, "bias", "float32", shape=(o,), optional=True)
        else:
            _acc_check(op, 255 * 128 * kh * kw * c)
        ho, wo = _conv_geom(op, h, w, kh, kw)
        return ValueInfo("float32" if t == "conv2d_f32" else "int32", (ho, wo, o))
    if t in ("bconv2d", "bconv2d_planes"):
        _need(op, x, ("bits",), 3)
        assert x.channels is not None
        if x.groups != 1:
            raise GraphError(f"op {op.name!r}: input is a flattened bits value")
        h, w, cw = x.shape
        c = _int(op.attrs.get("channels"), f"op {op.name!r} attribute channels")
        if c != x.channels:
            raise GraphError(f"op {op.name!r}: attribute channels={c} but the input has {x.channels}")
        pv = op.attrs.get("pad_value")
        if pv not in (0, 1):
            raise GraphError(f"op {op.name!r}: pad_value must be 0 or 1, got {pv!r}")
        if t == "bconv2d":
            wt = _param(op, tensors, "w", "uint64", ndim=4)
            assert wt is not None
            pw_, (o, kh, kw, wcw) = 1, wt.shape
        else:
            wt = _param(op, tensors, "w", "uint64", ndim=5)
            assert wt is not None
            pw_, o, kh, kw, wcw = wt.shape
        if wcw != cw:
            raise GraphError(f"op {op.name!r}: weight has {wcw} words per tap, input has {cw}")
        _acc_check(op, kh * kw * c * (2**x.planes - 1) * (2**pw_ - 1))
        ho, wo = _conv_geom(op, h, w, kh, kw)
        return ValueInfo("int32", (ho, wo, o))
    if t in ("bdense", "bdense_planes"):
        _need(op, x, ("bits",), 1)
        kb = _int(op.attrs.get("k_bits"), f"op {op.name!r} attribute k_bits")
        if kb != x.real_bits:
            raise GraphError(f"op {op.name!r}: k_bits={kb} but the input holds {x.real_bits} real bits")
        if t == "bdense":
            wt = _param(op, tensors, "w", "uint64", ndim=2)
            assert wt is not None
            pw_, (o, kw_) = 1, wt.shape
        else:
            wt = _param(op, tensors, "w", "uint64", ndim=3)
            assert wt is not None
            pw_, o, kw_ = wt.shape
        if kw_ != x.shape[0]:
            raise GraphError(f"op {op.name!r}: weight rows have {kw_} words, input has {x.shape[0]}")
        _acc_check(op, kb * (2**x.planes - 1) * (2**pw_ - 1))
        return ValueInfo("int32", (o,))
    if t.startswith("maxpool_"):
        want = {"maxpool_bits": "bits", "maxpool_i32": "int32", "maxpool_f32": "float32"}[t]
        _need(op, x, (want,), 3)
        if x.groups != 1:
            raise GraphError(f"op {op.name!r}: cannot pool a flattened value")
        kh, kw = _pair(op.attrs, "kernel", op.name, 1)
        sh, sw = _pair(op.attrs, "stride", op.name, 1)
        ph, pw = _pair(op.attrs, "padding", op.name, 0)
        if ph > kh // 2 or pw > kw // 2:
            raise GraphError(f"op {op.name!r}: padding must be at most half the kernel (PyTorch rule)")
        if t == "maxpool_bits" and op.attrs.get("op") not in ("and", "or"):
            raise GraphError(f"op {op.name!r}: maxpool_bits needs op 'and' or 'or', got {op.attrs.get('op')!r}")
        h, w, c = x.shape
        ho, wo = conv_out(h, kh, sh, ph), conv_out(w, kw, sw, pw)
        if ho < 1 or wo < 1:
            raise GraphError(f"op {op.name!r}: pool window {kh}x{kw} does not fit the {h}x{w} input")
        return ValueInfo(x.dtype, (ho, wo, c), x.channels, 1, x.planes)
    if t in ("threshold_bits", "threshold_f32_bits", "threshold_planes", "threshold_f32_planes"):
        is_f32 = t in ("threshold_f32_bits", "threshold_f32_planes")
        _need(op, x, ("float32",) if is_f32 else ("int32",))
        o = x.shape[-1]
        if t in ("threshold_planes", "threshold_f32_planes"):
            m = _int(op.attrs.get("planes"), f"op {op.name!r} attribute planes")
            if not 1 <= m <= 8:
                raise GraphError(f"op {op.name!r}: planes must be in 1..8, got {m}")
            thr = _param(op, tensors, "thr", "float32" if is_f32 else "int32", shape=(o, 2**m - 1))
            assert thr is not None
            if is_f32 and np.any(np.isnan(thr)):
                raise GraphError(f"op {op.name!r}: thresholds must not be NaN")
            if np.any(thr[:, 1:] < thr[:, :-1]):  # comparisons, not differences: inf - inf is NaN
                raise GraphError(f"op {op.name!r}: thresholds of every channel must be sorted ascending")
        else:
            m = 1
            _param(op, tensors, "thr", "float32" if t == "threshold_f32_bits" else "int32", shape=(o,))
        d = _param(op, tensors, "direction", "int8", shape=(o,))
        assert d is not None
        if not np.all(np.isin(d, (-1, 1))):
            raise GraphError(f"op {op.name!r}: direction entries must be +1 or -1")
        return ValueInfo("bits", (*x.shape[:-1], words_for(o)), o, 1, m)
    if t in ("scale_bias", "affine_f32"):
        _need(op, x, ("int32",) if t == "scale_bias" else ("float32",))
        o = x.shape[-1]
        _param(op, tensors, "scale", "float32", shape=(o,))
        _param(op, tensors, "bias", "float32", shape=(o,))
        return ValueInfo("float32", x.shape)
    if t == "relu_f32":
        _need(op, x, ("float32",))
        return x
    if t == "bitpack":
        _need(op, x, ("float32",))
        return ValueInfo("bits", (*x.shape[:-1], words_for(x.shape[-1])), x.shape[-1])
    if t == "flatten":
        _need(op, x, ("float32", "int32", "uint8", "bits"))
        if len(x.shape) == 1:
            raise GraphError(f"op {op.name!r}: input is already flat")
        n = math.prod(x.shape)
        if x.dtype == "bits":
            assert x.channels is not None
            return ValueInfo("bits", (n,), x.channels, x.groups * math.prod(x.shape[:-1]), x.planes)
        return ValueInfo(x.dtype, (n,))
    if t == "dense_f32":
        _need(op, x, ("float32",), 1)
        wt = _param(op, tensors, "w", "float32", ndim=2)
        assert wt is not None
        if wt.shape[1] != x.shape[0]:
            raise GraphError(f"op {op.name!r}: weight has {wt.shape[1]} inputs, the value has {x.shape[0]}")
        _param(op, tensors, "bias", "float32", shape=(wt.shape[0],), optional=True)
        return ValueInfo("float32", (wt.shape[0],))
    raise GraphError(f"op type {t!r} has no shape rule")  # pragma: no cover - OP_TYPES is exhaustive


_PARAM_ROLES: dict[str, set[str]] = {
    "conv2d_f32": {"w", "bias"}, "conv2d_u8i8": {"w"}, "bconv2d": {"w"}, "bconv2d_planes": {"w"},
    "bdense": {"w"}, "bdense_planes": {"w"}, "maxpool_bits": set(), "maxpool_i32": set(),
    "maxpool_f32": set(), "threshold_bits": {"thr", "direction"},
    "threshold_f32_bits": {"thr", "direction"}, "threshold_planes": {"thr", "direction"},
    "threshold_f32_planes": {"thr", "direction"},
    "scale_bias": {"scale", "bias"}, "affine_f32": {"scale", "bias"}, "relu_f32": set(),
    "bitpack": set(), "flatten": set(), "dense_f32": {"w", "bias"},
}
OP_TYPES = frozenset({
    "conv2d_f32", "conv2d_u8i8", "bconv2d", "bconv2d_planes", "bdense", "bdense_planes",
    "maxpool_bits", "maxpool_i32", "maxpool_f32", "threshold_bits", "threshold_f32_bits",
    "threshold_planes", "threshold_f32_planes", "scale_bias", "affine_f32", "relu_f32", "bitpack", "flatten",
    "dense_f32",
})
BINARY_OPS = frozenset({"bconv2d", "bconv2d_planes", "bdense", "bdense_planes"})
FLOAT_OPS = frozenset({
    "conv2d_f32", "maxpool_f32", "threshold_f32_bits", "threshold_f32_planes", "scale_bias", "affine_f32",
    "relu_f32", "bitpack", "dense_f32",
})


@dataclass
class Graph:
    """A network: input spec, ops in topological order, parameter tensors, values, output.

    ``mode`` is ``"bitflow"`` (integer-only between the first and the last layer; enforced by
    :meth:`validate`) or ``"xnor"`` (float scaling factor + BatchNorm, XNOR-Net Fig. 1a).
    """

    input: InputSpec
    ops: list[Op]
    tensors: dict[str, np.ndarray]
    output: str
    mode: str = "bitflow"
    class_names: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    values: dict[str, ValueInfo] = field(default_factory=dict)
    version: int = GRAPH_VERSION

    def validate(self) -> dict[str, ValueInfo]:
        """Check every op, tensor reference, shape, dtype and the mode rule; fill ``values``.

        Stored value descriptions (if any) must equal the inferred ones. Raises GraphError.
        """
        if self.version != GRAPH_VERSION:
            raise GraphError(f"graph version {self.version} is not supported (expected {GRAPH_VERSION})")
        if self.mode not in ("bitflow", "xnor"):
            raise GraphError(f"graph mode must be 'bitflow' or 'xnor', got {self.mode!r}")
        known: dict[str, ValueInfo] = {self.input.name: self.input.value}
        names: set[str] = set()
        for op in self.ops:
            if op.name in names:
                raise GraphError(f"duplicate op name {op.name!r}")
            names.add(op.name)
            for v in op.inputs:
                if v not in known:
                    raise GraphError(f"op {op.name!r} reads value {v!r}, which no earlier op produces")
            out = infer(op, [known[v] for v in op.inputs], self.tensors)
            for v in op.outputs:
                if v in known:
                    raise GraphError(f"value {v!r} is produced twice (op {op.name!r})")
                stored = self.values.get(v)
                if stored is not None and stored != out:
                    raise GraphError(f"value {v!r}: stored description {stored} != inferred {out}")
                known[v] = out
        if self.output not in known:
            raise GraphError(f"output value {self.output!r} is not produced by any op")
        o = known[self.output]
        if o.dtype != "float32" or len(o.shape) != 1:
            raise GraphError(f"output {self.output!r} must be float32 [classes], got {o.dtype} {o.shape}")
        if self.class_names and len(self.class_names) != o.shape[0]:
            raise GraphError(f"{len(self.class_names)} class names for {o.shape[0]} outputs")
        if self.mode == "bitflow":
            idx = [i for i, op in enumerate(self.ops) if op.type in BINARY_OPS]
            if idx:
                for op in self.ops[idx[0]: idx[-1] + 1]:
                    if op.type in FLOAT_OPS:
                        raise GraphError(
                            f"bitflow graph: float op {op.name!r} ({op.type}) between binary layers; "
                            "only integer/bit ops may run between the first and the last layer"
                        )
        for name, t in self.tensors.items():
            if t.dtype not in PARAM_DTYPES.values():
                raise GraphError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        self.values = {k: v for k, v in known.items() if k != self.input.name}
        return known

    @property
    def num_classes(self) -> int:
        return self.validate()[self.output].shape[0]

    def to_json(self) -> dict[str, Any]:
        """The graph description stored in a ``.bfn`` header (tensors are referenced by name)."""
        self.validate()
        return {
            "version": self.version,
            "mode": self.mode,
            "input": self.input.to_json(),
            "class_names": list(self.class_names),
            "ops": [op.to_json() for op in self.ops],
            "values": {k: v.to_json() for k, v in self.values.items()},
            "output": self.output,
            "provenance": dict(self.provenance),
        }

    @staticmethod
    def from_json(d: Any, tensors: dict[str, np.ndarray]) -> Graph:
        if not isinstance(d, dict):
            raise GraphError("graph description must be a JSON object")
        try:
            version = _int(d["version"], "graph version")
            if version != GRAPH_VERSION:
                raise GraphError(f"graph version {version} is not supported (expected {GRAPH_VERSION})")
            ops = d["ops"]
            if not isinstance(ops, list):
                raise GraphError("graph ops must be a list")
            values = d.get("values", {})
            if not isinstance(values, dict):
                raise GraphError("graph values must be an object")
            cn = d.get("class_names", [])
            if not isinstance(cn, list) or not all(isinstance(c, str) for c in cn):
                raise GraphError("class_names must be a list of strings")
            prov = d.get("provenance", {})
            if not isinstance(prov, dict):
                raise GraphError("provenance must be an object")
            g = Graph(
                input=InputSpec.from_json(d["input"]),
                ops=[Op.from_json(o) for o in ops],
                tensors=tensors,
                output=str(d["output"]),
                mode=str(d.get("mode", "bitflow")),
                class_names=cn,
                provenance=prov,
                values={str(k): ValueInfo.from_json(v) for k, v in values.items()},
                version=version,
            )
        except KeyError as e:
            raise GraphError(f"graph description lacks field {e}") from None
        g.validate()
        return g

    def save(self, path: str) -> None:
        """Write a ``.bfn`` file atomically (see :func:`bitflow.ir.bfn.save_graph`)."""
        from .bfn import save_graph

        save_graph(self, path)

    def summary(self) -> str:
        """One line per op: type, name, output shape, parameter bytes."""
        known = self.validate()
        lines = [f"input {self.input.name}: {self.input.value.dtype} {list(self.input.value.shape)}"]
        for op in self.ops:
            v = known[op.outputs[0]]
            nbytes = sum(self.tensors[t].nbytes for t in op.params.values())
            lines.append(f"{op.type:<20s} {op.name:<28s} -> {v.dtype:<7s} {list(v.shape)}  {nbytes} B")
        return "\n".join(lines)


__all__ = [
    "BINARY_OPS",
    "FLOAT_OPS",
    "GRAPH_VERSION",
    "Graph",
    "GraphError",
    "InputSpec",
    "OP_TYPES",
    "Op",
    "ValueInfo",
    "conv_out",
    "infer",
    "words_for",
]

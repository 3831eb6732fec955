"""Write an engine graph as ONNX (``format="onnx"``) or QONNX (``format="qonnx"``).

Both formats carry every value as a float32 tensor in PyTorch's layout (``[N, C, H, W]`` for
feature maps, ``[N, K]`` after a flatten), with the integers and +-1 values of the engine held
exactly (float32 integers below 2^24; the exporter checks every accumulator bound and refuses a
graph that would not be exact):

=======================  ===================================================================
bits value (1 plane)     +-1 per channel (packed bit 1 = -1)
bits value (M planes)    the MBBN level ``sum_m 2^m c_m`` (odd integers in ``[-L, L]``,
                         ``L = 2^M - 1``; docs/architecture.md §2 / MBBN Eq. 7)
bconv2d / bdense         ``Conv`` / ``MatMul`` with +-1 (or level) weights: the exact
                         xnor-popcount dot product ``N - 2 popcount``; zero padding is the
                         ONNX zero padding, one-padding a ``Pad`` with +1 (level ``L``)
threshold_*              plain ONNX: ``x' = d x``, ``Where(x' < d T, -1, +1)`` (one threshold);
                         levels ``2 #{l : not (x' < d T_l)} - L``. QONNX: ``Mul(d)`` then one
                         ``MultiThreshold`` with per-channel thresholds ``d T`` (out_scale 2,
                         out_bias ``-L``), the form FINN's streamlining produces
bitpack                  plain: ``Where(x < 0, -1, +1)``; QONNX: ``BipolarQuant`` (scale 1)
binary weights (QONNX)   +-1 initializers through ``BipolarQuant`` (scale 1)
fixed-point first layer  ``Clip(Round(255 x), 0, 255)`` (ONNX Round is half-to-even, like the
                         engine) and a ``Conv`` with the int8 weights as float32
flatten                  ``Transpose`` to NHWC, then ``Flatten``: the engine's feature order
add_f32 / add_i32        a chain of ``Add`` nodes, left to right (the engine's float32 rounding
                         of every partial sum; integer sums are checked to stay below 2^24)
concat                   ``Concat`` on the channel axis (bits: the +-1 channels, bit by bit)
gather_channels          ``Gather`` on the channel axis (int64 indices)
avgpool_f32              ``AveragePool`` with ``count_include_pad=1`` (PyTorch's default)
global_avgpool_f32       ``GlobalAveragePool``
scale_bias / affine_f32  ``Mul`` then ``Add`` (each rounded, no FMA: the engine's order)
=======================  ===================================================================

Each op type has one small rule in :data:`RULES` (``@rule("add_f32", "add_i32")``), like the
op table it mirrors (:data:`bitflow.ir.ops.OPS`): a new engine op is one new entry, and a test
fails while an op of the table has no rule. Integer values carry a bound on ``|x|`` from their
producer (:meth:`_Builder.set_bound`) so every sum is proven exact in float32.

The one convention that differs is NaN. ``bitflow`` refuses input that contains NaN or infinity
(``ValueError``); inside a graph (a float first layer whose output is NaN) a NaN passes every
threshold, as in the reference executor (``not (x < T)``), so it becomes +1 / the highest level.
The plain ONNX export reproduces that rule. QONNX's ``MultiThreshold`` counts ``x >= T`` and its
``BipolarQuant`` maps ``x >= 0`` to +1, so there a NaN passes no threshold and becomes -1 / the
lowest level. onnxruntime and qonnx accept NaN input and compute with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from ..ir import Graph, load_graph
from ..ir.bits import plane_levels, unpack_bits
from ..ir.graph import Op, ValueInfo

FORMATS = ("onnx", "qonnx")
OPSET = 17
QONNX_DOMAIN = "qonnx.custom_op.general"
_EXACT = 1 << 24  # float32 holds every integer of magnitude <= 2^24


class ExportError(ValueError):
    """The graph cannot be written in the asked format (an op without a rule, or an integer
    range that float32 would not hold exactly)."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "exporting to ONNX needs the onnx package: pip install 'bitflow[onnx]'"
        ) from e
    return onnx


def _logical(v: ValueInfo) -> tuple[int, ...]:
    """Per-sample shape in ONNX layout: ``(C, H, W)`` for a map, ``(K,)`` for a vector."""
    shape = v.shape[:-1] + (v.last,)
    if len(shape) == 3:
        h, w, c = shape
        return (c, h, w)
    return shape


class _Builder:
    """Emits ONNX nodes for one graph; the per-op rules (:data:`RULES`) call its helpers."""

    def __init__(self, graph: Graph, fmt: str, batch: int | None) -> None:
        self.batch: int | str = "N" if batch is None else batch
        self.onnx = _onnx()
        self.h = self.onnx.helper
        self.g = graph
        self.fmt = fmt
        self.values = graph.validate()
        self.values[graph.input.name] = graph.input.value
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.names: dict[str, str] = {}
        # bound on |x| of every integer value (int32, uint8): float32 must hold them exactly
        self.bounds: dict[str, int] = {}
        self.count = 0

    # ------------------------------------------------------------------ helpers
    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, a: np.ndarray) -> str:
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def scalar(self, hint: str, v: float) -> str:
        return self.const(hint, np.array(v, np.float32))

    def node(
        self, op: str, inputs: Sequence[str], hint: str, domain: str | None = None, **attrs: Any
    ) -> str:
        out = self.fresh(hint)
        kw = {"domain": domain} if domain else {}
        self.nodes.append(self.h.make_node(op, list(inputs), [out], name=out, **kw, **attrs))
        return out

    def per_channel(self, v: ValueInfo, a: np.ndarray, extra: int = 0) -> np.ndarray:
        """Per-channel params ``[C, *extra]`` broadcast against this value's ONNX layout."""
        a = np.asarray(a, np.float32)
        spatial = len(_logical(v)) == 3
        if spatial:
            return a.reshape(a.shape[0], 1, 1, *a.shape[1:]) if extra else a.reshape(-1, 1, 1)
        return a

    def set_bound(self, op: Op, bound: int) -> None:
        """Record the bound on ``|x|`` of ``op``'s integer output; refuse one float32 would not
        hold exactly."""
        if bound >= _EXACT:
            raise ExportError(
                f"op {op.name!r} ({op.type}): integer bound {bound} exceeds 2^24, so float32 would "
                "not hold the integers exactly"
            )
        self.bounds[op.outputs[0]] = bound

    def bound(self, op: Op, value: str) -> int:
        if value not in self.bounds:
            raise ExportError(
                f"op {op.name!r} ({op.type}): no integer range is known for its input {value!r}, "
                "so the exporter cannot prove float32 holds it exactly"
            )
        return self.bounds[value]

    # ------------------------------------------------------------------ graph
    def run(self) -> Any:
        g, h, onnx = self.g, self.h, self.onnx
        spec = g.input
        x = "input"
        if spec.preprocess == "uint8":  # round(255 x), clamp to 0..255 (the engine's preprocessing)
            x = self.node("Mul", [x, self.scalar("c255", 255)], "scaled")
            x = self.node("Round", [x], "rounded")
            x = self.node("Clip", [x, self.scalar("lo", 0), self.scalar("hi", 255)], "pixels")
            self.bounds[spec.name] = 255
        self.names[spec.name] = x
        for op in g.ops:
            rule = RULES.get(op.type)
            if rule is None:
                raise ExportError(f"op {op.name!r}: no ONNX rule for op type {op.type!r}")
            if len(op.outputs) != 1:  # pragma: no cover - validation forbids it
                raise ExportError(f"op {op.name!r} ({op.type}): ops have exactly one output")
            xs = [self.names[v] for v in op.inputs]
            vins = [self.values[v] for v in op.inputs]
            self.names[op.outputs[0]] = rule(self, op, xs, vins, self.values[op.outputs[0]])
        vout = self.values[g.output]
        self.nodes.append(
            h.make_node("Identity", [self.names[g.output]], ["logits"], name="logits")
        )
        batch = self.batch
        inputs = [
            h.make_tensor_value_info(
                "input", onnx.TensorProto.FLOAT, [batch, spec.channels, spec.height, spec.width]
            )
        ]
        outputs = [
            h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [batch, *_logical(vout)])
        ]
        value_info = [
            h.make_tensor_value_info(
                self.names[name], onnx.TensorProto.FLOAT, [batch, *_logical(v)]
            )
            for name, v in self.values.items()
            if name in self.names
            and self.names[name] not in ("input", "logits")
            and name != g.output
        ]
        graph = h.make_graph(
            self.nodes, "bitflow", inputs, outputs, self.inits, value_info=value_info
        )
        graph.doc_string = f"bitflow engine graph exported as {self.fmt}; mode {g.mode}"
        opsets = [h.make_opsetid("", OPSET)]
        if self.fmt == "qonnx":
            opsets.append(h.make_opsetid(QONNX_DOMAIN, 1))
        model = h.make_model(graph, opset_imports=opsets, producer_name="bitflow")
        model.ir_version = 8  # what onnxruntime >= 1.14 reads (opset 17)
        meta = {
            "bitflow.classes": ",".join(g.class_names),
            "bitflow.mode": g.mode,
            "bitflow.format": self.fmt,
        }
        for k, v in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        return model

    # ------------------------------------------------------------------ shared by several rules
    def weights(self, w: np.ndarray, binary: bool) -> str:
        name = self.const("w", w.astype(np.float32))
        if binary and self.fmt == "qonnx":
            name = self.node(
                "BipolarQuant", [name, self.scalar("wscale", 1.0)], "wq", domain=QONNX_DOMAIN
            )
        return name

    def conv(
        self, op: Op, x: str, w: np.ndarray, bias: np.ndarray | None, pad_level: float, binary: bool
    ) -> str:
        ph, pw = op.attrs["padding"]
        sh, sw = op.attrs["stride"]
        if pad_level != 0 and (ph or pw):
            pads = np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64)
            x = self.node(
                "Pad", [x, self.const("pads", pads), self.scalar("padv", pad_level)], "padded"
            )
            ph = pw = 0
        ins = [x, self.weights(w.transpose(0, 3, 1, 2), binary)]
        if bias is not None:
            ins.append(self.const("b", bias.astype(np.float32)))
        kh, kw = w.shape[1], w.shape[2]
        return self.node(
            "Conv",
            ins,
            op.name or "conv",
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            pads=[ph, pw, ph, pw],
        )

    def dense(self, op: Op, x: str, wl: np.ndarray, binary: bool) -> str:
        return self.node(
            "MatMul", [x, self.weights(np.ascontiguousarray(wl.T), binary)], op.name or "dense"
        )

    def window(self, op: Op, onnx_op: str, x: str, **extra: Any) -> str:
        kh, kw = op.attrs["kernel"]
        sh, sw = op.attrs["stride"]
        ph, pw = op.attrs["padding"]
        return self.node(
            onnx_op,
            [x],
            op.name or "pool",
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            pads=[ph, pw, ph, pw],
            **extra,
        )

    def threshold(self, op: Op, x: str, vin: ValueInfo, planes: int) -> str:
        thr = self.g.tensors[op.params["thr"]]
        d = self.g.tensors[op.params["direction"]].astype(np.float64)
        t = thr.astype(np.float64).reshape(thr.shape[0], -1)  # [C, L]
        if thr.dtype == np.int32:
            # reachable integers lie below 2^24 in magnitude (checked at the producer), so the
            # clamp keeps every comparison and the float32 thresholds stay exact
            t = np.clip(t, -_EXACT, _EXACT)
        levels = t.shape[1]
        flip = d < 0
        td = np.where(flip[:, None], -t, t)  # x <= T  <=>  -x >= -T: one direction for all
        if flip.any():
            x = self.node(
                "Mul",
                [x, self.const("dir", self.per_channel(vin, d.astype(np.float32)))],
                "directed",
            )
        if self.fmt == "qonnx":
            layout = "NCHW" if len(_logical(vin)) == 3 else "NC"
            dtype = "BIPOLAR" if levels == 1 else f"INT{planes + 1}"
            return self.node(
                "MultiThreshold",
                [x, self.const("thr", np.sort(td, axis=1).astype(np.float32))],
                op.name or "threshold",
                domain=QONNX_DOMAIN,
                out_scale=2.0,
                out_bias=float(-levels),
                out_dtype=dtype,
                data_layout=layout,
            )
        if levels == 1:
            below = self.node(
                "Less",
                [x, self.const("thr", self.per_channel(vin, td[:, 0].astype(np.float32)))],
                "below",
            )
            return self.node(
                "Where",
                [below, self.scalar("m1", -1), self.scalar("p1", 1)],
                op.name or "threshold",
            )
        xe = self.node("Unsqueeze", [x, self.const("axis", np.array([-1], np.int64))], "xl")
        below = self.node(
            "Less",
            [xe, self.const("thr", self.per_channel(vin, td.astype(np.float32), extra=1))],
            "below",
        )
        passed = self.node(
            "Cast", [self.node("Not", [below], "passed")], "passedf", to=self.onnx.TensorProto.FLOAT
        )
        q = self.node(
            "ReduceSum", [passed, self.const("axis", np.array([-1], np.int64))], "q", keepdims=0
        )
        two_q = self.node("Mul", [q, self.scalar("two", 2)], "twoq")
        return self.node("Sub", [two_q, self.scalar("L", levels)], op.name or "levels")


# ---------------------------------------------------------------------------- the rule table
Rule = Callable[[_Builder, Op, list[str], list[ValueInfo], ValueInfo], str]
"""``rule(builder, op, xs, vins, vout) -> name``: emit the nodes of ``op`` (ONNX input names
``xs``, input values ``vins``, output value ``vout``) and return the ONNX name of its output."""

RULES: dict[str, Rule] = {}
"""op type -> export rule; every op of :data:`bitflow.ir.ops.OPS` has one (a test checks it)."""


def rule(*types: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the export rule of the op ``types`` (a new engine op: one entry)."""

    def deco(fn: Rule) -> Rule:
        for t in types:
            if t in RULES:
                raise ValueError(f"export rule for op type {t!r} is declared twice")
            RULES[t] = fn
        return fn

    return deco


@rule("conv2d_f32")
def _conv2d_f32(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    p = b.g.tensors
    return b.conv(
        op,
        xs[0],
        p[op.params["w"]],
        p[op.params["bias"]] if "bias" in op.params else None,
        0,
        False,
    )


@rule("conv2d_u8i8")
def _conv2d_u8i8(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    w = b.g.tensors[op.params["w"]]
    b.set_bound(
        op,
        b.bound(op, op.inputs[0])
        * int(np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1).max(initial=0)),
    )
    return b.conv(op, xs[0], w, None, 0, False)


@rule("conv2d_u8b1")
def _conv2d_u8b1(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    # +-1 weights over uint8 activations (MCN W1/A8), zero padding: |y| <= bound(x) * taps
    w = b.g.tensors[op.params["w"]]
    wl = 1 - 2 * unpack_bits(w, int(op.attrs["channels"])).astype(np.int64)  # [O, kh, kw, C] +-1
    b.set_bound(op, b.bound(op, op.inputs[0]) * wl[0].size)
    return b.conv(op, xs[0], wl, None, 0, False)


@rule("conv2d_f32b1")
def _conv2d_f32b1(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    # +-1 weights over float32 activations (BinaryConnect / BWN): a float Conv (another
    # summation order: agrees within the float32 summation bound, like conv2d_f32)
    w = b.g.tensors[op.params["w"]]
    wl = 1 - 2 * unpack_bits(w, int(op.attrs["channels"])).astype(np.float32)
    return b.conv(op, xs[0], wl, None, 0, False)


@rule("dense_f32b1")
def _dense_f32b1(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    w = b.g.tensors[op.params["w"]]
    wl = 1 - 2 * unpack_bits(w, int(op.attrs["channels"])).astype(np.float32)  # [O, K]
    return b.dense(op, xs[0], wl, False)


@rule("threshold_u8", "threshold_f32_u8")
def _threshold_u8(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    # the odd level 2q - L of the shared threshold builder, then q = (v + L) / 2 (exact)
    levels = int(b.g.tensors[op.params["thr"]].shape[1])
    b.set_bound(op, levels)
    v = b.threshold(op, xs[0], vins[0], max(1, levels.bit_length()))
    s = b.node("Add", [v, b.scalar("L", levels)], "vL")
    return b.node("Mul", [s, b.scalar("half", 0.5)], op.name or "q")


@rule("threshold_bits_hw")
def _threshold_bits_hw(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    # one threshold per (position, channel): x <= T  <=>  -x >= -T, so compare d x < d T
    t = np.clip(b.g.tensors[op.params["thr"]].astype(np.float64), -_EXACT, _EXACT)
    d = b.g.tensors[op.params["direction"]].astype(np.float64)
    x = b.node("Mul", [xs[0], b.const("dir", d.transpose(2, 0, 1).astype(np.float32))], "directed")
    td = (d * t).transpose(2, 0, 1).astype(np.float32)  # (O, H, W): the ONNX layout
    below = b.node("Less", [x, b.const("thr", td)], "below")
    return b.node("Where", [below, b.scalar("m1", -1), b.scalar("p1", 1)], op.name or "threshold")


@rule("scale_hw")
def _scale_hw(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    # one product per (position, channel), rounded once: the engine's value
    s = b.g.tensors[op.params["scale"]].transpose(2, 0, 1)  # (O, H, W): the ONNX layout
    return b.node("Mul", [xs[0], b.const("scale", np.ascontiguousarray(s, np.float32))], op.name)


@rule("dense_u8b1")
def _dense_u8b1(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    w = b.g.tensors[op.params["w"]]
    wl = 1 - 2 * unpack_bits(w, int(op.attrs["channels"])).astype(np.int64)  # [O, K] +-1
    b.set_bound(op, b.bound(op, op.inputs[0]) * wl.shape[1])
    return b.dense(op, xs[0], wl, False)


@rule("rprelu_f32")
def _rprelu_f32(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    # ReActNet RPReLU: Sub, PRelu, Add (each rounded in float32: the engine's three steps)
    p, v = b.g.tensors, vins[0]
    t = b.node("Sub", [xs[0], b.const("gamma", b.per_channel(v, p[op.params["gamma"]]))], "t")
    u = b.node("PRelu", [t, b.const("slope", b.per_channel(v, p[op.params["slope"]]))], "u")
    return b.node(
        "Add", [u, b.const("zeta", b.per_channel(v, p[op.params["zeta"]]))], op.name or "rprelu"
    )


@rule("bconv2d")
def _bconv2d(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    w = b.g.tensors[op.params["w"]]
    wl = 1 - 2 * unpack_bits(w, int(op.attrs["channels"])).astype(np.int64)  # [O, kh, kw, C] +-1
    b.set_bound(op, wl[0].size)
    return b.conv(op, xs[0], wl, None, 0 if int(op.attrs["pad_value"]) == 0 else 1, True)


@rule("bconv2d_planes")
def _bconv2d_planes(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    w = b.g.tensors[op.params["w"]]
    wl = plane_levels(w, int(op.attrs["channels"]))  # [O, kh, kw, C] odd levels
    lx = (1 << vins[0].planes) - 1
    b.set_bound(op, wl[0].size * lx * ((1 << w.shape[0]) - 1))
    pad = 0 if int(op.attrs["pad_value"]) == 0 else lx
    return b.conv(op, xs[0], wl, None, pad, w.shape[0] == 1)


@rule("bdense")
def _bdense(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    w, vin = b.g.tensors[op.params["w"]], vins[0]
    assert vin.channels is not None
    wl = 1 - 2 * unpack_bits(w, vin.channels, vin.groups).astype(np.int64)  # [O, K]
    b.set_bound(op, wl.shape[1])
    return b.dense(op, xs[0], wl, True)


@rule("bdense_planes")
def _bdense_planes(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    w, vin = b.g.tensors[op.params["w"]], vins[0]
    assert vin.channels is not None
    wl = plane_levels(w, vin.channels, vin.groups)
    b.set_bound(op, wl.shape[1] * ((1 << vin.planes) - 1) * ((1 << w.shape[0]) - 1))
    return b.dense(op, xs[0], wl, w.shape[0] == 1)


@rule("dense_f32")
def _dense_f32(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    p = b.g.tensors
    y = b.dense(op, xs[0], p[op.params["w"]], False)
    if "bias" in op.params:
        y = b.node(
            "Add",
            [y, b.const("b", p[op.params["bias"]].astype(np.float32))],
            (op.name or "dense") + "_bias",
        )
    return y


@rule("maxpool_bits")
def _maxpool_bits(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    if op.attrs["op"] == "and":  # AND of bits (1 = -1) = max of +-1
        return b.window(op, "MaxPool", xs[0])
    neg = b.node("Neg", [xs[0]], "neg")  # OR = min of +-1
    return b.node("Neg", [b.window(op, "MaxPool", neg)], op.name or "pool")


@rule("maxpool_i32", "maxpool_f32")
def _maxpool(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    if vins[0].dtype == "int32":
        b.set_bound(op, b.bound(op, op.inputs[0]))
    return b.window(op, "MaxPool", xs[0])


@rule("avgpool_f32")
def _avgpool_f32(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    # the window sum over kh * kw, zero padding included (PyTorch's count_include_pad=True)
    return b.window(op, "AveragePool", xs[0], count_include_pad=1)


@rule("global_avgpool_f32")
def _global_avgpool_f32(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    return b.node(
        "GlobalAveragePool", [xs[0]], op.name or "gap"
    )  # [N, C, 1, 1]: the engine's [1, 1, C]


@rule("threshold_bits", "threshold_f32_bits")
def _threshold_bits(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    return b.threshold(op, xs[0], vins[0], 1)


@rule("threshold_planes", "threshold_f32_planes")
def _threshold_planes(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    return b.threshold(op, xs[0], vins[0], int(op.attrs["planes"]))


@rule("scale_bias", "affine_f32")
def _affine(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    # x * scale, rounded, then + bias, rounded: the engine's order (no FMA)
    p, v = b.g.tensors, vins[0]
    y = b.node("Mul", [xs[0], b.const("scale", b.per_channel(v, p[op.params["scale"]]))], "scaled")
    return b.node(
        "Add", [y, b.const("bias", b.per_channel(v, p[op.params["bias"]]))], op.name or "affine"
    )


@rule("relu_f32")
def _relu_f32(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    return b.node("Relu", [xs[0]], op.name or "relu")


@rule("add_f32", "add_i32")
def _add(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    # a chain of binary Adds, left to right: the engine's float32 rounding of every partial sum
    # (ONNX Sum leaves the order open); on int32 every partial sum is an exact float32 integer
    rng = op.attrs.get("clamp") if op.type == "add_i32" else None
    if op.type == "add_i32":
        total = sum(b.bound(op, v) for v in op.inputs)
        b.set_bound(op, total)  # every partial sum must be an exact float32 integer
        if rng is not None:
            b.set_bound(op, min(total, max(abs(int(rng[0])), abs(int(rng[1])))))
    y = xs[0]
    for i, x in enumerate(xs[1:], 1):
        last = i == len(xs) - 1 and rng is None
        y = b.node("Add", [y, x], op.name or "add" if last else "partial")
    if (
        rng is not None
    ):  # the saturating add of the fixed-point stream (partial sums exact below 2^24)
        y = b.node(
            "Clip",
            [y, b.scalar("lo", float(rng[0])), b.scalar("hi", float(rng[1]))],
            op.name or "add",
        )
    return y


@rule("requant_i32")
def _requant_i32(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    # floor((x m + b) / 2^shift) in float64, exact while |x m| + |b| < 2^53 (checked): the
    # products and sums are integers below 2^53, the scaling by 2^-shift is exact and Floor
    # rounds as the engine's arithmetic shift does; then the clamp, and back to float32
    m = b.g.tensors[op.params["m"]].astype(np.int64)
    bb = b.g.tensors[op.params["b"]].astype(np.int64)
    sh = int(op.attrs["shift"])
    xmax = b.bound(op, op.inputs[0])
    if xmax * int(np.abs(m).max(initial=0)) + int(np.abs(bb).max(initial=0)) >= 2**53:
        raise ExportError(
            f"op {op.name!r} (requant_i32): |x m + b| may reach 2^53, beyond exact float64"
        )
    ends = [
        (v * int(mc) + int(bc)) >> sh for mc, bc in zip(m, bb, strict=True) for v in (-xmax, xmax)
    ]
    lo, hi = min(ends, default=0), max(ends, default=0)
    rng = op.attrs.get("clamp")
    if rng is not None:
        lo, hi = max(lo, int(rng[0])), min(hi, int(rng[1]))
    b.set_bound(op, max(abs(lo), abs(hi)))
    vin = vins[0]
    x = b.node("Cast", [xs[0]], "x64", to=b.onnx.TensorProto.DOUBLE)
    lay = (-1, 1, 1) if len(_logical(vin)) == 3 else (-1,)  # channels on ONNX axis 1
    mc = b.const("m", m.astype(np.float64).reshape(lay))  # |m| < 2^53 here: exact in float64
    bc = b.const("b", bb.astype(np.float64).reshape(lay))
    y = b.node("Add", [b.node("Mul", [x, mc], "xm"), bc], "xmb")
    y = b.node(
        "Floor", [b.node("Mul", [y, b.const("scale", np.array(2.0**-sh))], "scaled")], "floor"
    )
    if rng is not None:
        y = b.node(
            "Clip",
            [y, b.const("lo", np.array(float(rng[0]))), b.const("hi", np.array(float(rng[1])))],
            "clip",
        )
    return b.node("Cast", [y], op.name or "requant", to=b.onnx.TensorProto.FLOAT)


@rule("concat")
def _concat(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    # along the channels (ONNX axis 1 for maps and vectors); bits are +-1 per channel already
    if vout.dtype in ("int32", "uint8"):
        b.set_bound(op, max(b.bound(op, v) for v in op.inputs))
    return b.node("Concat", xs, op.name or "concat", axis=1)


@rule("gather_channels")
def _gather_channels(
    b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo
) -> str:
    # a copy of channels (ONNX axis 1 for maps and vectors): integers keep their bound
    if vout.dtype in ("int32", "uint8"):
        b.set_bound(op, b.bound(op, op.inputs[0]))
    idx = b.const("index", b.g.tensors[op.params["index"]].astype(np.int64))
    return b.node("Gather", [xs[0], idx], op.name or "gather", axis=1)


@rule("bitpack")
def _bitpack(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    if b.fmt == "qonnx":
        return b.node(
            "BipolarQuant", [xs[0], b.scalar("scale", 1.0)], op.name or "sign", domain=QONNX_DOMAIN
        )
    below = b.node("Less", [xs[0], b.scalar("zero", 0)], "negative")
    return b.node("Where", [below, b.scalar("m1", -1), b.scalar("p1", 1)], op.name or "sign")


@rule("flatten")
def _flatten(b: _Builder, op: Op, xs: list[str], vins: list[ValueInfo], vout: ValueInfo) -> str:
    x, vin = xs[0], vins[0]
    if vin.planes > 1 and vin.dtype != "bits":  # pragma: no cover - validation forbids it
        raise ExportError(f"op {op.name!r}: unexpected planes")
    if vin.dtype in ("int32", "uint8"):
        b.set_bound(op, b.bound(op, op.inputs[0]))
    if len(_logical(vin)) == 3:
        x = b.node("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])  # the engine's NHWC feature order
    return b.node("Flatten", [x], op.name or "flatten", axis=1)


def _default_batch(format: str, batch: int | None | str) -> int | None:
    if batch == "default":
        return 1 if format == "qonnx" else None
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int or None (symbolic), got {batch!r}")
    return batch  # type: ignore[return-value]


def to_onnx(graph: Graph, format: str = "onnx", batch: int | None | str = "default") -> Any:
    """The ``onnx.ModelProto`` of ``graph`` in ``format`` (``"onnx"`` or ``"qonnx"``).

    ``batch``: the batch size written into the input and value shapes; None writes a symbolic
    ``N`` (any batch). The default is symbolic for ONNX and 1 for QONNX, whose tools (qonnx's
    executor, FINN) work on concrete shapes."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return _Builder(graph, format, _default_batch(format, batch)).run()


def export_onnx(
    model: Graph | str | os.PathLike[str],
    path: str | os.PathLike[str],
    format: str = "onnx",
    batch: int | None | str = "default",
) -> Any:
    """Write ``model`` (a :class:`~bitflow.ir.Graph` or a ``.bfn`` path) to ``path`` atomically;
    returns the ``onnx.ModelProto``. The model passes ``onnx.checker.check_model(full_check=True)``
    before it is written."""
    graph = model if isinstance(model, Graph) else load_graph(Path(model))
    proto = to_onnx(graph, format, batch)
    onnx = _onnx()
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString(), make_dirs=False)
    return proto

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
=======================  ===================================================================

The one convention that differs is NaN. ``bitflow`` refuses input that contains NaN or infinity
(``ValueError``); inside a graph (a float first layer whose output is NaN) a NaN passes every
threshold, as in the reference executor (``not (x < T)``), so it becomes +1 / the highest level.
The plain ONNX export reproduces that rule. QONNX's ``MultiThreshold`` counts ``x >= T`` and its
``BipolarQuant`` maps ``x >= 0`` to +1, so there a NaN passes no threshold and becomes -1 / the
lowest level. onnxruntime and qonnx accept NaN input and compute with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from ..ir import Graph, load_graph
from ..ir.bits import plane_levels, unpack_bits
from ..ir.graph import ValueInfo

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
        raise ImportError("exporting to ONNX needs the onnx package: pip install 'bitflow[onnx]'") from e
    return onnx


def _logical(v: ValueInfo) -> tuple[int, ...]:
    """Per-sample shape in ONNX layout: ``(C, H, W)`` for a map, ``(K,)`` for a vector."""
    shape = v.shape[:-1] + (v.last,)
    if len(shape) == 3:
        h, w, c = shape
        return (c, h, w)
    return shape


class _Builder:
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
        self.count = 0

    # ------------------------------------------------------------------ helpers
    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, a: np.ndarray) -> str:
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def node(self, op: str, inputs: Sequence[str], hint: str, domain: str | None = None, **attrs: Any) -> str:
        out = self.fresh(hint)
        kw = {"domain": domain} if domain else {}
        self.nodes.append(self.h.make_node(op, list(inputs), [out], name=out, **kw, **attrs))
        return out

    def value(self, name: str) -> str:
        return self.names[name]

    def per_channel(self, v: ValueInfo, a: np.ndarray, extra: int = 0) -> np.ndarray:
        """Per-channel params ``[C, *extra]`` broadcast against this value's ONNX layout."""
        a = np.asarray(a, np.float32)
        spatial = len(_logical(v)) == 3
        if spatial:
            return a.reshape(a.shape[0], 1, 1, *a.shape[1:]) if extra else a.reshape(-1, 1, 1)
        return a

    # ------------------------------------------------------------------ ops
    def run(self) -> Any:
        g, h, onnx = self.g, self.h, self.onnx
        spec = g.input
        x = "input"
        if spec.preprocess == "uint8":  # round(255 x), clamp to 0..255 (the engine's preprocessing)
            x = self.node("Mul", [x, self.const("c255", np.array(255, np.float32))], "scaled")
            x = self.node("Round", [x], "rounded")
            x = self.node("Clip", [x, self.const("lo", np.array(0, np.float32)), self.const("hi", np.array(255, np.float32))],
                          "pixels")
        self.names[spec.name] = x
        for op in g.ops:
            if len(op.inputs) != 1 or len(op.outputs) != 1:
                raise ExportError(f"op {op.name!r} ({op.type}): only single-input single-output ops are exported")
            vin = self.values[op.inputs[0]]
            vout = self.values[op.outputs[0]]
            src = self.value(op.inputs[0])
            fn = getattr(self, "op_" + op.type, None)
            if fn is None:
                raise ExportError(f"op {op.name!r}: no ONNX rule for op type {op.type!r}")
            out = fn(op, src, vin, vout)
            self.names[op.outputs[0]] = out
        vout = self.values[g.output]
        self.nodes.append(h.make_node("Identity", [self.value(g.output)], ["logits"], name="logits"))
        batch = self.batch
        inputs = [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [batch, spec.channels, spec.height, spec.width])]
        outputs = [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [batch, *_logical(vout)])]
        value_info = [
            h.make_tensor_value_info(self.names[name], onnx.TensorProto.FLOAT, [batch, *_logical(v)])
            for name, v in self.values.items()
            if name in self.names and self.names[name] not in ("input", "logits") and name != g.output
        ]
        graph = h.make_graph(self.nodes, "bitflow", inputs, outputs, self.inits, value_info=value_info)
        graph.doc_string = f"bitflow engine graph exported as {self.fmt}; mode {g.mode}"
        opsets = [h.make_opsetid("", OPSET)]
        if self.fmt == "qonnx":
            opsets.append(h.make_opsetid(QONNX_DOMAIN, 1))
        model = h.make_model(graph, opset_imports=opsets, producer_name="bitflow")
        model.ir_version = 8  # what onnxruntime >= 1.14 reads (opset 17)
        meta = {"bitflow.classes": ",".join(g.class_names), "bitflow.mode": g.mode, "bitflow.format": self.fmt}
        for k, v in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        return model

    def _weights(self, w: np.ndarray, binary: bool) -> str:
        name = self.const("w", w.astype(np.float32))
        if binary and self.fmt == "qonnx":
            name = self.node("BipolarQuant", [name, self.const("wscale", np.array(1.0, np.float32))], "wq",
                             domain=QONNX_DOMAIN)
        return name

    def _conv(self, op: Any, x: str, w: np.ndarray, bias: np.ndarray | None, pad_level: float, binary: bool) -> str:
        ph, pw = op.attrs["padding"]
        sh, sw = op.attrs["stride"]
        if pad_level != 0 and (ph or pw):
            pads = np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64)
            x = self.node("Pad", [x, self.const("pads", pads), self.const("padv", np.array(pad_level, np.float32))], "padded")
            ph = pw = 0
        ins = [x, self._weights(w.transpose(0, 3, 1, 2), binary)]
        if bias is not None:
            ins.append(self.const("b", bias.astype(np.float32)))
        kh, kw = w.shape[1], w.shape[2]
        return self.node("Conv", ins, op.name or "conv", kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])

    @staticmethod
    def _check_exact(op: Any, bound: int) -> None:
        if bound >= _EXACT:
            raise ExportError(f"op {op.name!r}: accumulator bound {bound} exceeds 2^24, so float32 would not hold "
                              "the integers exactly")

    def op_conv2d_f32(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        p = self.g.tensors
        return self._conv(op, x, p[op.params["w"]], p[op.params["bias"]] if "bias" in op.params else None, 0, False)

    def op_conv2d_u8i8(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        w = self.g.tensors[op.params["w"]]
        self._check_exact(op, 255 * int(np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1).max(initial=0)))
        return self._conv(op, x, w, None, 0, False)

    def op_bconv2d(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        w = self.g.tensors[op.params["w"]]
        c = int(op.attrs["channels"])
        wl = 1 - 2 * unpack_bits(w, c).astype(np.int64)  # [O, kh, kw, C] +-1
        self._check_exact(op, wl[0].size)
        return self._conv(op, x, wl, None, 0 if int(op.attrs["pad_value"]) == 0 else 1, True)

    def op_bconv2d_planes(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        w = self.g.tensors[op.params["w"]]
        c = int(op.attrs["channels"])
        wl = plane_levels(w, c)  # [O, kh, kw, C] odd levels
        lx = (1 << vin.planes) - 1
        self._check_exact(op, wl[0].size * lx * ((1 << w.shape[0]) - 1))
        pad = 0 if int(op.attrs["pad_value"]) == 0 else lx
        return self._conv(op, x, wl, None, pad, w.shape[0] == 1)

    def _dense(self, op: Any, x: str, wl: np.ndarray, binary: bool) -> str:
        return self.node("MatMul", [x, self._weights(np.ascontiguousarray(wl.T), binary)], op.name or "dense")

    def op_bdense(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        w = self.g.tensors[op.params["w"]]
        assert vin.channels is not None
        wl = 1 - 2 * unpack_bits(w, vin.channels, vin.groups).astype(np.int64)  # [O, K]
        self._check_exact(op, wl.shape[1])
        return self._dense(op, x, wl, True)

    def op_bdense_planes(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        w = self.g.tensors[op.params["w"]]
        assert vin.channels is not None
        wl = plane_levels(w, vin.channels, vin.groups)
        self._check_exact(op, wl.shape[1] * ((1 << vin.planes) - 1) * ((1 << w.shape[0]) - 1))
        return self._dense(op, x, wl, w.shape[0] == 1)

    def _pool(self, op: Any, x: str) -> str:
        kh, kw = op.attrs["kernel"]
        sh, sw = op.attrs["stride"]
        ph, pw = op.attrs["padding"]
        return self.node("MaxPool", [x], op.name or "pool", kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])

    def op_maxpool_bits(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        if op.attrs["op"] == "and":  # AND of bits (1 = -1) = max of +-1
            return self._pool(op, x)
        neg = self.node("Neg", [x], "neg")  # OR = min of +-1
        return self.node("Neg", [self._pool(op, neg)], op.name or "pool")

    def op_maxpool_i32(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        return self._pool(op, x)

    op_maxpool_f32 = op_maxpool_i32

    def _threshold(self, op: Any, x: str, vin: ValueInfo, planes: int) -> str:
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
            x = self.node("Mul", [x, self.const("dir", self.per_channel(vin, d.astype(np.float32)))], "directed")
        if self.fmt == "qonnx":
            layout = "NCHW" if len(_logical(vin)) == 3 else "NC"
            dtype = "BIPOLAR" if levels == 1 else f"INT{planes + 1}"
            return self.node("MultiThreshold", [x, self.const("thr", np.sort(td, axis=1).astype(np.float32))],
                             op.name or "threshold", domain=QONNX_DOMAIN, out_scale=2.0, out_bias=float(-levels),
                             out_dtype=dtype, data_layout=layout)
        if levels == 1:
            below = self.node("Less", [x, self.const("thr", self.per_channel(vin, td[:, 0].astype(np.float32)))], "below")
            return self.node("Where", [below, self.const("m1", np.array(-1, np.float32)), self.const("p1", np.array(1, np.float32))],
                             op.name or "threshold")
        xe = self.node("Unsqueeze", [x, self.const("axis", np.array([-1], np.int64))], "xl")
        below = self.node("Less", [xe, self.const("thr", self.per_channel(vin, td.astype(np.float32), extra=1))], "below")
        passed = self.node("Cast", [self.node("Not", [below], "passed")], "passedf", to=self.onnx.TensorProto.FLOAT)
        q = self.node("ReduceSum", [passed, self.const("axis", np.array([-1], np.int64))], "q", keepdims=0)
        two_q = self.node("Mul", [q, self.const("two", np.array(2, np.float32))], "twoq")
        return self.node("Sub", [two_q, self.const("L", np.array(levels, np.float32))], op.name or "levels")

    def op_threshold_bits(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        return self._threshold(op, x, vin, 1)

    op_threshold_f32_bits = op_threshold_bits

    def op_threshold_planes(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        return self._threshold(op, x, vin, int(op.attrs["planes"]))

    op_threshold_f32_planes = op_threshold_planes

    def op_scale_bias(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        p = self.g.tensors
        y = self.node("Mul", [x, self.const("scale", self.per_channel(vin, p[op.params["scale"]]))], "scaled")
        return self.node("Add", [y, self.const("bias", self.per_channel(vin, p[op.params["bias"]]))], op.name or "affine")

    op_affine_f32 = op_scale_bias

    def op_relu_f32(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        return self.node("Relu", [x], op.name or "relu")

    def op_bitpack(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        if self.fmt == "qonnx":
            return self.node("BipolarQuant", [x, self.const("scale", np.array(1.0, np.float32))], op.name or "sign",
                             domain=QONNX_DOMAIN)
        below = self.node("Less", [x, self.const("zero", np.array(0, np.float32))], "negative")
        return self.node("Where", [below, self.const("m1", np.array(-1, np.float32)), self.const("p1", np.array(1, np.float32))],
                         op.name or "sign")

    def op_flatten(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        if vin.planes > 1 and vin.dtype != "bits":  # pragma: no cover - validation forbids it
            raise ExportError(f"op {op.name!r}: unexpected planes")
        if len(_logical(vin)) == 3:
            x = self.node("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])  # the engine's NHWC feature order
        return self.node("Flatten", [x], op.name or "flatten", axis=1)

    def op_dense_f32(self, op: Any, x: str, vin: ValueInfo, vout: ValueInfo) -> str:
        p = self.g.tensors
        y = self._dense(op, x, p[op.params["w"]], False)
        if "bias" in op.params:
            y = self.node("Add", [y, self.const("b", p[op.params["bias"]].astype(np.float32))], (op.name or "dense") + "_bias")
        return y


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


def export_onnx(model: Graph | str | os.PathLike[str], path: str | os.PathLike[str], format: str = "onnx",
                batch: int | None | str = "default") -> Any:
    """Write ``model`` (a :class:`~bitflow.ir.Graph` or a ``.bfn`` path) to ``path`` atomically;
    returns the ``onnx.ModelProto``. The model passes ``onnx.checker.check_model(full_check=True)``
    before it is written."""
    graph = model if isinstance(model, Graph) else load_graph(Path(model))
    proto = to_onnx(graph, format, batch)
    onnx = _onnx()
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString(), make_dirs=False)
    return proto

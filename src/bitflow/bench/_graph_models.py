"""Baseline networks that compute an engine graph's function, built from the graph itself.

- :func:`torch_model`: the graph's function in float32 PyTorch ops (the PyTorch fp32
  baseline; :mod:`bitflow.bench` exports the same function with
  :func:`bitflow.export.to_onnx` for ONNX Runtime fp32 and rewrites its binary layers as
  ``ConvInteger`` / ``MatMulInteger`` for ONNX Runtime int8, see :func:`ort_integer`).
- :func:`openvino_bnn`: the network with OpenVINO's own binary operations:
  ``FakeQuantize(levels=2)`` for every threshold (OpenVINO binarizes with it) and
  ``BinaryConvolution`` (``xnor-popcount``) for every binary convolution; a binary dense
  layer is a 1x1 ``BinaryConvolution`` on a 1x1 image with K input channels.
- :func:`torch_twin`: a float network of the graph's shapes with random weights, used only for
  the float32 parameter bytes of a ``.bfn`` file that has no zoo twin.

Every baseline takes the graph's weights and thresholds and decides every sign as the engine
does, so integers and bits are identical and float values (first / last layers, float residual
streams) differ only by float32 rounding: ``tests/python/test_bench_same_function.py`` checks
each against the engine with :func:`bitflow.export.agreement.agreement` (derived tolerance,
zero unexplained differences). The speed ratios therefore compare runtimes computing the same
function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..ir import Graph
from ..ir.bits import pack_bits, unpack_bits

_OV_UNSUPPORTED = ("bconv2d_planes", "bdense_planes", "threshold_planes")


def torch_model(graph: Graph) -> Any:
    """The graph's own function as a float32 PyTorch module (NCHW in, logits out; eval mode):
    PyTorch's way to run this BNN without a binary engine. Every value is a float32 tensor in
    PyTorch's layout (``[N, C, H, W]`` maps, ``[N, K]`` vectors), the same encoding as
    :func:`bitflow.export.to_onnx`: bits are +-1, integers are exact float32 integers.

    - ``bconv2d`` / ``bdense``: ``conv2d`` / ``linear`` of +-1 values with the unpacked +-1
      weights, i.e. the xnor-popcount dot product ``N - 2 popcount`` (exact: integers below
      2^24); ``pad_value=1`` pads +1 before a padding-free convolution;
    - thresholds: +1 iff ``not (x < T)`` (direction +1) / ``not (x > T)`` (direction -1), the
      engine's rule; ``bitpack``: +1 iff ``not (x < 0)``;
    - the fixed-point first layer: ``clamp(round(255 x), 0, 255)`` (half to even, like the engine)
      and a convolution with the int8 weights;
    - ``flatten`` goes through NHWC (the engine's feature order); ``requant_i32`` in float64
      (``floor((x m + b) 2^-shift)``, exact below 2^53), then its clamp; float ops in float32
      (``scale_bias``: the product, rounded, then the sum, like the engine).

    Integer and bit values therefore equal the engine's; float values differ only by float32
    rounding (bounded by :func:`bitflow.ir.reference.float_error_bounds`)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    values = graph.validate()
    values[graph.input.name] = graph.input.value
    exact = float(1 << 24)

    def spatial(v: str) -> bool:
        return len(values[v].shape) == 3

    def chan(v: str, a: np.ndarray) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(a, np.float32))
        return t.reshape(1, -1, 1, 1) if spatial(v) else t.reshape(1, -1)

    def chan64(v: str, a: np.ndarray) -> Any:
        t = torch.from_numpy(np.asarray(a, np.float64).copy())
        return t.reshape(1, -1, 1, 1) if spatial(v) else t.reshape(1, -1)

    def pm1(words: np.ndarray, channels: int, groups: int = 1) -> Any:
        return torch.from_numpy(1.0 - 2.0 * unpack_bits(words, channels, groups).astype(np.float32))

    def step(op: Any) -> Callable[[list[Any]], Any]:
        t, a = op.type, op.attrs
        p = {role: graph.tensors[name] for role, name in op.params.items()}
        v0 = op.inputs[0]
        if t in ("conv2d_f32", "conv2d_u8i8", "conv2d_u8b1", "bconv2d"):
            if t in ("conv2d_u8b1", "bconv2d"):
                w = pm1(p["w"], int(a["channels"])).permute(0, 3, 1, 2).contiguous()
            else:
                w = torch.from_numpy(p["w"].astype(np.float32).transpose(0, 3, 1, 2).copy())
            b = torch.from_numpy(p["bias"].astype(np.float32)) if "bias" in p else None
            st, (ph, pw) = tuple(a["stride"]), tuple(a["padding"])
            if t == "bconv2d" and int(a["pad_value"]) == 1 and (ph or pw):
                return lambda xs: F.conv2d(F.pad(xs[0], (pw, pw, ph, ph), value=1.0), w, b, st)
            return lambda xs: F.conv2d(xs[0], w, b, st, (ph, pw))
        if t == "bdense":
            vin = values[v0]
            assert vin.channels is not None
            wd = pm1(p["w"], vin.channels, vin.groups)
            return lambda xs: F.linear(xs[0], wd)
        if t == "dense_f32":
            wf = torch.from_numpy(np.ascontiguousarray(p["w"], np.float32))
            bf = torch.from_numpy(p["bias"].astype(np.float32)) if "bias" in p else None
            return lambda xs: F.linear(xs[0], wf, bf)
        if t in ("maxpool_f32", "maxpool_i32", "maxpool_bits", "avgpool_f32"):
            k, s, pad = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])
            if t == "avgpool_f32":
                return lambda xs: F.avg_pool2d(xs[0], k, s, pad, count_include_pad=True)
            if t == "maxpool_bits" and a["op"] == "or":  # OR of bits (1 = -1): min of +-1
                return lambda xs: -F.max_pool2d(-xs[0], k, s, pad)
            return lambda xs: F.max_pool2d(xs[0], k, s, pad)
        if t == "global_avgpool_f32":
            return lambda xs: xs[0].mean(dim=(2, 3), keepdim=True)
        if t in ("threshold_bits", "threshold_f32_bits"):
            thr = p["thr"].astype(np.float64)
            if p["thr"].dtype == np.int32:  # reachable integers are below 2^24: same decisions
                thr = np.clip(thr, -exact, exact)
            tt, up = chan(v0, thr), chan(v0, p["direction"]) > 0
            return lambda xs: torch.where(torch.where(up, xs[0] < tt, xs[0] > tt), -1.0, 1.0)
        if t == "bitpack":
            return lambda xs: torch.where(xs[0] < 0, -1.0, 1.0)
        if t == "flatten":
            if spatial(v0):
                return lambda xs: xs[0].permute(0, 2, 3, 1).flatten(1)
            return lambda xs: xs[0].flatten(1)
        if t in ("scale_bias", "affine_f32"):
            sc, bi = chan(v0, p["scale"]), chan(v0, p["bias"])
            return lambda xs: xs[0] * sc + bi  # two float32 ops: product rounded, then sum
        if t == "relu_f32":
            return lambda xs: F.relu(xs[0])
        if t in ("add_f32", "add_i32"):
            rng = a.get("clamp") if t == "add_i32" else None

            def add(xs: list[Any]) -> Any:
                y = xs[0]
                for x in xs[1:]:
                    y = y + x  # left to right, like the engine
                return y if rng is None else y.clamp(float(rng[0]), float(rng[1]))

            return add
        if t == "requant_i32":
            m, bb = chan64(v0, p["m"]), chan64(v0, p["b"])  # |m|, |b| < 2^53: exact
            scale = 2.0 ** -int(a["shift"])
            rq = a.get("clamp")

            def requant(xs: list[Any]) -> Any:
                y = torch.floor((xs[0].double() * m + bb) * scale)
                if rq is not None:
                    y = y.clamp(float(rq[0]), float(rq[1]))
                return y.float()

            return requant
        if t == "concat":
            return lambda xs: torch.cat(xs, dim=1)
        if t == "gather_channels":
            idx = torch.from_numpy(p["index"].astype(np.int64))
            return lambda xs: xs[0].index_select(1, idx)
        raise ValueError(f"op {op.name!r}: no PyTorch float32 form for op type {t!r}")

    steps = [(step(op), list(op.inputs), op.outputs[0]) for op in graph.ops]
    pre = graph.input.preprocess == "uint8"
    src, out = graph.input.name, graph.output

    class GraphFunction(nn.Module):
        def forward(self, x: Any) -> Any:
            if pre:  # the engine's input quantization: round(255 x) half to even, clamp
                x = torch.round(x * 255.0).clamp(0.0, 255.0)
            env = {src: x}
            for fn, ins, dst in steps:
                env[dst] = fn([env[v] for v in ins])
            return env[out]

    return GraphFunction().eval()


def torch_twin(graph: Graph) -> Any:
    """A float32 ``torch.nn.Sequential`` (NCHW) with the graph's layer shapes and random
    weights (eval mode): the full-precision twin's parameter count for a ``.bfn`` file. It does
    not compute the graph's function (:func:`torch_model` does)."""
    import torch
    from torch import nn

    values = graph.validate()
    mods: list[nn.Module] = []
    flat = False
    for op in graph.ops:
        t, a = op.type, op.attrs
        p = {role: graph.tensors[name] for role, name in op.params.items()}
        if t in ("conv2d_f32", "conv2d_u8i8", "bconv2d"):
            o, kh, kw = p["w"].shape[:3]
            c = a["channels"] if t == "bconv2d" else p["w"].shape[3]
            mods.append(
                nn.Conv2d(
                    c, o, (kh, kw), tuple(a["stride"]), tuple(a["padding"]), bias=t == "conv2d_f32"
                )
            )
        elif t in ("maxpool_f32", "maxpool_i32", "maxpool_bits"):
            mods.append(nn.MaxPool2d(tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])))
        elif t in ("threshold_bits", "threshold_f32_bits", "bitpack"):
            ch = (
                int(np.prod(values[op.inputs[0]].shape)) if flat else values[op.inputs[0]].shape[-1]
            )
            mods.append(nn.BatchNorm1d(ch) if flat else nn.BatchNorm2d(ch))
        elif t == "flatten":
            mods.append(nn.Flatten())
            flat = True
        elif t == "bdense":
            mods.append(nn.Linear(a["k_bits"], p["w"].shape[0], bias=False))
        elif t in ("scale_bias", "affine_f32"):
            mods.append(
                nn.BatchNorm1d(p["scale"].shape[0]) if flat else nn.BatchNorm2d(p["scale"].shape[0])
            )
        elif t == "relu_f32":
            mods.append(nn.ReLU())
        elif t == "dense_f32":
            mods.append(nn.Linear(p["w"].shape[1], p["w"].shape[0], bias="bias" in p))
        else:
            raise ValueError(f"op {op.name!r}: no float twin for op type {t!r}")
    model = nn.Sequential(*mods).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                assert m.running_mean is not None and m.running_var is not None
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.5, 0.5)
    return model


def _pack_u1(pm1: np.ndarray) -> Any:
    """+-1 weights [O, C, kh, kw] -> an OpenVINO ``u1`` constant (bit 1 = +1, LSB first)."""
    import openvino as ov

    tensor = ov.Tensor(ov.Type.u1, list(pm1.shape))
    by = pack_bits(pm1.reshape(-1) > 0).view(np.uint8)  # little-endian words: LSB-first bytes
    tensor.data[:] = by[: tensor.data.size].reshape(tensor.data.shape)
    return ov.op.Constant(tensor)


def _unpack_pm1(words: np.ndarray, channels: int) -> np.ndarray:
    """Engine bits [..., Cw] (bit 1 = -1) -> +-1 float32 [..., channels]."""
    return np.where(unpack_bits(words, channels), -1.0, 1.0).astype(np.float32)


def _ov_cut(t: str, p: dict[str, np.ndarray], ch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the cut ``c`` and the side of +1 of the engine's sign rule written as
    OpenVINO's ``x > c`` (``FakeQuantize``): +1 iff ``x >= T`` (direction +1; ``bitpack``: T = 0)
    or ``x <= T`` (direction -1). Integer inputs: ``x >= T <=> x > T - 1/2`` and
    ``x <= T <=> not (x > T + 1/2)`` (exact in float32 below 2^22). Float inputs: ``x >= T <=>
    x > pred(T)``, the next float32 below T, and ``x <= T <=> not (x > T)``."""
    if "thr" in p:
        thr, up = p["thr"].reshape(ch), p["direction"].reshape(ch) > 0
    else:  # bitpack: +1 iff x >= 0
        thr, up = np.zeros(ch, np.float32), np.ones(ch, bool)
    if t == "threshold_bits":  # reachable accumulators are far below 2^22 in magnitude
        t64 = np.clip(thr.astype(np.float64), -(2.0**22), 2.0**22)
        return np.where(up, t64 - 0.5, t64 + 0.5).astype(np.float32), up
    t32 = thr.astype(np.float32)
    return np.where(up, np.nextafter(t32, np.float32(-np.inf)), t32).astype(np.float32), up


def openvino_bnn(graph: Graph, batch: int) -> Any:
    """An ``openvino.Model`` of the graph's architecture with BinaryConvolution layers (NCHW),
    for a static batch size (the CPU plugin's binary convolution needs static shapes).

    The graph may be a DAG (residual networks): every value maps to an OpenVINO node, so a
    value read by several ops (a residual stream read by the next add and by its threshold)
    is one node with several consumers. Residual ops: ``add_f32`` -> ``Add`` (left to right),
    ``avgpool_f32`` -> ``AvgPool`` (zero padding counted), ``global_avgpool_f32`` ->
    ``ReduceMean`` over H, W; the float 1x1 downsample convolutions are ``Convolution``."""
    import openvino as ov
    import openvino.opset13 as ops

    values = graph.validate()
    spec = graph.input
    x = ops.parameter([batch, spec.channels, spec.height, spec.width], np.float32, name="input")
    src = x
    if spec.preprocess == "uint8":  # the engine's pixels: round(255 x) half to even, 0..255
        src = ops.clamp(
            ops.round(ops.multiply(x, ops.constant(np.float32(255))), "half_to_even"), 0.0, 255.0
        )
    nodes: dict[str, Any] = {spec.name: src}
    producer = {op.outputs[0]: op for op in graph.ops}
    readers: dict[str, list[Any]] = {}
    for op in graph.ops:
        for v in op.inputs:
            readers.setdefault(v, []).append(op)
    vec: dict[str, bool] = {
        spec.name: False
    }  # True once activations are [N, K, 1, 1] vectors (after flatten)

    def chan_const(v: np.ndarray) -> Any:
        return ops.constant(np.asarray(v, np.float32).reshape(1, -1, 1, 1))

    for op in graph.ops:
        t, a = op.type, op.attrs
        p = {role: graph.tensors[name] for role, name in op.params.items()}
        node = nodes[op.inputs[0]]
        is_vec = vec[op.inputs[0]]
        if t in _OV_UNSUPPORTED:
            raise ValueError(
                f"OpenVINO baseline: multi-bit op {t!r} has no BinaryConvolution equivalent"
            )
        if t in ("conv2d_f32", "conv2d_u8i8"):
            w = np.ascontiguousarray(p["w"].astype(np.float32).transpose(0, 3, 1, 2))
            pad = list(a["padding"])
            node = ops.convolution(
                node, ops.constant(w), list(a["stride"]), pad, pad, [1, 1], name=op.name
            )
            if "bias" in p:
                node = ops.add(node, chan_const(p["bias"]))
        elif t == "bconv2d":
            w = _unpack_pm1(p["w"], a["channels"]).transpose(0, 3, 1, 2)
            pad = list(a["padding"])
            node = ops.binary_convolution(
                node,
                _pack_u1(np.ascontiguousarray(w)),
                list(a["stride"]),
                pad,
                pad,
                [1, 1],
                "xnor-popcount",
                float(a["pad_value"]),
                name=op.name,
            )
        elif t == "bdense":
            vin = values[op.inputs[0]]
            assert vin.channels is not None  # +-1 [O, K], K in the engine's (NHWC) order
            w = 1.0 - 2.0 * unpack_bits(p["w"], vin.channels, vin.groups).astype(np.float32)
            w = w.reshape(w.shape[0], -1, 1, 1)
            node = ops.binary_convolution(
                node,
                _pack_u1(np.ascontiguousarray(w)),
                [1, 1],
                [0, 0],
                [0, 0],
                [1, 1],
                "xnor-popcount",
                1.0,
                name=op.name,
            )
        elif t in ("maxpool_f32", "maxpool_i32", "maxpool_bits"):
            pad = list(a["padding"])
            neg = t == "maxpool_bits" and a["op"] == "or"  # OR of bits (1 = -1): min of +-1
            if neg:
                node = ops.negative(node)
            node = ops.max_pool(
                node, list(a["stride"]), [1, 1], pad, pad, list(a["kernel"]), name=op.name
            ).output(0)
            if neg:
                node = ops.negative(node)
        elif t == "avgpool_f32":
            pad = list(a["padding"])
            node = ops.avg_pool(
                node, list(a["stride"]), pad, pad, list(a["kernel"]), False, name=op.name
            )
        elif t == "global_avgpool_f32":
            node = ops.reduce_mean(
                node, ops.constant(np.array([2, 3], np.int64)), True, name=op.name
            )
        elif t == "add_f32":
            for other in op.inputs[1:]:
                node = ops.add(node, nodes[other])
            node.set_friendly_name(op.name)
        elif t in ("threshold_bits", "threshold_f32_bits", "bitpack"):
            ch = (
                int(np.prod(values[op.inputs[0]].shape))
                if is_vec
                else values[op.inputs[0]].shape[-1]
            )
            cut, up = _ov_cut(t, p, ch)
            # Output levels 0 and 1 make it the CPU plugin's "binarization" (a JIT kernel that
            # writes u1 bits straight to the next BinaryConvolution; bit 1 = +1, as its
            # xnor-popcount reads them; a channel with reversed levels gets an output mask).
            # That form compiles only where the bits go straight to binary convolutions and the
            # threshold does not follow a max-pool of a binary convolution (the AlexNet / VGG
            # chains: "unsupported reorder case" from blocked f32 to u1); there the levels are
            # -1 and +1, from a comparison and a select.
            src_op = producer.get(op.inputs[0])
            after_pool = (
                src_op is not None
                and src_op.type.startswith("maxpool")
                and src_op.inputs[0] in producer
                and producer[src_op.inputs[0]].type in ("bconv2d", "bdense")
            )
            to_binary = all(r.type in ("bconv2d", "bdense") for r in readers.get(op.outputs[0], []))
            if to_binary and not after_pool:
                lo = chan_const(cut)  # FakeQuantize(levels=2): output_low iff x <= cut
                node = ops.fake_quantize(
                    node,
                    lo,
                    lo,
                    chan_const(np.where(up, 0.0, 1.0)),
                    chan_const(np.where(up, 1.0, 0.0)),
                    2,
                    name=op.name,
                )
            else:  # the general FakeQuantize divides by input_high - input_low (NaN here)
                node = ops.select(
                    ops.greater(node, chan_const(cut)),
                    chan_const(np.where(up, 1.0, -1.0)),
                    chan_const(np.where(up, -1.0, 1.0)),
                    name=op.name,
                )
        elif t == "flatten":  # the engine's feature order: NHWC
            node = ops.transpose(node, ops.constant(np.array([0, 2, 3, 1], np.int64)))
            node = ops.reshape(
                node, ops.constant(np.array([0, -1, 1, 1], np.int64)), special_zero=True
            )
            is_vec = True
        elif t in ("scale_bias", "affine_f32"):
            node = ops.add(
                ops.multiply(node, chan_const(p["scale"])), chan_const(p["bias"]), name=op.name
            )
        elif t == "relu_f32":
            node = ops.relu(node)
        elif t == "dense_f32":
            node = ops.reshape(node, ops.constant(np.array([0, -1], np.int64)), special_zero=True)
            node = ops.matmul(
                node,
                ops.constant(np.ascontiguousarray(p["w"].astype(np.float32))),
                False,
                True,
                name=op.name,
            )
            if "bias" in p:
                node = ops.add(node, ops.constant(p["bias"].astype(np.float32).reshape(1, -1)))
        elif t == "gather_channels":  # channels on axis 1 (maps and [N, K, 1, 1] vectors)
            node = ops.gather(
                node,
                ops.constant(p["index"].astype(np.int64)),
                ops.constant(np.int64(1)),
                name=op.name,
            )
        else:
            raise ValueError(f"op {op.name!r}: no OpenVINO equivalent for op type {t!r}")
        nodes[op.outputs[0]] = node
        vec[op.outputs[0]] = is_vec
    return ov.Model([nodes[graph.output]], [x], "bitflow_bnn")


def ort_integer(graph: Graph, proto: Any) -> Any:
    """``proto`` (:func:`bitflow.export.to_onnx` of ``graph``) with every binary and fixed-point
    layer run on integers: ``bconv2d`` / ``bdense`` become ``ConvInteger`` / ``MatMulInteger``
    on uint8 codes (``x + 1`` in {0, 2} with zero point 1, the same for the +-1 weights), the
    fixed-point first layer a ``ConvInteger`` of the uint8 pixels with the int8 weights stored
    as ``w + 128`` (zero point 128); the int32 result is cast back to float32. Integer products
    and sums are exact, so the model computes the graph's function (ONNX Runtime's int8 GEMMs
    instead of float ones). Float layers stay float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    kinds = {
        op.name: op.type for op in graph.ops if op.type in ("bconv2d", "bdense", "conv2d_u8i8")
    }
    new_nodes: list[Any] = []
    done = 0

    def const(name: str, a: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    for node in g.node:
        base, _, num = node.name.rpartition("_")
        kind = kinds.get(base) if num.isdigit() else None
        if kind is None or node.op_type not in ("Conv", "MatMul"):
            new_nodes.append(node)
            continue
        x, wname, y = node.input[0], node.input[1], node.output[0]
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        if kind == "conv2d_u8i8":  # x: float pixels 0..255 (exact integers), w: int8
            xq, zp = f"{y}_xq", 128.0
            new_nodes.append(helper.make_node("Cast", [x], [xq], to=TensorProto.UINT8))
            xzp = const(f"{y}_xzp", np.array(0, np.uint8))
        else:  # x: +-1 -> {0, 2} with zero point 1
            zp = 1.0
            x1 = f"{y}_x1"
            new_nodes.append(
                helper.make_node("Add", [x, const(f"{y}_one", np.array(1, np.float32))], [x1])
            )
            xq = f"{y}_xq"
            new_nodes.append(helper.make_node("Cast", [x1], [xq], to=TensorProto.UINT8))
            xzp = const(f"{y}_xzp", np.array(1, np.uint8))
        wq = const(f"{y}_wq", (w + zp).astype(np.uint8))
        wzp = const(f"{y}_wzp", np.array(int(zp), np.uint8))
        acc = f"{y}_i32"
        if node.op_type == "Conv":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            new_nodes.append(
                helper.make_node("ConvInteger", [xq, wq, xzp, wzp], [acc], name=node.name, **attrs)
            )
        else:
            new_nodes.append(
                helper.make_node("MatMulInteger", [xq, wq, xzp, wzp], [acc], name=node.name)
            )
        new_nodes.append(helper.make_node("Cast", [acc], [y], to=TensorProto.FLOAT))
        done += 1
    if done != len(kinds):
        raise ValueError(
            f"ORT int8 baseline: rewrote {done} of the graph's {len(kinds)} binary / fixed-point layers"
        )
    del g.node[:]
    g.node.extend(new_nodes)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model

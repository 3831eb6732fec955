"""Baseline networks of the same architecture as an engine graph.

Two builders walk a :class:`bitflow.ir.Graph` op by op (NHWC engine ops -> NCHW networks):

- :func:`torch_twin` is the full-precision twin for a ``.bfn`` file that has no zoo model
  behind it: every binary convolution / dense layer becomes a float ``Conv2d`` / ``Linear``
  of the same shape, every threshold a ``BatchNorm`` (the twin's BN -> conv -> ReLU block),
  pools stay pools. For zoo models :mod:`bitflow.bench` uses the zoo's own twin instead.
- :func:`openvino_bnn` builds the network with OpenVINO's own binary operations:
  ``FakeQuantize(levels=2)`` for every threshold (OpenVINO binarizes with it) and
  ``BinaryConvolution`` (``xnor-popcount``) for every binary convolution; a binary dense
  layer is a 1x1 ``BinaryConvolution`` on a 1x1 image with K input channels. Its CPU plugin
  reads ``u1`` weights LSB first (bit 1 = +1), which is how they are packed here; the float
  first layer is a ``Convolution`` and the float last layer a ``MatMul``.

Both are timing baselines with the graph's shapes; they do not compute the graph's function.
The torch twin has random float weights. The OpenVINO network takes the graph's weights and
thresholds but not its exact decisions: ``FakeQuantize`` gives +1 for ``x > T`` (the engine:
``x >= T``, or ``x <= T`` for a negative direction), the flatten is NCHW where the graph's binary
dense weights are in NHWC order, and a fixed-point first layer sees float pixels. The speed
ratios therefore compare networks of the same shapes and operation counts, not the same
function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Graph
from ..ir.bits import pack_bits, unpack_bits

_OV_UNSUPPORTED = ("bconv2d_planes", "bdense_planes", "threshold_planes")


def torch_twin(graph: Graph) -> Any:
    """A float32 ``torch.nn.Sequential`` (NCHW) with the graph's layer shapes (eval mode)."""
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
    nodes: dict[str, Any] = {spec.name: x}
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
            k = a["k_bits"]
            w = _unpack_pm1(p["w"], p["w"].shape[1] * 64)[:, :k].reshape(-1, k, 1, 1)
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
            node = ops.max_pool(
                node, list(a["stride"]), [1, 1], pad, pad, list(a["kernel"]), name=op.name
            ).output(0)
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
            thr = p["thr"].astype(np.float32) if "thr" in p else np.zeros(ch, np.float32)
            lo = chan_const(thr)
            # Output levels 0 and 1 make it the CPU plugin's "binarization" (a JIT kernel that
            # writes u1 bits straight to the next BinaryConvolution; bit 1 = +1, as its
            # xnor-popcount reads them). That form compiles only where the bits go straight to
            # binary convolutions and the threshold does not follow a max-pool of a binary
            # convolution (the AlexNet / VGG chains: "unsupported reorder case" from blocked
            # f32 to u1); there the levels are -1 and +1: a FakeQuantize to f32 and a reorder.
            src = producer.get(op.inputs[0])
            after_pool = (
                src is not None
                and src.type.startswith("maxpool")
                and src.inputs[0] in producer
                and producer[src.inputs[0]].type in ("bconv2d", "bdense")
            )
            to_binary = all(r.type in ("bconv2d", "bdense") for r in readers.get(op.outputs[0], []))
            low = 0.0 if to_binary and not after_pool else -1.0
            node = ops.fake_quantize(
                node,
                lo,
                lo,
                ops.constant(np.float32(low)),
                ops.constant(np.float32(1)),
                2,
                name=op.name,
            )
        elif t == "flatten":
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
        else:
            raise ValueError(f"op {op.name!r}: no OpenVINO equivalent for op type {t!r}")
        nodes[op.outputs[0]] = node
        vec[op.outputs[0]] = is_vec
    return ov.Model([nodes[graph.output]], [x], "bitflow_bnn")

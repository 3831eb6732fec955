"""Trained PyTorch model -> engine :class:`~bitflow.ir.graph.Graph` (BitFlow-Net Sec. III).

``mode="bitflow"`` emits the integer-only inference path (Fig. 1b): every binary layer's int32
output goes through one exact threshold per channel (BatchShift, :mod:`.batchshift`) straight to
packed bits, pools run on bits (AND / OR) where the thresholds allow it, and float arithmetic
remains only in the first and the last layer. ``mode="xnor"`` emits XNOR-Net's path (Fig. 1a):
int32 -> float ``alpha`` multiply -> ReLU -> pool -> float BatchNorm -> sign/bitpack.

Flatten order: PyTorch flattens NCHW (feature ``c*H*W + h*W + w``) while the engine keeps NHWC
(feature ``(h*W + w)*C + c``); the converter permutes per-feature BatchNorm parameters and the
columns of the next dense layer's weights accordingly. When the bits are flattened after a
per-channel threshold, each pixel keeps its word padding (``groups = H*W``) and the dense
weights are packed the same way; padding bits are 0 in both operands, so the dot stays exact.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from torch import nn

from .. import __version__
from ..ir.graph import Graph, InputSpec
from ..nn import BinaryConv2d, BinaryLinear
from ._core import Pending, _f32
from ._materialize import _as_float, _float_pending, _materialize
from ._mcn import lower_mcn, mcn_conv
from ._rows import share_repeated_rows
from ._rules_chain import _ChainRules
from ._rules_mbbn import _MBBNRules
from ._rules_stream import _fixed_point_bn, _float_merge, _stream_add, _stream_clamp
from ._rules_survey import (
    _real_input,
    _rprelu,
    _rsign_shift,
    _SurveyRules,
    _unsigned_act,
    _xnorpp_scale,
)
from ._trace import Step, UnsupportedLayerError, trace_steps, unsupported

CONVERTER_VERSION = "1"


class _Converter(_ChainRules, _SurveyRules, _MBBNRules):
    """All lowering rules over one model (the rule families are mixins over :class:`_Materialize`)."""


def _json_safe(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except (TypeError, ValueError):
        if isinstance(x, dict):
            return {str(k): _json_safe(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [_json_safe(v) for v in x]
        return repr(x)


def _input_shape(model: nn.Module, example_input: Any) -> tuple[int, int, int]:
    if example_input is not None:
        shape = tuple(example_input.shape)
        if len(shape) == 4:
            shape = shape[1:]
        if len(shape) != 3:
            raise ValueError(
                f"example_input must have shape [N, C, H, W] or [C, H, W], got {list(example_input.shape)}"
            )
        return int(shape[0]), int(shape[1]), int(shape[2])
    c = getattr(model, "in_channels", None)
    s = getattr(model, "image_size", None)
    if c is None or s is None:
        raise ValueError(
            "cannot tell the input shape: pass example_input=[N, C, H, W] (the model has no "
            "in_channels / image_size attributes)"
        )
    h, w = (s, s) if isinstance(s, int) else tuple(s)
    return int(c), int(h), int(w)


def convert(
    model: nn.Module,
    *,
    mode: str | None = None,
    example_input: Any = None,
    class_names: list[str] | None = None,
    strict: bool = False,
) -> Graph:
    """Convert a trained BNN into an engine graph.

    ``mode``: ``"bitflow"`` (integer-only middle layers, BatchShift) or ``"xnor"`` (float alpha
    and BatchNorm, for comparison); by default ``model.inference`` decides ("xnor" models get
    the xnor path, everything else bitflow). ``example_input`` gives the input shape when the
    model lacks ``in_channels`` / ``image_size``. Raises :class:`UnsupportedLayerError` for
    layers or operations that cannot be expressed, and with ``strict`` also when a binarized
    layer (``BinaryConv2d`` / ``BinaryLinear`` and their MBBN / MCN forms) became float32
    arithmetic (BinaryConnect / BWN's ``conv2d_f32b1``, or its scale as ``affine_f32``) instead
    of an xnor- / AND-popcount or integer op.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() needs a torch.nn.Module, got {type(model).__name__}")
    if mode is None:
        mode = "xnor" if getattr(model, "inference", "bitflow") == "xnor" else "bitflow"
    if mode not in ("bitflow", "xnor"):
        raise ValueError(f"mode must be 'bitflow' or 'xnor', got {mode!r}")
    was_training = model.training
    model.eval()
    try:
        lowered = lower_mcn(
            model
        )  # MCN layers -> equivalent binary / float convs (else the model itself)
        steps = trace_steps(lowered)
        graph = _convert_steps(
            lowered, steps, mode, _input_shape(model, example_input), class_names
        )
        if strict:
            _check_strict(graph, lowered)
    finally:
        model.train(was_training)
    return graph


def _check_strict(graph: Graph, model: nn.Module) -> None:
    """``strict``: no op that computes a float32 value may come from a binarized layer."""
    from ..ir.ops import ops_in_group

    binarized = {
        name: type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, (BinaryConv2d, BinaryLinear))
    }
    floats = ops_in_group("float")
    # ABC-Net's branch sums (attribute abc_sum) combine the int32 results of its xnor-popcount
    # convolutions: M x N products per output, no float convolution
    bad = [
        op
        for op in graph.ops
        if op.attrs.get("source") in binarized
        and "abc_sum" not in op.attrs
        and op.type in floats
        and graph.values[op.outputs[0]].dtype == "float32"
    ]
    if bad:
        layers = ", ".join(
            f"{op.attrs['source']!r} ({binarized[op.attrs['source']]}) -> {op.type}" for op in bad
        )
        raise UnsupportedLayerError(
            f"strict: {len(bad)} op(s) of binarized layers compute in float32: {layers}; these "
            "layers keep real-valued activations (BinaryConnect / BWN) and run as +-1-weight float "
            "convolutions, not xnor-popcount (convert without --strict to accept that)"
        )


def _convert_steps(
    model: nn.Module,
    steps: list[Step],
    mode: str,
    shape: tuple[int, int, int],
    class_names: list[str] | None,
) -> Graph:
    if (
        not steps
        or steps[0].kind not in ("conv_first", "int8_first")
        or steps[0].inputs != ["input"]
    ):
        first = steps[0] if steps else None
        where = first.name if first else type(model).__name__
        what = (
            type(first.module).__name__
            if first and first.module is not None
            else (first.kind if first else "empty")
        )
        raise unsupported(
            where, what, "the first layer must be nn.Conv2d (float) or bitflow.nn.Int8Conv2d"
        )
    uses: dict[str, int] = {}
    for st in steps:
        for v in st.inputs:
            uses[v] = uses.get(v, 0) + 1
    if uses.get("input", 0) != 1:
        raise unsupported(
            steps[0].name, "input", "the network input must feed only the first layer"
        )
    c, h, w = shape
    spec = InputSpec(c, h, w, "uint8" if steps[0].kind == "int8_first" else "unit")
    cv = _Converter(model, mode, shape)
    cv.b.values[spec.name] = spec.value
    state: dict[str, Pending] = {steps[0].node: cv.first_layer(steps[0], spec.name)}
    shared: dict[str, Pending] = {}  # materialized values of several consumers
    out: str | None = None
    out_node: str | None = None

    def take(node: str, where: str) -> Pending:
        """The value of ``node`` for one consumer: itself (to extend lazily) when it has one
        consumer, else a fresh float Pending over its materialized float32 value."""
        if node not in state:
            raise unsupported(
                where,
                "operation",
                f"reads {node!r}, which is not a feature map the converter tracks",
            )
        if uses.get(node, 0) <= 1:
            return state[node]
        if state[node].stream is not None:  # an int32 stream value: every reader reads it as it is
            return replace(state[node], pools=[])
        if node not in shared:
            shared[node] = _materialize(cv, state[node], where)
        m = shared[node]
        return Pending(m.value, m.producer, False, m.channels, m.chw)

    for st in steps[1:]:
        what = type(st.module).__name__ if st.module is not None else st.kind
        if st.kind == "output":
            if out is None or st.inputs != [out_node]:
                raise UnsupportedLayerError(
                    "the model must end with a classifier: nn.Linear, or BinaryLinear (optionally followed by Scale)"
                )
            break
        if out is not None and st.kind != "output":
            raise unsupported(st.name, what, "nothing may follow the last layer")
        if st.kind == "add" and any(
            state.get(v) is not None and state[v].stream is not None for v in st.inputs
        ):
            state[st.node] = _stream_add(cv, [take(v, st.name) for v in st.inputs], st.name)
            continue
        if st.kind in ("add", "concat"):
            ins = [
                _materialize(cv, take(v, st.name), st.name)
                if uses.get(v, 0) <= 1
                else take(v, st.name)
                for v in st.inputs
            ]
            state[st.node] = _float_merge(cv, st.kind, ins, st.name)
            continue
        p = take(st.inputs[0], st.name)
        if st.kind in ("avgpool", "gap"):
            if p.chw is None or p.flatten is not None:
                raise unsupported(st.name, what, "average pooling needs a spatial (conv) input")
            q = _as_float(cv, p, st.name)
            if st.kind == "avgpool":
                x = cv.b.add(
                    "avgpool_f32", q.value, name=st.name, attrs={**st.attrs, "source": st.name}
                )
            else:
                x = cv.b.add("global_avgpool_f32", q.value, name=st.name, attrs={"source": st.name})
            state[st.node] = _float_pending(cv, x, st.name, cv._chw(x))
            continue
        if st.kind == "fxbn":
            p = _fixed_point_bn(cv, p, st)
        elif st.kind == "rprelu":
            p = _rprelu(cv, p, st)
        elif st.kind == "sclamp":
            p = _stream_clamp(cv, p, st, uses)
        elif st.kind == "maxpool" and p.stream is not None:
            if p.chw is None:
                raise unsupported(st.name, what, "max-pooling needs a spatial input")
            x = cv.b.add(
                "maxpool_i32", p.value, name=st.name, attrs={**st.attrs, "source": st.name}
            )
            p = replace(p, value=x, chw=cv._chw(x))
        elif st.kind == "relu":
            if p.bn is not None:
                q = _materialize(cv, p, st.name)
                x = cv.b.add("relu_f32", q.value, name=st.name)
                p = _float_pending(cv, x, st.name, q.chw)
            else:
                p.relu = True
        elif st.kind == "maxpool" and p.bn is not None and p.flatten is None and p.chw is not None:
            q = _materialize(
                cv, p, st.name
            )  # BN -> max-pool (e.g. a ResNet stem): pool the float values
            x = cv.b.add(
                "maxpool_f32", q.value, name=st.name, attrs={**st.attrs, "source": st.name}
            )
            p = _float_pending(cv, x, st.name, cv._chw(x))
        elif st.kind == "maxpool":
            if p.bn is not None or p.flatten is not None or p.chw is None:
                raise unsupported(
                    st.name,
                    "max-pool",
                    "max-pooling must come before BatchNorm/flatten on a conv output",
                )
            p.pools.append((st.name, st.attrs))
        elif st.kind == "flatten":
            if p.chw is None or p.flatten is not None:
                raise unsupported(
                    st.name, "flatten", "flatten must follow a convolution output once"
                )
            p.flatten = "after_bn" if p.bn is not None else "before_bn"
            p.flatten_name = st.name
        elif st.kind == "bn":
            if p.bn is not None:
                p = _materialize(
                    cv, p, st.name
                )  # BN -> BN (e.g. a shortcut's BN feeding a block's BN)
            assert st.module is not None
            nf = st.module.num_features  # type: ignore[union-attr]
            if isinstance(st.module, nn.BatchNorm2d):
                if p.chw is None or p.flatten is not None:
                    raise unsupported(st.name, what, "BatchNorm2d needs a spatial (conv) input")
                want = p.channels
            elif p.chw is not None:
                if p.flatten is None:
                    raise unsupported(
                        st.name, what, "BatchNorm1d on a conv output needs a flatten first"
                    )
                ch, hh, ww = p.chw[0], *cv._spatial_after_pools(p)
                want = ch * hh * ww
            else:
                want = p.channels
            if nf != want:
                raise ValueError(f"BatchNorm {st.name!r} has {nf} features, its input has {want}")
            p.bn, p.bn_name = st.module, st.name
        elif st.kind in ("bconv", "xnorpp"):
            if p.flatten is not None or p.chw is None:
                raise unsupported(st.name, what, "a binary convolution needs a spatial input")
            p = _binary_layer(cv, st, p)
            if st.kind == "xnorpp":
                p.pos_scale = _xnorpp_scale(st.module)
        elif st.kind == "abc":  # ABC-Net: N thresholds -> M x N bconvs -> weighted sum
            p = cv.abc_conv(st, p)
        elif st.kind == "mcnconv":  # an MCConv2d lower_mcn kept (W1/A8, full M): convert._mcn
            p = mcn_conv(cv, p, st)
        elif st.kind == "blinear":
            if p.chw is not None and p.flatten is None:
                raise unsupported(st.name, what, "flatten the conv output before a linear layer")
            p = _binary_layer(cv, st, p)
        elif st.kind in ("mbconv", "mblinear"):
            if mode != "bitflow":
                raise unsupported(st.name, what, "MBBN layers convert in mode='bitflow' only")
            cv.check_accumulator(st)
            if st.kind == "mbconv":
                if p.flatten is not None or p.chw is None:
                    raise unsupported(
                        st.name, what, "a multi-bit convolution needs a spatial input"
                    )
                val, _, enc = cv.to_levels(p, st)
                p = cv.mbit_conv(st, val, enc)
            else:
                if p.chw is not None and p.flatten is None:
                    raise unsupported(
                        st.name, what, "flatten the conv output before a linear layer"
                    )
                val, chw, enc = cv.to_levels(p, st)
                p = cv.mbit_linear(st, val, chw, enc)
        elif st.kind == "linear":
            if p.chw is not None and p.flatten is None:
                if p.chw[1:] != (1, 1):
                    raise unsupported(
                        st.name, what, "flatten the conv output before a linear layer"
                    )
                p.flatten, p.flatten_name = (
                    ("after_bn" if p.bn is not None else "before_bn"),
                    f"{st.name}.flatten",
                )
            x = cv.float_linear(p, st)
            if _reads_output(steps, st.node):  # the classifier
                out, out_node = x, st.node
                continue
            # a hidden float layer (a full-precision twin's FC): its float32 output feeds on
            p = _float_pending(cv, x, st.name, None)
        elif st.kind == "scale":
            direct = p.is_int or p.value in cv.real_outputs
            if not (direct and p.chw is None and not p.relu and p.bn is None and not p.pools):
                raise unsupported(
                    st.name, "Scale", "Scale must directly follow the binary last layer"
                )
            assert st.module is not None
            out = cv.scale_output(p, float(_f32(st.module.scale)), st.name)  # type: ignore[arg-type]
            out_node = st.node
            continue
        elif st.kind == "conv_first":
            assert isinstance(st.module, nn.Conv2d)
            if p.flatten is not None or p.chw is None:
                raise unsupported(st.name, what, "a float convolution needs a spatial input")
            p = cv.first_layer(st, _as_float(cv, p, st.name).value)
        elif st.kind == "int8_first":
            raise unsupported(
                st.name,
                what,
                "a fixed-point (Int8Conv2d) convolution is only supported as the first layer",
            )
        else:
            raise unsupported(st.name, what)
        state[st.node] = p
        # a binary last layer with nothing after it (BinaryLinear as classifier)
        if (
            st.kind in ("blinear", "mblinear")
            and uses.get(st.node, 0) == 1
            and _reads_output(steps, st.node)
        ):
            out = cv.scale_output(p, None, f"{p.producer}.out")
            out_node = st.node
    if out is None:
        raise UnsupportedLayerError(
            "the model must end with a classifier: nn.Linear, or BinaryLinear (optionally followed by Scale)"
        )
    n_out = cv.b.values[out].shape[0]
    if class_names is None:
        class_names = [str(x) for x in getattr(model, "class_names", [])] or [
            str(i) for i in range(n_out)
        ]
    if mode == "bitflow" and _float_between_binary(cv):
        mode = "mixed"  # a float32 residual stream runs between binary layers (as published)
    cfg = getattr(model, "bitflow_config", None) or {}
    prov = {
        "model": cfg.get("name", type(model).__name__),
        "kwargs": _json_safe(cfg.get("kwargs", {})),
        "converter": f"bitflow.convert {CONVERTER_VERSION}",
        "bitflow_version": __version__,
        "mode": mode,
        "ties": int(sum(cv.ties.values())),
        "float_ties": int(sum(cv.float_ties.values())),
    }
    g = Graph(
        input=spec,
        ops=cv.b.ops,
        tensors=cv.b.tensors,
        output=out,
        mode=mode,
        class_names=list(class_names),
        provenance=prov,
    )
    g.validate()
    return share_repeated_rows(g)  # MCN-1: K equal rows per map -> one (exact; _rows)


def _binary_layer(cv: _Converter, st: Step, p: Pending) -> Pending:
    """A ``BinaryConv2d`` / ``BinaryLinear`` by its input quantizer: none (real-valued
    activations: BinaryConnect, BWN), k-bit unsigned levels (DoReFa, PACT), else sign bits
    (with a ReActNet RSign shift)."""
    conv = st.kind != "blinear"
    if _real_input(st.module):
        return cv.real_binary_conv(st, p) if conv else cv.real_binary_linear(st, p)
    act = _unsigned_act(st.module)
    if act is not None:
        val, chw = cv.to_u8_levels(p, st, act)
        return cv.u8_layer(st, val, None if conv else chw, act)
    bits, chw = cv.to_bits(p, st.name, _rsign_shift(st.module))
    return cv.binary_conv(st, bits) if conv else cv.binary_linear(st, bits, chw)


def _reads_output(steps: list[Step], node: str) -> bool:
    return any(st.kind == "output" and st.inputs == [node] for st in steps)


def _float_between_binary(cv: _Converter) -> bool:
    from ..ir.graph import BINARY_OPS

    if any(op.type in ("conv2d_f32b1", "dense_f32b1") for op in cv.b.ops):
        return True  # binarized layers with real-valued activations (BinaryConnect, BWN)
    if any("torch_err_bound" in op.attrs for op in cv.b.ops):
        return True  # ABC-Net's float32 branch sums: verify needs their float error bounds
    # conv2d_u8b1 of an MCN W1/A8 layer (no input_levels) counts as a binary layer: float values
    # between such layers (full-M tap sums, float residual streams) make the graph "mixed"
    idx = [
        i
        for i, op in enumerate(cv.b.ops)
        if op.type in BINARY_OPS or (op.type == "conv2d_u8b1" and "input_levels" not in op.attrs)
    ]
    return bool(idx) and any(
        cv.b.values[op.outputs[0]].dtype == "float32" for op in cv.b.ops[idx[0] : idx[-1] + 1]
    )


__all__ = ["CONVERTER_VERSION", "UnsupportedLayerError", "convert"]

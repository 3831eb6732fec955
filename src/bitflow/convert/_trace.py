"""Turn a PyTorch model into a DAG of inference steps with ``torch.fx``.

Binary layers, the int8 first layer and ``Scale`` are leaf modules; functional ReLU / flatten /
max-pool / average-pool / dropout calls, ``x.view(x.size(0), -1)``, residual adds and
``torch.cat`` are recognised; the result is a DAG of steps (values with several consumers are
fine). Anything else raises :class:`UnsupportedLayerError` naming the layer and the reason.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn import BinaryConv2d, BinaryLinear, FixedPointBN, Int8Conv2d, Scale, StreamClamp
from ..nn.mbbn import MBitConv2d, MBitLinear
from ..nn.mcn import MCConv2d
from ..nn.survey import AbcConv2d, RPReLU, XnorPPConv2d

SUPPORTED = (
    "nn.Conv2d / bitflow.nn.Int8Conv2d (first layer), bitflow.nn.BinaryConv2d, bitflow.nn.BinaryLinear, "
    "bitflow.nn.MBitConv2d, bitflow.nn.MBitLinear (MBBN), "
    "nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear (last layer), "
    "bitflow.nn.Scale, nn.Dropout, nn.Identity, F.relu, torch.flatten, x.view(x.size(0), -1), "
    "nn.Conv2d (float shortcuts), nn.AvgPool2d, nn.AdaptiveAvgPool2d(1), residual adds (a + b), torch.cat(dim=1), "
    "bitflow.nn.FixedPointBN and bitflow.nn.StreamClamp (fixed-point residual stream), "
    "bitflow.nn.survey.RPReLU (float values)"
)


class UnsupportedLayerError(ValueError):
    """The model contains a layer or an operation the converter cannot express."""


def unsupported(where: str, what: str, why: str = "") -> UnsupportedLayerError:
    msg = f"layer {where!r} ({what}) is not supported"
    if why:
        msg += f": {why}"
    return UnsupportedLayerError(f"{msg}; supported: {SUPPORTED}")


@dataclass
class Step:
    """One inference step: ``kind`` in conv_first (any float nn.Conv2d), int8_first, relu,
    maxpool, avgpool, gap (global average pool), add, concat, bn, bconv, blinear, mbconv,
    mblinear (MBBN), mcnconv (an MCConv2d, bitflow.convert._mcn), abc (an AbcConv2d), flatten, linear, scale, fxbn / sclamp (fixed-point stream), rprelu, output; ``name`` the module name (or the fx node
    name)."""

    kind: str
    name: str
    module: nn.Module | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)  # the steps (or "input") it reads
    node: str = ""  # this step's own value name (unique)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(
            m,
            (
                BinaryConv2d,
                BinaryLinear,
                Int8Conv2d,
                Scale,
                FixedPointBN,
                StreamClamp,
                MCConv2d,
                RPReLU,
            ),
        ):
            return True
        return super().is_leaf_module(m, qualname)


def _pool_attrs(
    where: str,
    kernel: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: bool,
    return_indices: bool = False,
    what: str = "max-pool",
) -> dict[str, Any]:
    def pair(v: Any) -> tuple[int, int]:
        if isinstance(v, int):
            return (v, v)
        t = tuple(int(a) for a in v)
        return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])

    if ceil_mode:
        raise unsupported(where, what, "ceil_mode=True")
    if return_indices:
        raise unsupported(where, what, "return_indices=True")
    if pair(dilation) != (1, 1):
        raise unsupported(where, what, "dilation != 1")
    k = pair(kernel)
    s = pair(stride if stride not in (None, ()) else kernel)
    return {"kernel": list(k), "stride": list(s), "padding": list(pair(padding))}


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}
_DROPOUT_FUNCS = {F.dropout, torch.dropout}
_FLATTEN_FUNCS = {torch.flatten}


def _flatten_dims(where: str, start: int, end: int) -> None:
    if start != 1 or end not in (-1, 3):
        raise unsupported(
            where,
            "flatten",
            f"only flatten(start_dim=1, end_dim=-1) is supported, got ({start}, {end})",
        )


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.args if isinstance(a, fx.Node)]


def trace_steps(model: nn.Module) -> list[Step]:
    """Trace ``model`` (eval mode) and return its steps in topological order.

    The result is a DAG: each step's ``inputs`` name the steps (or ``"input"``) whose results
    it reads; identity operations (dropout, ``nn.Identity``, ``.contiguous()``) are aliases and
    produce no step. Residual adds (``+``, ``torch.add``, ``add_``), ``torch.cat(dim=1)``,
    average pooling and adaptive average pooling to 1x1 are steps of their own.
    """
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise UnsupportedLayerError(
            f"model {type(model).__name__} could not be traced with torch.fx ({type(e).__name__}: {e}); "
            "write forward() with supported layers, adds and concatenations (no data-dependent control flow)"
        ) from None
    steps: list[Step] = []
    alias: dict[fx.Node, str] = {}  # fx node -> the step name (or "input") holding its value
    sizes: set[fx.Node] = set()
    placeholder: fx.Node | None = None

    def src(node: fx.Node, arg: Any) -> str:
        if not isinstance(arg, fx.Node) or arg not in alias:
            raise unsupported(
                node.name,
                f"operation {node.target}",
                "its input is not a tensor the converter tracks",
            )
        return alias[arg]

    def emit(node: fx.Node, st: list[Step], inputs: list[str]) -> None:
        if not st:  # identity
            alias[node] = inputs[0]
            return
        for i, one_step in enumerate(st):
            one_step.inputs = list(inputs) if i == 0 else [st[i - 1].node]
            one_step.node = f"{node.name}" if i == len(st) - 1 else f"{node.name}.{i}"
            steps.append(one_step)
        alias[node] = st[-1].node

    for node in graph.nodes:
        if node.op == "placeholder":
            if placeholder is not None:
                raise UnsupportedLayerError("the model must take exactly one input tensor")
            placeholder = node
            alias[node] = "input"
            continue
        if node.op == "output":
            out = src(node, node.args[0])
            steps.append(Step("output", "output", inputs=[out], node="output"))
            break
        if node.op == "get_attr":
            raise unsupported(node.name, "parameter access in forward()")
        if node.op == "call_module":
            mod = model.get_submodule(str(node.target))
            name = str(node.target)
            if len(node.args) != 1 or node.kwargs:
                raise unsupported(name, type(mod).__name__, "called with extra arguments")
            emit(node, _module_step(name, mod), [src(node, node.args[0])])
            continue
        if node.op == "call_function":
            fn = node.target
            fname = getattr(fn, "__name__", str(fn))
            if fn in _RELU_FUNCS:
                emit(node, [Step("relu", node.name)], [src(node, node.args[0])])
            elif fn in _DROPOUT_FUNCS:
                emit(node, [], [src(node, node.args[0])])
            elif fn in _FLATTEN_FUNCS:
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
                _flatten_dims(node.name, int(start), int(end))
                emit(node, [Step("flatten", node.name)], [src(node, node.args[0])])
            elif fn is F.max_pool2d or fname in ("max_pool2d", "_max_pool2d", "boolean_dispatch"):
                k, st, pad, dil, ceil, idx = _call_args(node, _MAX_POOL_ARGS)
                attrs = _pool_attrs(node.name, k, st, pad, dil, bool(ceil), bool(idx))
                emit(node, [Step("maxpool", node.name, attrs=attrs)], [src(node, node.args[0])])
            elif fn is F.avg_pool2d:
                k, st, pad, ceil, incl, div = _call_args(node, _AVG_POOL_ARGS)
                attrs = _avgpool_attrs(node.name, k, st, pad, bool(ceil), bool(incl), div)
                emit(node, [Step("avgpool", node.name, attrs=attrs)], [src(node, node.args[0])])
            elif fn is F.adaptive_avg_pool2d:
                size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
                _gap_check(node.name, size)
                emit(node, [Step("gap", node.name)], [src(node, node.args[0])])
            elif fn in (operator.add, operator.iadd, torch.add):
                if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
                    raise unsupported(node.name, "add", "only a + b (alpha = 1) is supported")
                if not all(isinstance(a, fx.Node) for a in node.args):
                    raise unsupported(
                        node.name, "add", "adding a constant is not supported; add two tensors"
                    )
                emit(node, [Step("add", node.name)], [src(node, a) for a in node.args])
            elif fn is torch.cat:
                tensors = node.args[0] if node.args else node.kwargs.get("tensors")
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                if dim not in (1, -3) or not isinstance(tensors, (list, tuple)) or len(tensors) < 2:
                    raise unsupported(
                        node.name,
                        "torch.cat",
                        "only concatenating 2+ feature maps along dim=1 is supported",
                    )
                emit(node, [Step("concat", node.name)], [src(node, a) for a in tensors])
            elif fn is operator.getitem:
                raise unsupported(node.name, "indexing")
            else:
                raise unsupported(node.name, f"function {fname}")
            continue
        if node.op == "call_method":
            m = str(node.target)
            if m == "size":
                sizes.add(node)
                continue
            if m in ("relu", "relu_"):
                emit(node, [Step("relu", node.name)], [src(node, node.args[0])])
            elif m == "contiguous":
                emit(node, [], [src(node, node.args[0])])
            elif m in ("add", "add_"):
                if len(node.args) != 2 or node.kwargs or not isinstance(node.args[1], fx.Node):
                    raise unsupported(
                        node.name,
                        f"x.{m}()",
                        "only x.add(y) / x.add_(y) with a tensor y is supported",
                    )
                emit(
                    node,
                    [Step("add", node.name)],
                    [src(node, node.args[0]), src(node, node.args[1])],
                )
            elif m == "flatten":
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
                _flatten_dims(node.name, int(start), int(end))
                emit(node, [Step("flatten", node.name)], [src(node, node.args[0])])
            elif m in ("view", "reshape"):
                shape = list(node.args[1:])
                if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                    shape = list(shape[0])
                x = node.args[0]
                ok = (
                    len(shape) == 2
                    and shape[1] == -1
                    and isinstance(shape[0], fx.Node)
                    and shape[0] in sizes
                    and isinstance(x, fx.Node)
                    and isinstance(shape[0].args[0], fx.Node)
                    and alias.get(shape[0].args[0]) == alias.get(x)
                    and tuple(shape[0].args[1:]) == (0,)
                )
                if not ok:
                    raise unsupported(
                        node.name, f"x.{m}{tuple(shape)}", "only x.view(x.size(0), -1) is supported"
                    )
                emit(node, [Step("flatten", node.name)], [src(node, x)])
            else:
                raise unsupported(node.name, f"method .{m}()")
            continue
        raise unsupported(node.name, f"fx op {node.op}")
    return steps


# the arguments after the input of F.max_pool2d / F.avg_pool2d, in order, with their defaults
_MAX_POOL_ARGS = (
    ("kernel_size", None),
    ("stride", None),
    ("padding", 0),
    ("dilation", 1),
    ("ceil_mode", False),
    ("return_indices", False),
)
_AVG_POOL_ARGS = (
    ("kernel_size", None),
    ("stride", None),
    ("padding", 0),
    ("ceil_mode", False),
    ("count_include_pad", True),
    ("divisor_override", None),
)


def _call_args(node: fx.Node, spec: tuple[tuple[str, Any], ...]) -> list[Any]:
    """The arguments after the input of a traced functional call, given by position or by
    keyword, a default where absent (or None)."""
    out = []
    for i, (name, default) in enumerate(spec):
        v = node.kwargs.get(name, node.args[1 + i] if len(node.args) > 1 + i else None)
        out.append(default if v is None else v)
    return out


def _avgpool_attrs(
    where: str,
    kernel: Any,
    stride: Any,
    padding: Any,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Any,
) -> dict[str, Any]:
    a = _pool_attrs(where, kernel, stride, padding, 1, ceil_mode, what="avg-pool")
    if divisor_override is not None:
        raise unsupported(where, "avg-pool", "divisor_override")
    if not count_include_pad and any(a["padding"]):
        raise unsupported(where, "avg-pool", "count_include_pad=False with padding")
    return a


def _gap_check(where: str, size: Any) -> None:
    if size not in (1, (1, 1), [1, 1]):
        raise unsupported(
            where, "adaptive avg-pool", f"only output size 1 (global average pooling), got {size!r}"
        )


def _module_step(name: str, m: nn.Module) -> list[Step]:
    # exact types: a subclass may compute something else (the MBBN layers are handled here)
    if type(m) is MBitConv2d:
        return [Step("mbconv", name, m)]
    if type(m) is MBitLinear:
        return [Step("mblinear", name, m)]
    if type(m) is BinaryConv2d:
        return [Step("bconv", name, m)]
    if type(m) is BinaryLinear:
        return [Step("blinear", name, m)]
    if type(m) is Int8Conv2d:
        return [Step("int8_first", name, m)]
    if type(m) is Scale:
        return [Step("scale", name, m)]
    if type(m) is FixedPointBN:
        return [Step("fxbn", name, m)]
    if type(m) is StreamClamp:
        return [Step("sclamp", name, m)]
    if type(m) is MCConv2d:  # kept by convert._mcn.lower_mcn (W1/A8, full M): mcn_conv
        return [Step("mcnconv", name, m)]
    if type(m) is RPReLU:
        return [Step("rprelu", name, m)]
    if type(m) is XnorPPConv2d:
        return [Step("xnorpp", name, m)]
    if type(m) is AbcConv2d:
        return [Step("abc", name, m)]
    if isinstance(m, (BinaryConv2d, BinaryLinear, Int8Conv2d, Scale)):
        raise unsupported(
            name,
            type(m).__name__,
            "subclasses of the bitflow layers have their own arithmetic; "
            "only the bitflow layers themselves (and MBitConv2d / MBitLinear) convert",
        )
    if type(m) is nn.Conv2d:
        return [Step("conv_first", name, m)]
    if type(m) is nn.Linear:
        return [Step("linear", name, m)]
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return [Step("bn", name, m)]
    if isinstance(m, nn.ReLU):
        return [Step("relu", name, m)]
    if isinstance(m, nn.MaxPool2d):
        return [
            Step(
                "maxpool",
                name,
                m,
                _pool_attrs(
                    name,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.dilation,
                    m.ceil_mode,
                    m.return_indices,
                ),
            )
        ]
    if isinstance(m, nn.AvgPool2d):
        return [
            Step(
                "avgpool",
                name,
                m,
                _avgpool_attrs(
                    name,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.ceil_mode,
                    m.count_include_pad,
                    m.divisor_override,
                ),
            )
        ]
    if isinstance(m, nn.AdaptiveAvgPool2d):
        _gap_check(name, m.output_size)
        return [Step("gap", name, m)]
    if isinstance(m, nn.Flatten):
        _flatten_dims(name, m.start_dim, m.end_dim)
        return [Step("flatten", name, m)]
    if type(m) in (nn.Dropout, nn.Identity):
        return []
    if isinstance(m, nn.Sequential) and len(m) == 0:
        return []
    raise unsupported(
        name,
        f"nn.{type(m).__name__}" if type(m).__module__.startswith("torch.nn") else type(m).__name__,
    )


__all__ = ["SUPPORTED", "Step", "UnsupportedLayerError", "trace_steps", "unsupported"]

"""Turn a PyTorch model into a linear list of inference steps with ``torch.fx``.

Binary layers, the int8 first layer and ``Scale`` are leaf modules; functional ReLU / flatten /
max-pool / dropout calls and ``x.view(x.size(0), -1)`` are recognised. Anything else raises
:class:`UnsupportedLayerError` naming the layer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn import BinaryConv2d, BinaryLinear, Int8Conv2d, Scale
from ..nn.mbbn import MBitConv2d, MBitLinear

SUPPORTED = (
    "nn.Conv2d / bitflow.nn.Int8Conv2d (first layer), bitflow.nn.BinaryConv2d, bitflow.nn.BinaryLinear, "
    "bitflow.nn.MBitConv2d, bitflow.nn.MBitLinear (MBBN), "
    "nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear (last layer), "
    "bitflow.nn.Scale, nn.Dropout, nn.Identity, F.relu, torch.flatten, x.view(x.size(0), -1)"
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
    """One inference step: ``kind`` in conv_first, int8_first, relu, maxpool, bn, bconv, blinear,
    mbconv, mblinear (MBBN), flatten, linear, scale; ``name`` the module name (or the fx node name)."""

    kind: str
    name: str
    module: nn.Module | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (BinaryConv2d, BinaryLinear, Int8Conv2d, Scale)):
            return True
        return super().is_leaf_module(m, qualname)


def _pool_attrs(where: str, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool,
                return_indices: bool = False) -> dict[str, Any]:
    def pair(v: Any) -> tuple[int, int]:
        if isinstance(v, int):
            return (v, v)
        t = tuple(int(a) for a in v)
        return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])

    if ceil_mode:
        raise unsupported(where, "max-pool", "ceil_mode=True")
    if return_indices:
        raise unsupported(where, "max-pool", "return_indices=True")
    if pair(dilation) != (1, 1):
        raise unsupported(where, "max-pool", "dilation != 1")
    k = pair(kernel)
    s = pair(stride if stride not in (None, ()) else kernel)
    return {"kernel": list(k), "stride": list(s), "padding": list(pair(padding))}


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}
_DROPOUT_FUNCS = {F.dropout, torch.dropout}
_FLATTEN_FUNCS = {torch.flatten}


def _flatten_dims(where: str, start: int, end: int) -> None:
    if start != 1 or end not in (-1, 3):
        raise unsupported(where, "flatten", f"only flatten(start_dim=1, end_dim=-1) is supported, got ({start}, {end})")


def trace_steps(model: nn.Module) -> list[Step]:
    """Trace ``model`` (eval mode) and return its steps in order. The graph must be a chain."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise UnsupportedLayerError(
            f"model {type(model).__name__} could not be traced with torch.fx ({type(e).__name__}: {e}); "
            "write forward() as a straight chain of supported layers"
        ) from None
    steps: list[Step] = []
    current: fx.Node | None = None
    sizes: set[fx.Node] = set()

    def chain(node: fx.Node, arg: Any) -> None:
        if arg is not current:
            raise UnsupportedLayerError(
                f"operation {node.name!r} does not consume the previous result; only a straight chain "
                "of layers (no branches or residual connections) can be converted"
            )

    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise UnsupportedLayerError("the model must take exactly one input tensor")
            current = node
            continue
        if node.op == "output":
            chain(node, node.args[0])
            break
        if node.op == "call_module":
            mod = model.get_submodule(str(node.target))
            name = str(node.target)
            chain(node, node.args[0] if node.args else None)
            if len(node.args) != 1 or node.kwargs:
                raise unsupported(name, type(mod).__name__, "called with extra arguments")
            steps.extend(_module_step(name, mod))
            current = node
            continue
        if node.op == "call_function":
            fn = node.target
            if fn in _RELU_FUNCS:
                chain(node, node.args[0])
                steps.append(Step("relu", node.name))
            elif fn in _DROPOUT_FUNCS:
                chain(node, node.args[0])
            elif fn in _FLATTEN_FUNCS:
                chain(node, node.args[0])
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
                _flatten_dims(node.name, int(start), int(end))
                steps.append(Step("flatten", node.name))
            elif fn is F.max_pool2d or getattr(fn, "__name__", "") in ("max_pool2d", "_max_pool2d"):
                chain(node, node.args[0])
                a = list(node.args[1:]) + [None] * 6
                kw = node.kwargs
                steps.append(Step("maxpool", node.name, attrs=_pool_attrs(
                    node.name, kw.get("kernel_size", a[0]), kw.get("stride", a[1]),
                    kw.get("padding", a[2] if a[2] is not None else 0),
                    kw.get("dilation", a[3] if a[3] is not None else 1),
                    bool(kw.get("ceil_mode", a[4] or False)), bool(kw.get("return_indices", a[5] or False)),
                )))
            elif fn is operator.getitem:
                raise unsupported(node.name, "indexing")
            else:
                if sum(isinstance(a, fx.Node) for a in node.args) > 1:
                    raise UnsupportedLayerError(
                        f"operation {node.name!r} ({getattr(fn, '__name__', fn)}) combines several tensors; "
                        "only a straight chain of layers (no branches or residual connections) can be converted"
                    )
                raise unsupported(node.name, f"function {getattr(fn, '__name__', fn)}")
            current = node
            continue
        if node.op == "call_method":
            m = str(node.target)
            if m == "size":
                sizes.add(node)
                continue
            chain(node, node.args[0])
            if m in ("relu", "relu_"):
                steps.append(Step("relu", node.name))
            elif m == "contiguous":
                pass
            elif m == "flatten":
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
                _flatten_dims(node.name, int(start), int(end))
                steps.append(Step("flatten", node.name))
            elif m in ("view", "reshape"):
                shape = list(node.args[1:])
                if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                    shape = list(shape[0])
                ok = (
                    len(shape) == 2 and shape[1] == -1 and isinstance(shape[0], fx.Node)
                    and shape[0] in sizes and shape[0].args[0] is current
                    and tuple(shape[0].args[1:]) == (0,)
                )
                if not ok:
                    raise unsupported(node.name, f"x.{m}{tuple(shape)}", "only x.view(x.size(0), -1) is supported")
                steps.append(Step("flatten", node.name))
            else:
                raise unsupported(node.name, f"method .{m}()")
            current = node
            continue
        raise unsupported(node.name, f"fx op {node.op}")
    return steps


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
    if isinstance(m, (BinaryConv2d, BinaryLinear, Int8Conv2d, Scale)):
        raise unsupported(name, type(m).__name__, "subclasses of the bitflow layers have their own arithmetic; "
                          "only the bitflow layers themselves (and MBitConv2d / MBitLinear) convert")
    if type(m) is nn.Conv2d:
        return [Step("conv_first", name, m)]
    if type(m) is nn.Linear:
        return [Step("linear", name, m)]
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return [Step("bn", name, m)]
    if isinstance(m, nn.ReLU):
        return [Step("relu", name, m)]
    if isinstance(m, nn.MaxPool2d):
        return [Step("maxpool", name, m, _pool_attrs(name, m.kernel_size, m.stride, m.padding, m.dilation,
                                                        m.ceil_mode, m.return_indices))]
    if isinstance(m, nn.Flatten):
        _flatten_dims(name, m.start_dim, m.end_dim)
        return [Step("flatten", name, m)]
    if type(m) in (nn.Dropout, nn.Identity):
        return []
    if isinstance(m, nn.Sequential) and len(m) == 0:
        return []
    raise unsupported(name, f"nn.{type(m).__name__}" if type(m).__module__.startswith("torch.nn") else type(m).__name__)


__all__ = ["SUPPORTED", "Step", "UnsupportedLayerError", "trace_steps", "unsupported"]

"""Shared checks of the shape rules (attributes, parameters, input dtypes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..nodes import INT32_MAX, PARAM_DTYPES, GraphError, Op, ValueInfo, _int, _int_list, conv_out


def pair(attrs: Mapping[str, Any], key: str, op: str, minimum: int) -> tuple[int, int]:
    if key not in attrs:
        raise GraphError(f"op {op!r}: missing attribute {key!r}")
    a, b = _int_list(attrs[key], f"op {op!r} attribute {key}", 2)
    if a < minimum or b < minimum:
        raise GraphError(f"op {op!r}: attribute {key} must be >= {minimum}, got {[a, b]}")
    return a, b


def int_attr(op: Op, key: str) -> int:
    return _int(op.attrs.get(key), f"op {op.name!r} attribute {key}")


def param(
    op: Op,
    tensors: Mapping[str, np.ndarray],
    role: str,
    dtype: str,
    shape: Sequence[int] | None = None,
    ndim: int | None = None,
    optional: bool = False,
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
        raise GraphError(
            f"op {op.name!r}: tensor {name!r} ({role}) has dtype {t.dtype}, expected {dtype}"
        )
    if ndim is not None and t.ndim != ndim:
        raise GraphError(
            f"op {op.name!r}: tensor {name!r} ({role}) has shape {t.shape}, expected {ndim} axes"
        )
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise GraphError(
            f"op {op.name!r}: tensor {name!r} ({role}) has shape {t.shape}, expected {tuple(shape)}"
        )
    return t


def need_param(
    op: Op,
    tensors: Mapping[str, np.ndarray],
    role: str,
    dtype: str,
    shape: Sequence[int] | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    t = param(op, tensors, role, dtype, shape, ndim)
    assert t is not None
    return t


def need(
    op: Op, v: ValueInfo, dtypes: tuple[str, ...], ndim: int | None = None, planes_ok: bool = False
) -> None:
    if v.dtype not in dtypes:
        raise GraphError(
            f"op {op.name!r} ({op.type}) needs a {' or '.join(dtypes)} input, got {v.dtype}"
        )
    if ndim is not None and len(v.shape) != ndim:
        raise GraphError(
            f"op {op.name!r} ({op.type}) needs a {ndim}-axis input (per sample), got shape {v.shape}"
        )
    if v.planes != 1 and not planes_ok:
        raise GraphError(f"op {op.name!r} ({op.type}) does not take multi-plane input")


def acc_check(op: Op, bound: int) -> None:
    if bound > INT32_MAX:
        raise GraphError(f"op {op.name!r} ({op.type}): accumulator bound {bound} exceeds int32")


def window_geom(op: Op, h: int, w: int, kh: int, kw: int, what: str = "kernel") -> tuple[int, int]:
    sh, sw = pair(op.attrs, "stride", op.name, 1)
    ph, pw = pair(op.attrs, "padding", op.name, 0)
    ho, wo = conv_out(h, kh, sh, ph), conv_out(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise GraphError(f"op {op.name!r}: {what} {kh}x{kw} does not fit the {h}x{w} input")
    return ho, wo


def spatial(op: Op, x: ValueInfo) -> tuple[int, int, int]:
    """``(H, W, C-or-words)`` of an unflattened NHWC value."""
    if len(x.shape) != 3:
        raise GraphError(
            f"op {op.name!r} ({op.type}) needs a 3-axis [H, W, C] input, got shape {x.shape}"
        )
    if x.groups != 1:
        raise GraphError(f"op {op.name!r} ({op.type}): input is a flattened value")
    h, w, c = x.shape
    return h, w, c


def t2(v: Any) -> tuple[int, int]:
    a, b = v
    return int(a), int(b)


__all__ = [
    "acc_check",
    "int_attr",
    "need",
    "need_param",
    "pair",
    "param",
    "spatial",
    "t2",
    "window_geom",
]

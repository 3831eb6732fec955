"""Lowering rules of the fixed-point residual stream (``FixedPointBN`` -> ``requant_i32``,
``StreamClamp``, ``add_i32``) and the multi-input ops of a DAG (``add_f32``, ``concat``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..nn import FixedPointBN, StreamClamp
from ..nn.fixedpoint import SHIFT
from ._core import Pending, _ConverterBase
from ._materialize import _float_pending
from ._trace import Step, unsupported


def _fixed_point_bn(cv: _ConverterBase, p: Pending, st: Step) -> Pending:
    """``FixedPointBN`` on an integer accumulator -> ``requant_i32`` (its exact eval form, from
    the module's own ``fixed_point()`` integers): the int32 stream value ``r``."""
    m = st.module
    assert isinstance(m, FixedPointBN)
    if (
        not p.is_int
        or p.chw is None
        or p.flatten is not None
        or p.relu
        or p.pools
        or p.bn is not None
        or p.stream is not None
    ):
        raise unsupported(
            st.name, "FixedPointBN", "it must directly follow a convolution's integer accumulator"
        )
    if p.alpha is None or p.bias is None or np.any(p.alpha != 1) or np.any(p.bias != 0):
        raise unsupported(
            st.name,
            "FixedPointBN",
            "its input must be an unscaled integer accumulator: "
            "BinaryConv2d with weight_quantizer='sign' and no bias, or Int8Conv2d(integer_output=True)",
        )
    if m.num_features != p.channels:
        raise ValueError(
            f"FixedPointBN {st.name!r} has {m.num_features} features, its input has {p.channels}"
        )
    mt, bt = m.fixed_point()
    mi, bi = mt.numpy().astype(np.int64), bt.numpy().astype(np.int64)
    assert p.lo is not None and p.hi is not None
    lo, hi = [int(v) for v in p.lo], [int(v) for v in p.hi]
    umax = max(max(abs(v) for v in lo), max(abs(v) for v in hi))
    if umax * int(np.abs(mi).max(initial=0)) + int(np.abs(bi).max(initial=0)) >= 2**62:
        raise ValueError(
            f"FixedPointBN {st.name!r}: accumulators up to {umax} overflow the int64 requantization"
        )
    ends = [
        ((lo[c] * int(mi[c]) + int(bi[c])) >> SHIFT, (hi[c] * int(mi[c]) + int(bi[c])) >> SHIFT)
        for c in range(p.channels)
    ]
    x = cv.b.add(
        "requant_i32",
        p.value,
        name=st.name,
        attrs={"shift": SHIFT, "source": st.name},
        params={"m": mi, "b": bi},
    )
    return Pending(
        x,
        st.name,
        True,
        p.channels,
        p.chw,
        alpha=np.full(p.channels, 2.0**-m.frac, np.float32),
        bias=np.zeros(p.channels, np.float32),
        lo=np.array([min(e) for e in ends], np.int64),
        hi=np.array([max(e) for e in ends], np.int64),
        stream=m.frac,
    )


def _stream_clamp(cv: _ConverterBase, p: Pending, st: Step, uses: dict[str, int]) -> Pending:
    """``StreamClamp``: the saturation, fused into the op that produced the stream value (a
    ``requant_i32`` or ``add_i32`` read only here), else an identity ``requant_i32`` with a clamp."""
    m = st.module
    assert isinstance(m, StreamClamp)
    if p.stream is None:
        raise unsupported(
            st.name, "StreamClamp", "it must follow a FixedPointBN or an add of fixed-point values"
        )
    if p.stream != m.frac:
        raise ValueError(
            f"StreamClamp {st.name!r}: frac={m.frac}, but its input is on the 2^-{p.stream} grid"
        )
    prod = next(op for op in reversed(cv.b.ops) if op.outputs[0] == p.value) if cv.b.ops else None
    rng = [m.lo, m.hi]
    if (
        prod is not None
        and prod.type in ("requant_i32", "add_i32")
        and "clamp" not in prod.attrs
        and uses.get(st.inputs[0], 0) == 1
        and not any(p.value in op.inputs for op in cv.b.ops)
    ):
        prod.attrs["clamp"] = rng
        x = p.value
    else:
        c = p.channels
        x = cv.b.add(
            "requant_i32",
            p.value,
            name=st.name,
            attrs={"shift": 0, "clamp": rng, "source": st.name},
            params={"m": np.ones(c, np.int64), "b": np.zeros(c, np.int64)},
        )
    assert p.lo is not None and p.hi is not None
    return replace(p, value=x, lo=np.clip(p.lo, m.lo, m.hi), hi=np.clip(p.hi, m.lo, m.hi))


def _stream_add(cv: _ConverterBase, ins: list[Pending], name: str) -> Pending:
    """A residual add on the fixed-point stream: an exact ``add_i32`` of values on one grid."""
    fr = {q.stream for q in ins}
    if None in fr or len(fr) != 1:
        raise unsupported(
            name,
            "add",
            "a fixed-point stream value can only be added to values on the same grid "
            "(the outputs of FixedPointBN / StreamClamp with one frac)",
        )
    _check_same_shapes(ins, name)
    x = cv.b.add("add_i32", [q.value for q in ins], name=name, attrs={"source": name})
    assert all(q.lo is not None and q.hi is not None for q in ins)
    lo = np.sum([np.asarray(q.lo) for q in ins], axis=0)
    hi = np.sum([np.asarray(q.hi) for q in ins], axis=0)
    return replace(ins[0], value=x, producer=name, lo=lo, hi=hi, pools=[])


def _check_same_shapes(ins: list[Pending], name: str) -> None:
    chws = {q.chw for q in ins}
    if len(chws) != 1:
        raise ValueError(f"add {name!r}: its inputs have different shapes {sorted(chws, key=str)}")


def _float_merge(cv: _ConverterBase, kind: str, ins: list[Pending], name: str) -> Pending:
    """A residual add (``add_f32``) or a channel concatenation (``concat``) of float32 values."""
    if kind == "add":
        _check_same_shapes(ins, name)
        x = cv.b.add("add_f32", [q.value for q in ins], name=name, attrs={"source": name})
        return _float_pending(cv, x, name, ins[0].chw)
    if any(q.chw is None for q in ins) or len({q.chw[1:] for q in ins if q.chw}) != 1:
        raise unsupported(
            name, "torch.cat", "only feature maps of one spatial size can be concatenated"
        )
    x = cv.b.add("concat", [q.value for q in ins], name=name, attrs={"source": name})
    first_chw = ins[0].chw
    assert first_chw is not None
    return _float_pending(cv, x, name, (sum(q.channels for q in ins), *first_chw[1:]))

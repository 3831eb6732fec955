"""Shared state and helpers of the converter: :class:`Pending` (a producer's not yet
materialized chain), the op :class:`_Builder`, and :class:`_ConverterBase` (the state every
lowering rule reads: builder, tie counts, the shape bookkeeping of pools and flattens)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..ir.graph import Op, ValueInfo, infer
from ..nn import quantizers as Q
from ..nn.survey import DoReFaAct, PactAct, RSign
from . import batchshift as bs
from ._trace import unsupported


def _conv_bias(m: nn.Conv2d) -> np.ndarray:
    """A conv layer's bias as float32, zeros when it has none."""
    return _f32(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().astype(np.float32).copy()


@dataclass
class Pending:
    """The not-yet-materialized chain after a producer (first conv or binary layer).

    The producer output ``value`` is ``int32`` (accumulators; the model multiplies by ``alpha``
    and adds ``bias``) or ``float32`` (first float conv, bias included). ``chw`` is the PyTorch
    shape ``(C, H, W)`` of a spatial producer (None for a dense one).
    """

    value: str
    producer: str
    is_int: bool
    channels: int
    chw: tuple[int, int, int] | None
    alpha: np.ndarray | None = None
    bias: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    relu: bool = False
    pools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    flatten: str | None = None  # "before_bn" | "after_bn"
    flatten_name: str = "flatten"
    bn: nn.Module | None = None
    bn_name: str | None = None
    # float first layer: per-channel bound on float32 summation error, for near-threshold reports
    err_bound: np.ndarray | None = None
    # fixed-point residual stream (FixedPointBN / StreamClamp): the grid exponent f of the int32
    # value r (the model's value is r 2^-f: alpha = 2^-f, bias 0); None for any other value
    stream: int | None = None
    # XNOR-Net++: the float32 scale Gamma [Ho, Wo, O] of every output (position, channel),
    # applied instead of alpha (the BatchShift threshold then differs per position)
    pos_scale: np.ndarray | None = None


class _Builder:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.ops: list[Op] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.values: dict[str, ValueInfo] = {}
        self._names: dict[str, int] = {"input": 1}

    def _unique(self, base: str) -> str:
        base = base.replace(" ", "_") or "op"
        k = self._names.get(base, 0)
        self._names[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    def add(
        self,
        type_: str,
        x: str | list[str],
        *,
        name: str,
        attrs: dict[str, Any] | None = None,
        params: dict[str, np.ndarray] | None = None,
        shared: dict[str, str] | None = None,
    ) -> str:
        """Append an op reading ``x`` (one value, or a list for ``add_f32`` / ``concat``), its
        tensors ``params`` stored as ``{name}.{role}``; returns its output value. ``shared``:
        roles that reference a tensor an earlier op already stored (by its name), stored once."""
        inputs = [x] if isinstance(x, str) else list(x)
        opname = self._unique(name)
        pnames: dict[str, str] = {}
        for role, arr in (params or {}).items():
            tname = f"{opname}.{role}"
            self.tensors[tname] = np.ascontiguousarray(arr)
            pnames[role] = tname
        for role, tname in (shared or {}).items():
            if tname not in self.tensors:
                raise KeyError(f"op {opname!r}: shared tensor {tname!r} was not stored")
            pnames[role] = tname
        out = opname
        op = Op(type_, opname, inputs, [out], dict(attrs or {}), pnames)
        self.values[out] = infer(op, [self.values[v] for v in inputs], self.tensors)
        self.ops.append(op)
        return out


def _bn_params(name: str, m: nn.Module) -> bs.BNParams:
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)
    if m.running_mean is None or m.running_var is None:
        raise unsupported(
            name,
            type(m).__name__,
            "BatchNorm without running statistics (track_running_stats=False)",
        )
    n = m.num_features
    gamma = _f32(m.weight) if m.weight is not None else np.ones(n, np.float32)
    beta = _f32(m.bias) if m.bias is not None else np.zeros(n, np.float32)
    try:
        return bs.BNParams(
            mean=_f32(m.running_mean),
            var=_f32(m.running_var),
            eps=float(m.eps),
            gamma=gamma,
            beta=beta,
        )
    except ValueError as e:
        raise ValueError(f"BatchNorm {name!r}: {e}") from None


def _conv_attrs(name: str, m: nn.Conv2d, **extra: Any) -> dict[str, Any]:
    """The attributes of a binary convolution op lowered from layer ``name``."""
    return {
        "channels": m.in_channels,
        "stride": list(m.stride),
        "padding": list(m.padding),
        **extra,
        "source": name,
    }


def _nhwc_columns(w: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Dense weights ``[O, C*H*W]`` with columns in PyTorch's NCHW flatten order -> the engine's
    NHWC order ``[O, H*W*C]``."""
    c, h, w_ = chw
    return w.reshape(w.shape[0], c, h, w_).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def _nchw_to_nhwc_perm(c: int, h: int, w: int) -> np.ndarray:
    """``perm[j]`` = NCHW feature index of NHWC feature ``j`` (``j = (y*W + x)*C + ch``)."""
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


class _ConverterBase:
    def __init__(self, model: nn.Module, mode: str, input_shape: tuple[int, int, int]) -> None:
        self.model = model
        self.mode = mode
        self.b = _Builder(mode)
        self.input_shape = input_shape
        self.ties: dict[str, int] = {}
        self.float_ties: dict[str, int] = {}
        self.stream_bits: dict[str, str] = {}  # int32 stream value -> its sign bits (one per value)
        self.real_outputs: set[str] = set()  # float outputs of real-input binary linear layers

    def _check_conv(self, name: str, m: nn.Conv2d) -> None:
        if isinstance(m.padding, str):
            raise unsupported(name, type(m).__name__, f"string padding {m.padding!r}")
        if tuple(m.dilation) != (1, 1) or m.groups != 1:
            raise unsupported(name, type(m).__name__, "dilation and groups must be 1")
        if m.padding_mode != "zeros":
            raise unsupported(name, type(m).__name__, f"padding_mode {m.padding_mode!r}")

    def _binary_weights(self, name: str, m: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        iq = getattr(m, "input_quantizer", None)
        if (
            iq is not None
            and not isinstance(iq, (RSign, DoReFaAct, PactAct))
            and (not isinstance(iq, Q.InputQuantizer) or iq.bits != 1)
        ):
            raise unsupported(
                name,
                type(m).__name__,
                f"its input_quantizer must be a 1-bit sign quantizer (got {type(iq).__name__})",
            )
        wq = getattr(m, "weight_quantizer", None)
        if not isinstance(wq, Q.WeightQuantizer) or wq.bits != 1:
            raise unsupported(
                name,
                type(m).__name__,
                "its weight_quantizer must be a 1-bit weight quantizer "
                f"('sign' or 'xnor'; got {type(wq).__name__})",
            )
        with torch.no_grad():
            b, alpha = m.quantized_weight()  # type: ignore[operator]
        bn_ = b.detach().numpy()
        if not np.all(np.abs(bn_) == 1):
            raise ValueError(f"layer {name!r}: binarized weights are not all +-1")
        o = bn_.shape[0]
        a = _f32(alpha) if alpha is not None else np.ones(o, np.float32)
        if not np.all(np.isfinite(a)):
            raise ValueError(
                f"layer {name!r}: scaling factor alpha must be finite "
                f"(got {a[~np.isfinite(a)][:4].tolist()})"
            )
        # A learned scale (BNN+) may end up negative: alpha sign(W) = (-alpha)(-sign(W)) with both
        # negations exact in IEEE arithmetic (sums of negated terms round symmetrically), so the
        # channel's binary weights are flipped and its scale made positive; every rule below
        # then sees a non-decreasing ``alpha x + b`` (which max-pooling of the int32 sums needs:
        # max(alpha x_i) = alpha max(x_i) only for alpha >= 0). alpha = 0 is a filter whose real
        # weights are all zero (XNOR-Net's mean |W| of a pruned filter, a BNN+ scale at zero):
        # PyTorch's value is then the bias for every input, which the exact rules express as a
        # constant decision and the float forms as ``0 * acc + b``.
        neg = a < 0
        if np.any(neg):
            bn_ = np.where(neg.reshape((o,) + (1,) * (bn_.ndim - 1)), -bn_, bn_).astype(bn_.dtype)
            a = np.where(neg, -a, a).astype(np.float32)
        return bn_, a

    # ----------------------------------------------------------------- consumers
    def _per_feature(self, p: Pending) -> bool:
        """True if the BN acts on flattened spatial features (BatchNorm1d after flatten)."""
        return p.chw is not None and p.flatten == "before_bn" and p.bn is not None

    def _lane_arrays(self, p: Pending) -> tuple[Any, ...]:
        """alpha, bias, lo, hi, BN params per lane, in the BN's own feature order."""
        bnp = _bn_params(p.bn_name or "", p.bn) if p.bn is not None else None
        if self._per_feature(p):
            chw = self._pooled_chw(p)
            assert chw is not None
            c, h, w = chw
            ch = np.repeat(np.arange(c), h * w)  # NCHW feature -> channel

            def pick(a: np.ndarray | None) -> np.ndarray | None:
                return None if a is None else a[ch]

            return pick(p.alpha), pick(p.bias), pick(p.lo), pick(p.hi), bnp, c * h * w
        return p.alpha, p.bias, p.lo, p.hi, bnp, p.channels

    def _chw(self, value: str) -> tuple[int, int, int] | None:
        """PyTorch's ``(C, H, W)`` of an engine value ``[H, W, C]`` (None for a vector)."""
        shape = self.b.values[value].shape
        return (shape[2], shape[0], shape[1]) if len(shape) == 3 else None

    def _accumulator(
        self, out: str, name: str, alpha: np.ndarray, bias: np.ndarray, lo: Any, hi: Any
    ) -> Pending:
        """The int32 accumulator ``out`` of layer ``name``: PyTorch's value is ``alpha acc + bias``,
        ``acc`` reaches ``[lo, hi]`` per channel."""
        o = self.b.values[out].shape[-1]
        return Pending(out, name, True, o, self._chw(out), alpha=alpha, bias=bias, lo=lo, hi=hi)

    def _pooled_chw(self, p: Pending) -> tuple[int, int, int] | None:
        if p.chw is None:
            return None
        c = p.chw[0]
        return (c, *self._spatial_after_pools(p))

    def _spatial_after_pools(self, p: Pending) -> tuple[int, int]:
        assert p.chw is not None
        _, h, w = p.chw
        for _, a in p.pools:
            (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
            h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        return h, w

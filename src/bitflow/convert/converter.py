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
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..ir.bits import pack_bits
from ..ir.graph import Graph, InputSpec, Op, ValueInfo, infer
from ..nn import BinaryConv2d, BinaryLinear, FixedPointBN, StreamClamp
from ..nn import quantizers as Q
from ..nn.fixedpoint import SHIFT
from ..nn.mbbn import MBitConv2d, MBitLinear
from ..nn.survey import DoReFaAct, PactAct, RPReLU, RSign, XnorPPConv2d
from . import batchshift as bs
from ._mbbn import quantizer_boundaries, torch_levels, weight_levels, weight_planes
from ._mcn import lower_mcn, mcn_conv
from ._trace import Step, UnsupportedLayerError, trace_steps, unsupported

CONVERTER_VERSION = "1"
_NEAR_WINDOW = 8
_MAX_WINDOW = 4096  # disagreements lie within a few ulps of T; the window grows 8x up to this


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
        x: str,
        *,
        name: str,
        attrs: dict[str, Any] | None = None,
        params: dict[str, np.ndarray] | None = None,
    ) -> str:
        opname = self._unique(name)
        pnames: dict[str, str] = {}
        for role, arr in (params or {}).items():
            tname = f"{opname}.{role}"
            self.tensors[tname] = np.ascontiguousarray(arr)
            pnames[role] = tname
        out = opname
        op = Op(type_, opname, [x], [out], dict(attrs or {}), pnames)
        self.values[out] = infer(op, [self.values[x]], self.tensors)
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


def _nchw_to_nhwc_perm(c: int, h: int, w: int) -> np.ndarray:
    """``perm[j]`` = NCHW feature index of NHWC feature ``j`` (``j = (y*W + x)*C + ch``)."""
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


class _Converter:
    def __init__(self, model: nn.Module, mode: str, input_shape: tuple[int, int, int]) -> None:
        self.model = model
        self.mode = mode
        self.b = _Builder(mode)
        self.input_shape = input_shape
        self.ties: dict[str, int] = {}
        self.float_ties: dict[str, int] = {}
        self.stream_bits: dict[str, str] = {}  # int32 stream value -> its sign bits (one per value)
        self.real_outputs: set[str] = set()  # float outputs of real-input binary linear layers

    # ----------------------------------------------------------------- producers
    def first_layer(self, step: Step, x: str) -> Pending:
        m = step.module
        assert isinstance(m, nn.Conv2d)
        self._check_conv(step.name, m)
        c_in = self.b.values[x].shape[2]
        if m.in_channels != c_in:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_channels} input channels, the input has {c_in}"
            )
        attrs = {"stride": list(m.stride), "padding": list(m.padding), "source": step.name}
        if step.kind == "int8_first":
            with torch.no_grad():
                q, s = m.quantized_weight()  # type: ignore[operator]
                # integer_output: the model itself returns the integer accumulator (FixedPointBN next)
                alpha = (
                    np.ones(m.out_channels, np.float32)
                    if getattr(m, "integer_output", False)
                    else _f32(s / 255.0)
                )
            qn = q.detach().numpy()
            if not np.array_equal(qn, np.round(qn)) or np.abs(qn).max(initial=0) > 127:
                raise ValueError(
                    f"layer {step.name!r}: quantized weights are not integers in [-127, 127]"
                )
            w = np.ascontiguousarray(qn.transpose(0, 2, 3, 1)).astype(np.int8)
            out = self.b.add("conv2d_u8i8", x, name=step.name, attrs=attrs, params={"w": w})
            q64 = qn.reshape(qn.shape[0], -1).astype(np.int64)
            lo = 255 * np.minimum(q64, 0).sum(1)
            hi = 255 * np.maximum(q64, 0).sum(1)
            bias = _conv_bias(m)
            v = self.b.values[out]
            return Pending(
                out,
                step.name,
                True,
                m.out_channels,
                (m.out_channels, v.shape[0], v.shape[1]),
                alpha=alpha,
                bias=bias,
                lo=lo,
                hi=hi,
            )
        w32 = _f32(m.weight)
        params = {"w": np.ascontiguousarray(w32.transpose(0, 2, 3, 1))}
        bias = _conv_bias(m)
        if m.bias is not None:
            params["bias"] = bias
        out = self.b.add("conv2d_f32", x, name=step.name, attrs=attrs, params=params)
        v = self.b.values[out]
        fan = w32[0].size
        # standard float32 summation bound: |err| <= fan_in * u * (sum |w| * max|x| + |b|), x in [0,1]
        err = (
            fan
            * float(np.finfo(np.float32).eps)
            * (np.abs(w32).reshape(w32.shape[0], -1).sum(1) + np.abs(bias))
        )
        return Pending(
            out,
            step.name,
            False,
            m.out_channels,
            (m.out_channels, v.shape[0], v.shape[1]),
            err_bound=err.astype(np.float64),
        )

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
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(
                f"layer {name!r}: scaling factor alpha must be > 0 (a channel has all-zero weights?)"
            )
        return bn_, a

    def binary_conv(self, step: Step, bits: str) -> Pending:
        m = step.module
        assert isinstance(m, nn.Conv2d)
        self._check_conv(step.name, m)
        b, alpha = self._binary_weights(step.name, m)
        vin = self.b.values[bits]
        if m.in_channels != vin.channels:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_channels} channels, gets {vin.channels}"
            )
        w = pack_bits(b.transpose(0, 2, 3, 1) < 0)
        attrs = {
            "channels": m.in_channels,
            "stride": list(m.stride),
            "padding": list(m.padding),
            "pad_value": int(getattr(m, "pad_value", 0)),
            "source": step.name,
        }
        out = self.b.add("bconv2d", bits, name=step.name, attrs=attrs, params={"w": w})
        v = self.b.values[out]
        n = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        bias = _conv_bias(m)
        return Pending(
            out,
            step.name,
            True,
            m.out_channels,
            (m.out_channels, v.shape[0], v.shape[1]),
            alpha=alpha,
            bias=bias,
            lo=np.full(m.out_channels, -n),
            hi=np.full(m.out_channels, n),
        )

    def _to_bits_table(
        self, p: Pending, shift: np.ndarray | None, consumer: str
    ) -> tuple[str, tuple[int, int, int] | None]:
        """XNOR-Net++ (``z = Gamma[y, x, o] d`` on the int32 ``d``): one exact threshold per
        (position, channel), ``threshold_bits_hw``, then bit pools and a flatten.

        Every lane is BatchShift's rule with ``alpha = |Gamma|`` (a negative ``Gamma`` runs the
        rule on ``-d`` and flips the direction; ``Gamma = 0`` is a constant). Max-pools commute
        with the decisions as long as the BatchNorm is monotone the same way in every channel
        (``max_p sign(BN(z_p)) = sign(BN(max_p z_p))`` for an increasing BN: an AND of the bits,
        OR for a decreasing one), whatever the sign of ``Gamma_p``: the pool acts on ``z``. A
        BatchNorm1d after the pool and flatten (per pooled feature) needs non-overlapping
        pooling windows, so that each position belongs to one feature."""
        assert p.pos_scale is not None and p.chw is not None and p.alpha is not None
        g = p.pos_scale.astype(np.float32)
        h, w, o = g.shape
        where = consumer or p.producer
        if shift is not None:
            raise unsupported(where, "RSign", "an RSign after an XNOR-Net++ layer (not yet)")
        if p.flatten == "before_bn" and p.bn is not None:
            if len(p.pools) > 1:
                raise unsupported(where, "XnorPPConv2d", "several pools before a BatchNorm1d")
            hh, ww, sy, sx = h, w, 1, 1
            for _name, a in p.pools:
                (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
                if (kh, kw) != (sh, sw) or (ph, pw) != (0, 0):
                    raise unsupported(
                        where,
                        "XnorPPConv2d",
                        "a BatchNorm1d after an overlapping or padded pool (each position must "
                        "belong to one pooled feature)",
                    )
                hh, ww, sy, sx = (h - kh) // sh + 1, (w - kw) // sw + 1, sh, sw
            ys = np.minimum(np.arange(h) // sy, hh - 1)
            xs = np.minimum(np.arange(w) // sx, ww - 1)
            feat = (
                np.arange(o)[None, None, :] * (hh * ww) + ys[:, None, None] * ww + xs[None, :, None]
            ).reshape(-1)  # lane (y, x, o) -> NCHW pooled feature (positions cut by the pool: any)
        elif p.flatten is None or p.flatten == "after_bn" or p.bn is None:
            feat = np.tile(np.arange(o), h * w)
        else:  # pragma: no cover - the flatten modes are exhaustive
            raise AssertionError(p.flatten)
        bnp = _bn_params(p.bn_name or "", p.bn) if p.bn is not None else bs.BNParams.identity(o)
        lane_bn = bs.BNParams(
            mean=bnp.mean[feat],
            var=bnp.var[feat],
            eps=bnp.eps,
            gamma=bnp.gamma[feat],
            beta=bnp.beta[feat],
        )
        gl = g.reshape(-1).astype(np.float64)
        ch = np.tile(np.arange(o), h * w)
        assert p.lo is not None and p.hi is not None
        lo, hi = np.asarray(p.lo, np.int64)[ch], np.asarray(p.hi, np.int64)[ch]
        bias = np.asarray(p.bias if p.bias is not None else np.zeros(o), np.float32)[ch]
        neg, zero = gl < 0, gl == 0
        th = bs.int_thresholds(
            lo=np.where(zero, 0, np.where(neg, -hi, lo)),
            hi=np.where(zero, 0, np.where(neg, -lo, hi)),
            bn=lane_bn,
            alpha=np.where(zero, 1.0, np.abs(gl)).astype(np.float32),
            bias=bias,
            relu=p.relu,
            channels=gl.size,
        )
        kind = th.kind.copy()
        thr = th.thr.astype(np.int64)
        flip = neg & np.isin(kind, (bs.GE, bs.LE))
        thr = np.where(flip, -thr, thr)
        kind = np.where(flip, -kind, kind)  # GE (+1) <-> LE (-1); constants stay
        direction = np.where(kind == bs.LE, -1, np.where(kind == bs.CONST_NEG, -1, 1))
        final = bs.Thresholds(
            thr=thr.astype(np.int32), direction=direction.astype(np.int8), kind=kind, tau=th.tau
        )
        gam = lane_bn.gamma
        pool_op = "and" if np.all(gam >= 0) else ("or" if np.all(gam <= 0) else None)
        if p.pools and pool_op is None:
            raise unsupported(
                where,
                "XnorPPConv2d",
                "max-pooling after per-position scales needs a BatchNorm of one direction "
                "(all gamma >= 0 or all <= 0)",
            )

        def decide(d: np.ndarray) -> np.ndarray:  # PyTorch's float32 pipeline, per lane
            with torch.no_grad():
                y = torch.from_numpy(np.ascontiguousarray(d, np.float32)) * torch.from_numpy(
                    gl.astype(np.float32)
                )
                if np.any(bias != 0):
                    y = y + torch.from_numpy(bias)
                if p.relu:
                    y = torch.relu(y)
                if p.bn is not None:
                    y = F.batch_norm(
                        y,
                        torch.from_numpy(lane_bn.mean),
                        torch.from_numpy(lane_bn.var),
                        torch.from_numpy(lane_bn.gamma),
                        torch.from_numpy(lane_bn.beta),
                        False,
                        0.0,
                        float(lane_bn.eps),
                    )
                return (y >= 0).numpy()

        ties = _count_ties(p, final, None, None, lo, hi, gl.size, False, None, decide)
        tname = f"{p.bn_name or p.producer}.threshold"
        x = self.b.add(
            "threshold_bits_hw",
            p.value,
            name=tname,
            attrs={"ties": ties, "source": p.bn_name or p.producer},
            params={
                "thr": final.thr.reshape(h, w, o),
                "direction": final.direction.reshape(h, w, o),
            },
        )
        self.ties[tname] = ties
        for name, a in p.pools:
            assert pool_op is not None
            x = self.b.add("maxpool_bits", x, name=name, attrs={**a, "op": pool_op})
        chw = None
        if p.flatten is not None:
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = self._pooled_chw(p)
        return x, chw

    # ----------------------------------------------------------------- k-bit unsigned (DoReFa, PACT)
    def to_u8_levels(
        self, p: Pending, step: Step, act: tuple[int, Fraction]
    ) -> tuple[str, tuple[int, int, int] | None]:
        """Materialize ``p`` as the uint8 levels ``q`` of a DoReFa / PACT activation.

        The quantizer is ``q = round(clip(u, 0, c) L / c)`` with ``L = 2^k - 1`` (DoReFa Eq. 5,
        12: ``c = 1``; PACT Eq. 1-3: ``c = alpha``), so ``q = #{l : u >= b_l}`` with
        ``b_l = (2l + 1) c / (2L)`` (exact rationals; PyTorch's round-half-even can differ only
        where ``u L / c`` is exactly a half-integer, counted as ties). The steps are BatchShift's
        level thresholds (``level_int_thresholds`` / ``level_float_thresholds``) in the count
        form of ``threshold_u8`` / ``threshold_f32_u8``; max-pools run on the values first."""
        bits, c = act
        n_l = (1 << bits) - 1
        boundaries: list[Fraction | None] = [Fraction(2 * j + 1, 2 * n_l) * c for j in range(n_l)]
        per_feature = self._per_feature(p)
        alpha, bias, lo, hi, bnp, lanes = self._lane_arrays(p)
        layer = step.module
        assert layer is not None

        def torch_q(y: torch.Tensor) -> torch.Tensor:  # PyTorch's own levels, as 2q - L
            a = layer.input_quantizer(y)  # type: ignore[operator]
            return 2 * torch.round(a * n_l / float(c)).to(torch.int64) - n_l

        if p.is_int:
            th = bs.level_int_thresholds(
                lo=lo,
                hi=hi,
                bn=bnp,
                boundaries=boundaries,
                alpha=alpha,
                bias=bias,
                relu=p.relu,
                channels=lanes,
            )
            ties = _count_level_ties_int(p, th, alpha, bias, lo, hi, lanes, layer, torch_q)
            thr, direction, kind = th.thr, th.direction, "threshold_u8"
        else:
            if per_feature:
                raise unsupported(
                    step.name,
                    type(layer).__name__,
                    "k-bit levels on a per-feature BatchNorm1d right after the float first layer",
                )
            fth = bs.level_float_thresholds(bnp, boundaries=boundaries, relu=p.relu, channels=lanes)
            ties = _count_level_ties_float(p, fth, n_l, layer, torch_q)
            thr, direction = bs.float_plane_thresholds(fth, lanes)
            kind = "threshold_f32_u8"
        x = p.value
        for name, a in p.pools:
            x = self.b.add("maxpool_i32" if p.is_int else "maxpool_f32", x, name=name, attrs=a)
        chw = None
        if per_feature:
            pooled = self._pooled_chw(p)
            assert pooled is not None
            perm = _nchw_to_nhwc_perm(*pooled)
            thr, direction = thr[perm], direction[perm]
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = pooled
        tname = f"{p.bn_name or p.producer}.levels"
        x = self.b.add(
            kind,
            x,
            name=tname,
            attrs={
                "levels": n_l,
                "ties" if p.is_int else "float_ties": ties,
                "source": p.bn_name or p.producer,
            },
            params={"thr": np.ascontiguousarray(thr), "direction": direction},
        )
        (self.ties if p.is_int else self.float_ties)[tname] = ties
        if p.flatten is not None and not per_feature:
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = self._pooled_chw(p)
        return x, chw

    def u8_layer(
        self, step: Step, value: str, chw: tuple[int, int, int] | None, act: tuple[int, Fraction]
    ) -> Pending:
        """A binary conv / linear layer over k-bit unsigned levels -> ``conv2d_u8b1`` /
        ``dense_u8b1`` (exact ``sum w q`` in int32); PyTorch's output ``alpha_w sum w a`` with
        ``a = q c / L`` is ``(alpha_w c / L) sum w q``: the accumulator's scale."""
        m = step.module
        assert m is not None
        b, alpha = self._binary_weights(step.name, m)
        n_l = (1 << act[0]) - 1
        scale = (alpha.astype(np.float64) * float(act[1]) / n_l).astype(np.float32)
        vin = self.b.values[value]
        bias_t = getattr(m, "bias", None)
        bias = _f32(bias_t) if bias_t is not None else np.zeros(b.shape[0], np.float32)
        if isinstance(m, nn.Conv2d):
            self._check_conv(step.name, m)
            if float(getattr(m, "pad_value", 0)) != 0.0:
                raise unsupported(
                    step.name,
                    type(m).__name__,
                    "k-bit unsigned levels padded with a nonzero pad_value",
                )
            if m.in_channels != vin.shape[-1]:
                raise ValueError(
                    f"layer {step.name!r} expects {m.in_channels} channels, gets {vin.shape[-1]}"
                )
            attrs = {
                "channels": m.in_channels,
                "stride": list(m.stride),
                "padding": list(m.padding),
                "input_levels": n_l,
                "source": step.name,
            }
            w = pack_bits(b.transpose(0, 2, 3, 1) < 0)
            out = self.b.add("conv2d_u8b1", value, name=step.name, attrs=attrs, params={"w": w})
            v = self.b.values[out]
            out_chw: tuple[int, int, int] | None = (m.out_channels, v.shape[0], v.shape[1])
        else:
            if b.shape[1] != vin.shape[0]:
                raise ValueError(
                    f"layer {step.name!r} expects {b.shape[1]} features, gets {vin.shape[0]}"
                )
            if chw is not None:  # PyTorch's NCHW flatten order -> the engine's NHWC order
                c_, h_, w_ = chw
                b = b.reshape(b.shape[0], c_, h_, w_).transpose(0, 2, 3, 1).reshape(b.shape[0], -1)
            attrs2: dict[str, Any] = {
                "channels": int(b.shape[1]),
                "input_levels": n_l,
                "source": step.name,
            }
            if chw is not None:
                attrs2["input_chw"] = list(chw)
            out = self.b.add(
                "dense_u8b1", value, name=step.name, attrs=attrs2, params={"w": pack_bits(b < 0)}
            )
            out_chw = None
        n = int(b[0].size) * n_l
        o = b.shape[0]
        return Pending(
            out,
            step.name,
            True,
            o,
            out_chw,
            alpha=scale,
            bias=bias,
            lo=np.full(o, -n),
            hi=np.full(o, n),
        )

    # ----------------------------------------------------------------- W1 / A32 layers
    def real_binary_conv(self, step: Step, p: Pending) -> Pending:
        """A binary conv without an input quantizer (BinaryConnect, BWN: +-1 weights, real
        activations) -> ``conv2d_f32b1`` on the float32 input, then ``affine_f32`` with
        ``alpha`` and the bias in PyTorch's order (``conv(x, sign W) * alpha + b``)."""
        m = step.module
        assert isinstance(m, nn.Conv2d)
        self._check_conv(step.name, m)
        if float(getattr(m, "pad_value", 0)) != 0.0:
            raise unsupported(
                step.name,
                type(m).__name__,
                "real-valued activations padded with a nonzero pad_value (only zero padding)",
            )
        b, alpha = self._binary_weights(step.name, m)
        q = (
            _materialize(self, p, step.name)
            if (p.is_int or p.relu or p.pools or p.bn is not None)
            else p
        )
        vin = self.b.values[q.value]
        if m.in_channels != vin.shape[-1]:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_channels} channels, gets {vin.shape[-1]}"
            )
        attrs = {
            "channels": m.in_channels,
            "stride": list(m.stride),
            "padding": list(m.padding),
            "source": step.name,
        }
        w = pack_bits(b.transpose(0, 2, 3, 1) < 0)
        out = self.b.add("conv2d_f32b1", q.value, name=step.name, attrs=attrs, params={"w": w})
        out = self._alpha_bias(out, m, alpha, step.name)
        v = self.b.values[out]
        return Pending(out, step.name, False, m.out_channels, (v.shape[2], v.shape[0], v.shape[1]))

    def real_binary_linear(self, step: Step, p: Pending) -> Pending:
        """A binary linear layer without an input quantizer -> ``dense_f32b1`` (+ ``affine_f32``)."""
        m = step.module
        assert isinstance(m, nn.Linear)
        b, alpha = self._binary_weights(step.name, m)
        x, chw = self._float_chain(p)
        if b.shape[1] != self.b.values[x].shape[0]:
            raise ValueError(
                f"layer {step.name!r} expects {b.shape[1]} features, gets {self.b.values[x].shape[0]}"
            )
        if chw is not None:  # PyTorch's NCHW flatten order -> the engine's NHWC order
            c, h, w_ = chw
            b = b.reshape(b.shape[0], c, h, w_).transpose(0, 2, 3, 1).reshape(b.shape[0], -1)
        attrs = {"channels": int(b.shape[1]), "source": step.name}
        out = self.b.add(
            "dense_f32b1", x, name=step.name, attrs=attrs, params={"w": pack_bits(b < 0)}
        )
        out = self._alpha_bias(out, m, alpha, step.name)
        self.real_outputs.add(out)
        return Pending(out, step.name, False, m.out_features, None)

    def _alpha_bias(self, x: str, m: nn.Module, alpha: np.ndarray, name: str) -> str:
        """``x * alpha + bias`` as ``affine_f32`` (none when ``alpha = 1`` and no bias: exact)."""
        bias = getattr(m, "bias", None)
        if np.all(alpha == 1) and bias is None:
            return x
        b = _f32(bias) if bias is not None else np.zeros(alpha.shape[0], np.float32)
        return self.b.add(
            "affine_f32",
            x,
            name=f"{name}.scale",
            params={"scale": alpha.astype(np.float32), "bias": b},
            attrs={"source": name},
        )

    def binary_linear(self, step: Step, bits: str, chw: tuple[int, int, int] | None) -> Pending:
        m = step.module
        assert isinstance(m, nn.Linear)
        b, alpha = self._binary_weights(step.name, m)
        vin = self.b.values[bits]
        if m.in_features != vin.real_bits:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_features} features, gets {vin.real_bits}"
            )
        if chw is not None:  # columns from PyTorch's NCHW flatten order to the engine's NHWC order
            c, h, w_ = chw
            b4 = b.reshape(b.shape[0], c, h, w_).transpose(0, 2, 3, 1)  # [O, H, W, C]
            if vin.groups > 1:
                packed = pack_bits(b4 < 0).reshape(b.shape[0], -1)  # per-pixel word padding
            else:
                packed = pack_bits(b4.reshape(b.shape[0], -1) < 0)
        else:
            packed = pack_bits(b < 0)
        attrs: dict[str, Any] = {"k_bits": m.in_features, "source": step.name}
        if chw is not None:
            attrs["input_chw"] = list(chw)  # PyTorch (C, H, W) the features were flattened from
        out = self.b.add("bdense", bits, name=step.name, attrs=attrs, params={"w": packed})
        bias = _f32(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
        n = m.in_features
        return Pending(
            out,
            step.name,
            True,
            m.out_features,
            None,
            alpha=alpha,
            bias=bias,
            lo=np.full(m.out_features, -n),
            hi=np.full(m.out_features, n),
        )

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

    def to_bits(
        self, p: Pending, consumer: str, shift: np.ndarray | None = None
    ) -> tuple[str, tuple[int, int, int] | None]:
        """Materialize ``p`` as packed bits feeding ``consumer``; returns (value, chw of a flatten).

        ``shift``: the consumer's RSign ``beta`` (float32, one per input channel or, after a
        flatten, per input feature in PyTorch's order): the bits are ``sign(u - beta)``."""
        if self.mode == "xnor":
            return self._to_bits_xnor(p, consumer, shift)
        if p.stream is not None and p.flatten is None and not p.pools:
            # the stream's signs, computed once for all readers with the same shift
            key = p.value if shift is None else f"{p.value}|rsign:{shift.tobytes().hex()}"
            if key not in self.stream_bits:
                self.stream_bits[key] = self._to_bits_int(p, shift, consumer)[0]
            return self.stream_bits[key], None
        return self._to_bits_int(p, shift, consumer)

    def _boundaries(
        self, p: Pending, shift: np.ndarray | None, lanes: int, consumer: str
    ) -> Fraction | list[Fraction]:
        """The exact decision boundary of every lane: 0 (a plain sign) or RSign's ``beta``.

        ``sign(u - beta)`` in PyTorch is ``fl(u - beta) >= 0`` (``sign(0) = +1``); an IEEE
        float32 difference is 0 only when ``u == beta`` and otherwise has the sign of the exact
        ``u - beta``, so it is ``u >= beta`` exactly: the boundary ``beta`` of the lane's
        predicate ``BN(z) >= b`` (:mod:`.batchshift`), one exact rational per lane."""
        if shift is None:
            return Fraction(0)
        if shift.shape != (lanes,):
            raise unsupported(
                consumer,
                "RSign",
                f"its {shift.size} shifts do not match the {lanes} thresholds of its input "
                "(an RSign after a per-channel BatchNorm and a flatten)",
            )
        if not np.all(np.isfinite(shift)):
            raise ValueError(f"layer {consumer!r}: RSign beta contains NaN or infinity")
        return [Fraction(float(b)) for b in shift]

    def _to_bits_int(
        self,
        p: Pending,
        shift: np.ndarray | None = None,
        consumer: str = "",
        *,
        boundary: bs.Boundary | None = None,
        layer: nn.Module | None = None,
    ) -> tuple[str, tuple[int, int, int] | None]:
        """Sign bits ``BN(...) >= 0``; with ``shift`` (the consumer's RSign ``beta``, see
        :meth:`to_bits`) ``BN(...) >= beta`` per lane; with ``boundary`` (a 1-bit MBBN quantizer
        of ``layer``, the consumer) the quantizer's own step ``BN(...) >= b`` / ``> b``."""
        where = consumer or p.producer
        if boundary is not None and shift is not None:  # pragma: no cover - no caller does both
            raise AssertionError("an RSign shift and an MBBN quantizer step on the same bits")
        if p.pos_scale is not None:
            if boundary is not None:
                raise unsupported(
                    where, "XnorPPConv2d", "an MBBN quantizer after an XNOR-Net++ layer (not yet)"
                )
            return self._to_bits_table(p, shift, consumer)
        per_feature = self._per_feature(p)
        alpha, bias, lo, hi, bnp, lanes = self._lane_arrays(p)
        bound: Fraction | bs.Boundary | list[Fraction] = (
            boundary if boundary is not None else self._boundaries(p, shift, lanes, where)
        )
        if p.is_int:
            th = bs.int_thresholds(
                lo=lo,
                hi=hi,
                bn=bnp,
                alpha=alpha,
                bias=bias,
                relu=p.relu,
                channels=lanes,
                boundary=bound,
            )
        else:
            th = bs.float_thresholds(bnp, relu=p.relu, channels=lanes, boundary=bound)
        ties = _count_ties(p, th, alpha, bias, lo, hi, lanes, per_feature, shift, layer=layer)
        thr, direction = th.thr, th.direction
        if per_feature:
            pooled = self._pooled_chw(p)
            assert pooled is not None
            perm = _nchw_to_nhwc_perm(*pooled)
            thr, direction = thr[perm], direction[perm]
        x = p.value
        pool_on_bits = bool(p.pools) and not per_feature and th.pool_op is not None
        if not pool_on_bits:
            for name, a in p.pools:
                x = self.b.add("maxpool_i32" if p.is_int else "maxpool_f32", x, name=name, attrs=a)
        chw = None
        if per_feature:
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = self._pooled_chw(p)
        tname = f"{p.bn_name or p.producer}.threshold"
        # integer thresholds: reachable integers where PyTorch disagrees ("ties"); float ones:
        # float32 inputs next to the threshold where PyTorch's float32 BN rounds the other way
        attrs: dict[str, Any] = {
            "ties" if p.is_int else "float_ties": ties,
            "source": p.bn_name or p.producer,
        }
        if p.is_int:
            x = self.b.add(
                "threshold_bits",
                x,
                name=tname,
                attrs=attrs,
                params={"thr": thr, "direction": direction},
            )
        else:
            x = self.b.add(
                "threshold_f32_bits",
                x,
                name=tname,
                attrs=attrs,
                params={"thr": thr.astype(np.float32), "direction": direction},
            )
        if p.is_int:
            self.ties[tname] = ties
        else:
            self.float_ties[tname] = ties
        if pool_on_bits:
            for name, a in p.pools:
                x = self.b.add("maxpool_bits", x, name=name, attrs={**a, "op": th.pool_op})
        if p.flatten is not None and not per_feature:
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = self._pooled_chw(p)
        return x, chw

    # ----------------------------------------------------------------- MBBN (multi-bit) layers
    def to_levels(
        self, p: Pending, step: Step
    ) -> tuple[str, tuple[int, int, int] | None, dict[str, Any]]:
        """Materialize ``p`` as the ``M``-bit input of the MBBN layer ``step``.

        Returns ``(value, chw of a flatten, encoding)``; ``encoding`` (stored on the binary op)
        says how the value holds the odd levels ``v``: ``"planes"`` (``M`` bit planes, Eq. 7;
        ``M = 1`` is the plain sign bit), from integer or (first layer) float thresholds.

        Integer producer: one :func:`~.batchshift.level_int_thresholds` rule per channel ->
        ``threshold_planes`` (``M >= 2``; max-pools run on the int32 accumulator first, since
        the max of two levels is not a bitwise function of their planes) or the 1-bit
        ``threshold_bits`` path (``M = 1``, pools on bits). Float producer (the first layer):
        :meth:`_float_planes`.
        """
        m = step.module
        assert m is not None
        bits_a, boundaries = quantizer_boundaries(step.name, m)
        if bits_a == 1:
            (b0,) = boundaries
            assert b0 is not None  # a 1-bit HReLU is rejected by the quantizer
            if b0 == bs.Boundary(Fraction(0)):  # a sign quantizer: the plain binary path
                x, chw = self.to_bits(p, step.name)
            else:  # an M = 1 MBBN quantizer: its own float32 step (quantizer_boundaries)
                x, chw = self._to_bits_int(p, consumer=step.name, boundary=b0, layer=m)
            return x, chw, {"encoding": "planes", "bits": 1}
        if p.pos_scale is not None:
            raise unsupported(
                step.name, "XnorPPConv2d", "an MBBN quantizer after an XNOR-Net++ layer (not yet)"
            )
        if not p.is_int:
            return self._float_planes(p, step, bits_a, boundaries)
        per_feature = self._per_feature(p)
        alpha, bias, lo, hi, bnp, lanes = self._lane_arrays(p)
        th = bs.level_int_thresholds(
            lo=lo,
            hi=hi,
            bn=bnp,
            boundaries=boundaries,
            alpha=alpha,
            bias=bias,
            relu=p.relu,
            channels=lanes,
        )
        ties = _count_level_ties_int(p, th, alpha, bias, lo, hi, lanes, m)
        thr, direction = th.thr, th.direction
        x = p.value
        for name, a in p.pools:
            x = self.b.add("maxpool_i32", x, name=name, attrs=a)
        chw = None
        if per_feature:
            pooled = self._pooled_chw(p)
            assert pooled is not None
            perm = _nchw_to_nhwc_perm(*pooled)
            thr, direction = thr[perm], direction[perm]
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = pooled
        tname = f"{p.bn_name or p.producer}.threshold"
        x = self.b.add(
            "threshold_planes",
            x,
            name=tname,
            attrs={"planes": bits_a, "ties": ties, "source": p.bn_name or p.producer},
            params={"thr": np.ascontiguousarray(thr), "direction": direction},
        )
        self.ties[tname] = ties
        if p.flatten is not None and not per_feature:
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = self._pooled_chw(p)
        return x, chw, {"encoding": "planes", "bits": bits_a}

    def _float_planes(
        self, p: Pending, step: Step, bits_a: int, boundaries: list[bs.Boundary | None]
    ) -> tuple[str, tuple[int, int, int] | None, dict[str, Any]]:
        """Float first layer -> the ``M`` bit planes of its levels (``threshold_f32_planes``).

        Per channel the ``L = 2^M - 1`` exact float32 thresholds of
        :func:`~.batchshift.level_float_thresholds` (``BN(y) >= b_l``), in the counting form of
        :func:`~.batchshift.float_plane_thresholds`: ``q`` = thresholds passed, plane ``m`` = bit
        ``m`` of ``q``. Max-pools run on the float32 output first (the model pools before its
        BatchNorm; the max of two levels is not a bitwise function of their planes).
        """
        if self._per_feature(p):
            raise unsupported(
                step.name,
                type(step.module).__name__,
                "a multi-bit quantizer on per-feature BatchNorm1d right after the float first layer",
            )
        n_l = len(boundaries)
        bnp = _bn_params(p.bn_name or "", p.bn) if p.bn is not None else None
        th = bs.level_float_thresholds(bnp, boundaries=boundaries, relu=p.relu, channels=p.channels)
        assert step.module is not None
        ties = _count_level_ties_float(p, th, n_l, step.module)
        thr, direction = bs.float_plane_thresholds(th, p.channels)
        x = p.value
        for name, a in p.pools:
            x = self.b.add("maxpool_f32", x, name=name, attrs=a)
        tname = f"{p.bn_name or p.producer}.threshold"
        x = self.b.add(
            "threshold_f32_planes",
            x,
            name=tname,
            attrs={"planes": bits_a, "float_ties": ties, "source": p.bn_name or p.producer},
            params={"thr": np.ascontiguousarray(thr), "direction": direction},
        )
        self.float_ties[tname] = ties
        chw = None
        if p.flatten is not None:
            x = self.b.add("flatten", x, name=p.flatten_name)
            chw = self._pooled_chw(p)
        return x, chw, {"encoding": "planes", "bits": bits_a}

    def _mbit_common(
        self, step: Step, value: str, enc: dict[str, Any]
    ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
        """Weight levels, K, output scale, reachable accumulator range ``[lo, hi]`` per channel."""
        m = step.module
        assert m is not None
        vw, k, scale = weight_levels(step.name, m)
        a_in = (1 << int(enc["bits"])) - 1
        span = np.abs(vw).reshape(vw.shape[0], -1).sum(1) * a_in  # |sum v_x v_w| <= A sum |v_w|
        return vw, k, scale, -span, span

    def check_accumulator(self, step: Step) -> None:
        """docs/architecture.md §2: the int32 accumulator must hold ``fan_in (2^M - 1)(2^K - 1)``
        (checked before any threshold is computed; the engine ops check it again)."""
        m = step.module
        assert isinstance(m, (MBitConv2d, MBitLinear))
        bound = int(m.accumulator_bound())
        if bound >= bs.INT32_MAX:
            raise ValueError(
                f"layer {step.name!r}: accumulator bound fan_in x (2^M - 1) x (2^K - 1) = {m.fan_in} x "
                f"{(1 << m.bits_a) - 1} x {(1 << m.bits_w) - 1} = {bound} does not fit the int32 accumulator "
                f"(2^31 - 1); use fewer bits or a smaller fan-in"
            )

    def _mbit_attrs(self, step: Step, enc: dict[str, Any]) -> dict[str, Any]:
        m = step.module
        assert isinstance(m, (MBitConv2d, MBitLinear))
        return {
            "source": step.name,
            "input_encoding": enc["encoding"],
            "input_bits": int(enc["bits"]),
            "weight_bits": int(m.bits_w),
        }

    def mbit_conv(self, step: Step, value: str, enc: dict[str, Any]) -> Pending:
        """``MBitConv2d`` -> ``bconv2d_planes`` (``K`` packed weight planes ``[K, O, kh, kw, Cw]``;
        the op accumulates ``sum_{m,k} 2^(m+k) dot(c_m, d_k) = v_x . v_w``, Eq. 8), or
        ``bconv2d`` when both operands have one plane."""
        m = step.module
        assert isinstance(m, nn.Conv2d)
        self._check_conv(step.name, m)
        # MBitConv2d pads the levels with 0, or with every plane +1 (level 2^M - 1) for any
        # nonzero pad_value: the engine's zero / +1 padding on every plane
        pad = 0 if float(getattr(m, "pad_value", 0)) == 0.0 else 1
        vw, k, scale, lo, hi = self._mbit_common(step, value, enc)
        vin = self.b.values[value]
        assert vin.channels is not None
        if m.in_channels != vin.channels:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_channels} channels, gets {vin.channels}"
            )
        planes = weight_planes(vw, k).transpose(0, 1, 3, 4, 2)  # [K, O, kh, kw, C]
        packed = pack_bits(planes < 0)
        attrs = {
            "channels": vin.channels,
            "stride": list(m.stride),
            "padding": list(m.padding),
            "pad_value": pad,
            **self._mbit_attrs(step, enc),
        }
        if k == 1 and vin.planes == 1:
            out = self.b.add("bconv2d", value, name=step.name, attrs=attrs, params={"w": packed[0]})
        else:
            out = self.b.add(
                "bconv2d_planes", value, name=step.name, attrs=attrs, params={"w": packed}
            )
        v = self.b.values[out]
        bias = _conv_bias(m)
        return Pending(
            out,
            step.name,
            True,
            m.out_channels,
            (m.out_channels, v.shape[0], v.shape[1]),
            alpha=scale,
            bias=bias,
            lo=lo,
            hi=hi,
        )

    def mbit_linear(
        self, step: Step, value: str, chw: tuple[int, int, int] | None, enc: dict[str, Any]
    ) -> Pending:
        """``MBitLinear`` -> ``bdense_planes`` (weights ``[K, O, Kw]``) or ``bdense`` (one plane each)."""
        m = step.module
        assert isinstance(m, nn.Linear)
        vw, k, scale, lo, hi = self._mbit_common(step, value, enc)
        vin = self.b.values[value]
        if m.in_features != vin.real_bits:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_features} features, gets {vin.real_bits}"
            )
        planes = weight_planes(vw, k)  # [K, O, F]
        o = vw.shape[0]
        if chw is not None:  # NCHW flatten order -> NHWC, each pixel keeps its word padding
            c, h, w_ = chw
            p5 = planes.reshape(k, o, c, h, w_).transpose(0, 1, 3, 4, 2)  # [K, O, H, W, C]
            packed = (
                pack_bits(p5 < 0).reshape(k, o, -1)
                if vin.groups > 1
                else pack_bits(p5.reshape(k, o, -1) < 0)
            )
        else:
            packed = pack_bits(planes < 0)
        attrs: dict[str, Any] = {"k_bits": vin.real_bits, **self._mbit_attrs(step, enc)}
        if chw is not None:
            attrs["input_chw"] = list(chw)
        if k == 1 and vin.planes == 1:
            out = self.b.add("bdense", value, name=step.name, attrs=attrs, params={"w": packed[0]})
        else:
            out = self.b.add(
                "bdense_planes", value, name=step.name, attrs=attrs, params={"w": packed}
            )
        bias = _f32(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
        return Pending(
            out, step.name, True, m.out_features, None, alpha=scale, bias=bias, lo=lo, hi=hi
        )

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

    def _float_chain(self, p: Pending) -> tuple[str, tuple[int, int, int] | None]:
        """XNOR-Net style float chain: alpha*x + b, ReLU, pools, [flatten], BN affine, [flatten]."""
        if p.pos_scale is not None:
            raise unsupported(
                p.producer,
                "XnorPPConv2d",
                "its per-position scale before a float value (a residual add, a float layer, "
                "mode='xnor') needs a per-position float scale op (not yet); only BatchNorm -> "
                "sign after it converts",
            )
        x = p.value
        if p.is_int:
            assert p.alpha is not None and p.bias is not None
            x = self.b.add(
                "scale_bias",
                x,
                name=f"{p.producer}.scale",
                params={"scale": p.alpha, "bias": p.bias},
            )
        if p.relu:
            x = self.b.add("relu_f32", x, name=f"{p.producer}.relu")
        for name, a in p.pools:
            x = self.b.add("maxpool_f32", x, name=name, attrs=a)
        chw = self._pooled_chw(p)
        if p.flatten == "before_bn":
            x = self.b.add("flatten", x, name=p.flatten_name)
        if p.bn is not None:
            bnp = _bn_params(p.bn_name or "", p.bn)
            s64 = bnp.gamma.astype(np.float64) / np.sqrt(bnp.var.astype(np.float64) + bnp.eps)
            scale = s64.astype(np.float32)
            shift = (bnp.beta.astype(np.float64) - bnp.mean.astype(np.float64) * s64).astype(
                np.float32
            )
            if p.flatten == "before_bn" and chw is not None:
                perm = _nchw_to_nhwc_perm(*chw)
                scale, shift = scale[perm], shift[perm]
            # |beta| + |mean * s|: PyTorch's BN rounds (x - mean) s + beta, whose terms can be far
            # larger than the folded bias; the float error bound of verify needs their size
            terms = float(
                np.max(
                    np.abs(bnp.beta.astype(np.float64)) + np.abs(bnp.mean.astype(np.float64) * s64),
                    initial=0.0,
                )
            )
            x = self.b.add(
                "affine_f32",
                x,
                name=f"{p.bn_name}",
                params={"scale": scale, "bias": shift},
                attrs={"source": p.bn_name, "bn_terms_abs": terms},
            )
        if p.flatten == "after_bn":
            x = self.b.add("flatten", x, name=p.flatten_name)
        return x, (chw if p.flatten is not None else None)

    def _to_bits_xnor(
        self, p: Pending, consumer: str, shift: np.ndarray | None = None
    ) -> tuple[str, tuple[int, int, int] | None]:
        x, chw = self._float_chain(p)
        if shift is None:
            x = self.b.add("bitpack", x, name=f"{consumer}.sign", attrs={"source": consumer})
            return x, chw
        # RSign: fl(u - beta) >= 0 is u >= beta exactly (see _boundaries), on the float value
        n = self.b.values[x].shape[-1]
        if shift.shape != (n,) or chw is not None:
            raise unsupported(
                consumer, "RSign", "an RSign after a flatten converts in mode='bitflow' only"
            )
        x = self.b.add(
            "threshold_f32_bits",
            x,
            name=f"{consumer}.rsign",
            attrs={"float_ties": 0, "source": consumer},
            params={"thr": shift.astype(np.float32), "direction": np.ones(n, np.int8)},
        )
        return x, chw

    def float_linear(self, p: Pending, step: Step) -> str:
        m = step.module
        assert isinstance(m, nn.Linear)
        x, chw = self._float_chain(p)
        w = _f32(m.weight)
        if w.shape[1] != self.b.values[x].shape[0]:
            raise ValueError(
                f"layer {step.name!r} expects {w.shape[1]} features, gets {self.b.values[x].shape[0]}"
            )
        if chw is not None:
            c, h, w_ = chw
            w = w.reshape(w.shape[0], c, h, w_).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        params = {"w": np.ascontiguousarray(w)}
        if m.bias is not None:
            params["bias"] = _f32(m.bias)
        return self.b.add(
            "dense_f32", x, name=step.name, params=params, attrs={"source": step.name}
        )

    def scale_output(self, p: Pending, scale: float | None, name: str) -> str:
        """Binary last layer: logits = (x * alpha + b) * s, exactly as PyTorch rounds it (a
        real-input binary layer's value is already float: ``x * alpha + b`` applied)."""
        if p.is_int:
            assert p.alpha is not None and p.bias is not None
            x = self.b.add(
                "scale_bias",
                p.value,
                name=f"{p.producer}.scale",
                params={"scale": p.alpha, "bias": p.bias},
            )
        else:
            x = p.value
        if scale is not None:
            n = p.channels
            x = self.b.add(
                "affine_f32",
                x,
                name=name,
                params={"scale": np.full(n, scale, np.float32), "bias": np.zeros(n, np.float32)},
                attrs={"source": name},
            )
        return x


def _count_ties(
    p: Pending,
    th: bs.Thresholds,
    alpha: Any,
    bias: Any,
    lo: Any,
    hi: Any,
    lanes: int,
    per_feature: bool,
    shift: np.ndarray | None = None,
    decide: Any = None,
    layer: nn.Module | None = None,
) -> int:
    """Reachable inputs where PyTorch's own float32 arithmetic disagrees with the exact rule
    (``decide``: PyTorch's decisions on ``xs [K, lanes]`` when not the usual BN chain;
    ``layer``: the decision is its input quantizer's level > 0; ``shift``: the usual chain
    followed by RSign's ``sign(u - beta)``; else ``BN(...) >= 0``).

    Both PyTorch's float32 pipeline (``x*alpha + b``, ReLU, the BN module) and the exact rule are
    monotone step functions of ``x``, so their disagreements form an interval next to ``T``: we
    evaluate a window around ``T`` (and both range ends for constants), widening it while the
    window edge still disagrees.
    """
    bn = p.bn
    if p.is_int:
        assert lo is not None and hi is not None
        lo_ = np.asarray(lo, np.int64)
        hi_ = np.asarray(hi, np.int64)
    else:
        key_max = bs._F32_MAX_KEY
        lo_ = np.full(lanes, -key_max, np.int64)
        hi_ = np.full(lanes, key_max, np.int64)
    const = np.isin(th.kind, (bs.CONST_POS, bs.CONST_NEG))
    if p.is_int:
        center = np.where(const, lo_, th.thr.astype(np.int64))
    else:
        keys = th.thr.astype(np.float32).view(np.int32).astype(np.int64)
        keys = np.where(keys < 0, -(keys & 0x7FFFFFFF), keys)
        center = np.where(const, lo_, keys)
    total = 0
    width = _NEAR_WINDOW
    while True:
        ks = np.arange(-width, width + 1, dtype=np.int64)
        pts = np.concatenate(
            [center[None, :] + ks[:, None], np.where(const, hi_, center)[None, :] + ks[:, None]]
        )
        pts = np.clip(pts, lo_, hi_)
        if p.is_int:
            xs = pts.astype(np.float32)
        else:
            xs = bs.f32_from_keys(pts)
        exact = th.apply(xs.astype(np.float64) if not p.is_int else pts) > 0
        if decide is not None:
            got = decide(xs)
        elif layer is not None:
            got = _torch_level_fn(p, alpha if p.is_int else None, bias, layer)(xs) > 0
        else:
            got = _torch_decisions(p, xs, alpha, bias, bn, per_feature, shift)
        bad = exact != got
        # distinct points only (clipping and the two windows may repeat a point)
        total = _distinct_bad(pts, bad)
        edge_rows = [0, 2 * width, 2 * width + 1, 4 * width + 1]
        edge_bad = bad[edge_rows] & (pts[edge_rows] > lo_) & (pts[edge_rows] < hi_)
        if not edge_bad.any() or width >= _MAX_WINDOW:
            return int(total)
        width *= 8


def _torch_level_fn(
    p: Pending, alpha: Any, bias: Any, layer: nn.Module, levels_of: Any = None
) -> Any:
    """``xs [K, lanes] -> PyTorch's levels [K, lanes]``: float32 ``x*alpha + b``, ReLU, the BN
    module, then ``layer``'s input quantizer (module order, as in the model)."""
    bn = p.bn

    def fn(xs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = torch.from_numpy(np.ascontiguousarray(xs, np.float32))
            if p.is_int:
                y = y * torch.from_numpy(np.asarray(alpha, np.float32))
                if bias is not None and np.any(bias != 0):
                    y = y + torch.from_numpy(np.asarray(bias, np.float32))
            if p.relu:
                y = torch.relu(y)
            if bn is not None:
                was = bn.training
                bn.eval()
                y = bn(y[:, :, None, None])[:, :, 0, 0] if isinstance(bn, nn.BatchNorm2d) else bn(y)
                bn.train(was)
            return (torch_levels(layer, y) if levels_of is None else levels_of(y)).numpy()

    return fn


def _distinct_bad(pts: np.ndarray, bad: np.ndarray) -> int:
    """Number of distinct points per column of ``pts [rows, lanes]`` where ``bad`` holds, summed
    over the lanes (``bad`` is a function of the point, so repeats agree); vectorized."""
    order = np.argsort(pts, axis=0, kind="stable")
    p = np.take_along_axis(pts, order, axis=0)
    b = np.take_along_axis(bad, order, axis=0)
    first = np.ones_like(b)
    first[1:] = p[1:] != p[:-1]
    return int((b & first).sum())


def _window_ties(
    centers: np.ndarray, lo_: np.ndarray, hi_: np.ndarray, exact: Any, torch_fn: Any, to_x: Any
) -> int:
    """Distinct points ``k`` (integers, or float32 order keys) in windows around ``centers
    [lanes, J]`` where ``exact(k)`` and ``torch_fn(to_x(k))`` (both ``[rows, lanes]`` levels)
    disagree; the windows widen (x8, up to ``_MAX_WINDOW``) while a window edge disagrees.
    Both are monotone step functions of ``k`` that differ only next to the thresholds."""
    width = _NEAR_WINDOW
    n_j = centers.shape[1]
    while True:
        ks = np.arange(-width, width + 1, dtype=np.int64)
        pts = (centers.T[:, None, :] + ks[None, :, None]).reshape(n_j * ks.size, -1)
        pts = np.clip(pts, lo_, hi_)
        step = max(
            1, (1 << 22) // max(1, pts.shape[1] * n_j)
        )  # bound the [rows, lanes, L] temporaries
        bad = np.concatenate(
            [
                exact(pts[i : i + step]) != torch_fn(to_x(pts[i : i + step]))
                for i in range(0, pts.shape[0], step)
            ]
        )
        total = _distinct_bad(pts, bad)
        edges = np.concatenate([np.arange(n_j) * ks.size, np.arange(n_j) * ks.size + ks.size - 1])
        edge_bad = bad[edges] & (pts[edges] > lo_) & (pts[edges] < hi_)
        if not edge_bad.any() or width >= _MAX_WINDOW:
            return int(total)
        width *= 8


def _count_level_ties_int(
    p: Pending,
    th: bs.LevelThresholds,
    alpha: Any,
    bias: Any,
    lo: Any,
    hi: Any,
    lanes: int,
    layer: nn.Module,
    levels_of: Any = None,
) -> int:
    """Reachable integers where PyTorch's float32 levels differ from the exact rule (like
    :func:`_count_ties`, around every one of the ``2^M - 1`` thresholds)."""
    lo_ = np.asarray(lo, np.int64)
    hi_ = np.asarray(hi, np.int64)
    centers = np.clip(th.thr.astype(np.int64), lo_[:, None], hi_[:, None])
    fn = _torch_level_fn(p, alpha, bias, layer, levels_of)
    return _window_ties(centers, lo_, hi_, th.levels, fn, lambda k: k.astype(np.float32))


def _count_level_ties_float(
    p: Pending, th: bs.Thresholds, n_l: int, layer: nn.Module, levels_of: Any = None
) -> int:
    """Float32 first-layer outputs next to a level threshold where PyTorch's float32 BN and
    quantizer give another level than the exact thresholds."""
    c = p.channels
    key_max = bs._F32_MAX_KEY
    keys = th.thr.astype(np.float32).view(np.int32).astype(np.int64)
    keys = np.where(keys < 0, -(keys & 0x7FFFFFFF), keys).reshape(c, n_l)
    lo_ = np.full(c, -key_max, np.int64)
    hi_ = np.full(c, key_max, np.int64)

    def to_x(k: np.ndarray) -> np.ndarray:
        return bs.f32_from_keys(k)

    thr = th.thr.astype(np.float64).reshape(c, n_l)
    up = th.direction.reshape(c, n_l) > 0

    def exact(k: np.ndarray) -> np.ndarray:
        y = to_x(k).astype(np.float64)[:, :, None]
        passed = np.where(up, y >= thr, y <= thr)  # th.apply per (channel, boundary) lane
        return 2 * passed.sum(-1) - n_l

    fn = _torch_level_fn(p, None, None, layer, levels_of)
    return _window_ties(np.clip(keys, lo_[:, None], hi_[:, None]), lo_, hi_, exact, fn, to_x)


def _torch_decisions(
    p: Pending,
    xs: np.ndarray,
    alpha: Any,
    bias: Any,
    bn: nn.Module | None,
    per_feature: bool,
    shift: np.ndarray | None = None,
) -> np.ndarray:
    """PyTorch's float32 ``sign(BN(relu(x*alpha + b)) [- beta]) >= 0`` on ``xs [K, lanes]``
    (BN module order; ``beta`` the consumer's RSign shift)."""
    with torch.no_grad():
        y = torch.from_numpy(np.ascontiguousarray(xs, np.float32))
        if p.is_int:
            y = y * torch.from_numpy(np.asarray(alpha, np.float32))
            if bias is not None and np.any(bias != 0):
                y = y + torch.from_numpy(np.asarray(bias, np.float32))
        if p.relu:
            y = torch.relu(y)
        if bn is not None:
            was = bn.training
            bn.eval()
            if isinstance(bn, nn.BatchNorm2d):
                y = bn(y[:, :, None, None])[:, :, 0, 0]
            else:
                y = bn(y)
            bn.train(was)
        if shift is not None:
            y = y - torch.from_numpy(np.asarray(shift, np.float32))
        return (y >= 0).numpy()


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
    bad = [
        op
        for op in graph.ops
        if op.attrs.get("source") in binarized
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


def _float_pending(
    cv: _Converter, value: str, producer: str, chw: tuple[int, int, int] | None
) -> Pending:
    v = cv.b.values[value]
    return Pending(value, producer, False, v.shape[-1], chw)


def _materialize(cv: _Converter, p: Pending, where: str) -> Pending:
    """``p`` as a float32 value (XNOR-Net style float chain: ``alpha x + b``, ReLU, pools, BN
    affine): the residual stream as published, for adds, average pools, concatenations and
    values with several consumers."""
    if p.flatten is not None:
        raise unsupported(
            where, "flattened value", "a flattened value can only feed one linear layer"
        )
    x, _ = cv._float_chain(p)
    return _float_pending(cv, x, p.producer, cv._pooled_chw(p))


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
            chws = {q.chw for q in ins}
            if st.kind == "add":
                if len(chws) != 1:
                    raise ValueError(
                        f"add {st.name!r}: its inputs have different shapes {sorted(chws, key=str)}"
                    )
                x = _add_op(cv, "add_f32", [q.value for q in ins], st.name)
                state[st.node] = _float_pending(cv, x, st.name, ins[0].chw)
            else:
                if any(q.chw is None for q in ins) or len({q.chw[1:] for q in ins if q.chw}) != 1:
                    raise unsupported(
                        st.name,
                        "torch.cat",
                        "only feature maps of one spatial size can be concatenated",
                    )
                x = _add_op(cv, "concat", [q.value for q in ins], st.name)
                ch = sum(q.channels for q in ins)
                first_chw = ins[0].chw
                assert first_chw is not None
                state[st.node] = _float_pending(cv, x, st.name, (ch, first_chw[1], first_chw[2]))
            continue
        p = take(st.inputs[0], st.name)
        if st.kind in ("avgpool", "gap"):
            if p.chw is None or p.flatten is not None:
                raise unsupported(st.name, what, "average pooling needs a spatial (conv) input")
            q = (
                _materialize(cv, p, st.name)
                if (p.is_int or p.relu or p.pools or p.bn is not None)
                else p
            )
            if st.kind == "avgpool":
                x = cv.b.add(
                    "avgpool_f32", q.value, name=st.name, attrs={**st.attrs, "source": st.name}
                )
            else:
                x = cv.b.add("global_avgpool_f32", q.value, name=st.name, attrs={"source": st.name})
            vi = cv.b.values[x]
            state[st.node] = _float_pending(cv, x, st.name, (vi.shape[2], vi.shape[0], vi.shape[1]))
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
            vi = cv.b.values[x]
            p = replace(p, value=x, chw=(vi.shape[2], vi.shape[0], vi.shape[1]))
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
            vi = cv.b.values[x]
            p = _float_pending(cv, x, st.name, (vi.shape[2], vi.shape[0], vi.shape[1]))
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
            act = _unsigned_act(st.module)
            if _real_input(st.module):
                p = cv.real_binary_conv(st, p)
            elif act is not None:
                val, _ = cv.to_u8_levels(p, st, act)
                p = cv.u8_layer(st, val, None, act)
            else:
                bits, _ = cv.to_bits(p, st.name, _rsign_shift(st.module))
                p = cv.binary_conv(st, bits)
            if st.kind == "xnorpp":
                p.pos_scale = _xnorpp_scale(st.module)
        elif st.kind == "mcnconv":  # an MCConv2d lower_mcn kept (W1/A8, full M): convert._mcn
            p = mcn_conv(cv, p, st)
        elif st.kind == "blinear":
            if p.chw is not None and p.flatten is None:
                raise unsupported(st.name, what, "flatten the conv output before a linear layer")
            act = _unsigned_act(st.module)
            if _real_input(st.module):
                p = cv.real_binary_linear(st, p)
            elif act is not None:
                val, chw = cv.to_u8_levels(p, st, act)
                p = cv.u8_layer(st, val, chw, act)
            else:
                bits, chw = cv.to_bits(p, st.name, _rsign_shift(st.module))
                p = cv.binary_linear(st, bits, chw)
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
            q = (
                _materialize(cv, p, st.name)
                if (p.is_int or p.relu or p.pools or p.bn is not None)
                else p
            )
            p = cv.first_layer(st, q.value)
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
    return g


def _fixed_point_bn(cv: _Converter, p: Pending, st: Step) -> Pending:
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


def _stream_clamp(cv: _Converter, p: Pending, st: Step, uses: dict[str, int]) -> Pending:
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


def _stream_add(cv: _Converter, ins: list[Pending], name: str) -> Pending:
    """A residual add on the fixed-point stream: an exact ``add_i32`` of values on one grid."""
    fr = {q.stream for q in ins}
    if None in fr or len(fr) != 1:
        raise unsupported(
            name,
            "add",
            "a fixed-point stream value can only be added to values on the same grid "
            "(the outputs of FixedPointBN / StreamClamp with one frac)",
        )
    if len({q.chw for q in ins}) != 1:
        raise ValueError(
            f"add {name!r}: its inputs have different shapes {sorted({q.chw for q in ins}, key=str)}"
        )
    x = _add_op(cv, "add_i32", [q.value for q in ins], name)
    assert all(q.lo is not None and q.hi is not None for q in ins)
    lo = np.sum([np.asarray(q.lo) for q in ins], axis=0)
    hi = np.sum([np.asarray(q.hi) for q in ins], axis=0)
    return replace(ins[0], value=x, producer=name, lo=lo, hi=hi, pools=[])


def _add_op(cv: _Converter, type_: str, inputs: list[str], name: str) -> str:
    """A multi-input op (``add_f32``, ``concat``)."""
    opname = cv.b._unique(name)
    op = Op(type_, opname, list(inputs), [opname], {"source": name}, {})
    cv.b.values[opname] = infer(op, [cv.b.values[v] for v in inputs], cv.b.tensors)
    cv.b.ops.append(op)
    return opname


def _xnorpp_scale(m: nn.Module | None) -> np.ndarray:
    """XNOR-Net++'s ``Gamma = alpha (x) beta (x) gamma`` as PyTorch's forward rounds it, [Ho, Wo, O]."""
    assert isinstance(m, XnorPPConv2d)
    with torch.no_grad():
        g = m.scale_c.view(1, -1, 1, 1) * m.scale_h.view(1, 1, -1, 1) * m.scale_w.view(1, 1, 1, -1)
    out = g[0].permute(1, 2, 0).to(torch.float32).numpy().copy()
    if not np.all(np.isfinite(out)):
        raise ValueError("XNOR-Net++ scale contains NaN or infinity")
    return out


def _unsigned_act(m: nn.Module | None) -> tuple[int, Fraction] | None:
    """``(k, c)`` of a DoReFa / PACT k-bit unsigned input quantizer (levels ``q c / (2^k - 1)``,
    ``c = 1`` for DoReFa and PACT's float32 clipping level ``alpha``), else None."""
    iq = getattr(m, "input_quantizer", None)
    if isinstance(iq, DoReFaAct):
        return int(iq.k), Fraction(1)
    if isinstance(iq, PactAct):
        with torch.no_grad():
            a = float(iq.alpha.detach().abs().clamp_min(1e-3).to(torch.float32))
        return int(iq.k), Fraction(a)
    return None


def _real_input(m: nn.Module | None) -> bool:
    """A binary layer without an input quantizer: real-valued activations (BinaryConnect, BWN)."""
    return getattr(m, "input_quantizer", "absent") is None


def _rprelu(cv: _Converter, p: Pending, st: Step) -> Pending:
    """ReActNet's RPReLU -> ``rprelu_f32`` on the float32 value (the float residual stream, or
    a binary layer's output taken through its float chain)."""
    m = st.module
    assert isinstance(m, RPReLU)
    if p.stream is not None:
        raise unsupported(
            st.name,
            "RPReLU",
            "RPReLU on the fixed-point residual stream needs an integer RPReLU op (rprelu_i32, "
            "not in the engine yet); use the float residual stream (residual=float)",
        )
    if p.flatten is not None:
        raise unsupported(st.name, "RPReLU", "RPReLU after a flatten")
    if m.gamma.numel() != p.channels:
        raise ValueError(
            f"RPReLU {st.name!r} has {m.gamma.numel()} channels, its input has {p.channels}"
        )
    q = _materialize(cv, p, st.name) if (p.is_int or p.relu or p.pools or p.bn is not None) else p
    params = {"gamma": _f32(m.gamma), "slope": _f32(m.slope), "zeta": _f32(m.zeta)}
    x = cv.b.add("rprelu_f32", q.value, name=st.name, params=params, attrs={"source": st.name})
    return _float_pending(cv, x, st.name, q.chw)


def _rsign_shift(m: nn.Module | None) -> np.ndarray | None:
    """The float32 ``beta`` of a binary layer's ReActNet RSign input quantizer, else None."""
    iq = getattr(m, "input_quantizer", None)
    return _f32(iq.beta) if isinstance(iq, RSign) else None


def _reads_output(steps: list[Step], node: str) -> bool:
    return any(st.kind == "output" and st.inputs == [node] for st in steps)


def _float_between_binary(cv: _Converter) -> bool:
    from ..ir.graph import BINARY_OPS

    if any(op.type in ("conv2d_f32b1", "dense_f32b1") for op in cv.b.ops):
        return True  # binarized layers with real-valued activations (BinaryConnect, BWN)
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

"""Lowering rules of MBBN layers (``MBitConv2d`` / ``MBitLinear``, MBBN Eq. 7-9): the
``M``-bit input as bit planes (``threshold_planes`` / ``threshold_f32_planes``) and the
``K``-plane binary ops ``bconv2d_planes`` / ``bdense_planes``."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
from torch import nn

from ..ir.bits import pack_bits
from ..nn.mbbn import MBitConv2d, MBitLinear
from . import batchshift as bs
from ._core import Pending, _bn_params, _conv_attrs, _conv_bias, _f32
from ._materialize import _Materialize
from ._mbbn import quantizer_boundaries, weight_levels, weight_planes
from ._ties import _count_level_ties_float
from ._trace import Step, unsupported


class _MBBNRules(_Materialize):
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
        th, ties = self._int_levels(p, boundaries, m)
        x, chw = self._threshold_op(
            p, "threshold_planes", "threshold", th.thr, th.direction, ties, {"planes": bits_a}
        )
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
        x, chw = self._threshold_op(
            p, "threshold_f32_planes", "threshold", thr, direction, ties, {"planes": bits_a}
        )
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
        attrs = _conv_attrs(step.name, m, pad_value=pad, **self._mbit_attrs(step, enc))
        if k == 1 and vin.planes == 1:
            out = self.b.add("bconv2d", value, name=step.name, attrs=attrs, params={"w": packed[0]})
        else:
            out = self.b.add(
                "bconv2d_planes", value, name=step.name, attrs=attrs, params={"w": packed}
            )
        return self._accumulator(out, step.name, scale, _conv_bias(m), lo, hi)

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
        return self._accumulator(out, step.name, scale, bias, lo, hi)

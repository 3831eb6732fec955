"""Lowering rules of the survey's methods: DoReFa / PACT k-bit unsigned activations
(``threshold_u8`` -> ``conv2d_u8b1`` / ``dense_u8b1``), BinaryConnect / BWN real-valued
activations (``conv2d_f32b1`` / ``dense_f32b1``), ReActNet's RSign and RPReLU, XNOR-Net++'s
per-position scale."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from ..ir.bits import pack_bits
from ..nn.survey import DoReFaAct, PactAct, RPReLU, RSign, XnorPPConv2d
from . import batchshift as bs
from ._core import Pending, _conv_attrs, _f32, _nhwc_columns
from ._materialize import _as_float, _float_pending, _Materialize
from ._ties import _count_level_ties_float
from ._trace import Step, unsupported


class _SurveyRules(_Materialize):
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
        layer = step.module
        assert layer is not None

        def torch_q(y: torch.Tensor) -> torch.Tensor:  # PyTorch's own levels, as 2q - L
            a = layer.input_quantizer(y)  # type: ignore[operator]
            return 2 * torch.round(a * n_l / float(c)).to(torch.int64) - n_l

        if p.is_int:
            th, ties = self._int_levels(p, boundaries, layer, torch_q)
            thr, direction, kind = th.thr, th.direction, "threshold_u8"
        else:
            *_, bnp, lanes = self._lane_arrays(p)
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
        return self._threshold_op(p, kind, "levels", thr, direction, ties, {"levels": n_l})

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
            attrs = _conv_attrs(step.name, m, input_levels=n_l)
            w = pack_bits(b.transpose(0, 2, 3, 1) < 0)
            out = self.b.add("conv2d_u8b1", value, name=step.name, attrs=attrs, params={"w": w})
        else:
            if b.shape[1] != vin.shape[0]:
                raise ValueError(
                    f"layer {step.name!r} expects {b.shape[1]} features, gets {vin.shape[0]}"
                )
            if chw is not None:  # PyTorch's NCHW flatten order -> the engine's NHWC order
                b = _nhwc_columns(b, chw)
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
        n = int(b[0].size) * n_l
        o = b.shape[0]
        return self._accumulator(out, step.name, scale, bias, np.full(o, -n), np.full(o, n))

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
        q = _as_float(self, p, step.name)
        vin = self.b.values[q.value]
        if m.in_channels != vin.shape[-1]:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_channels} channels, gets {vin.shape[-1]}"
            )
        w = pack_bits(b.transpose(0, 2, 3, 1) < 0)
        out = self.b.add(
            "conv2d_f32b1",
            q.value,
            name=step.name,
            attrs=_conv_attrs(step.name, m),
            params={"w": w},
        )
        out = self._alpha_bias(out, m, alpha, step.name)
        return Pending(out, step.name, False, m.out_channels, self._chw(out))

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
            b = _nhwc_columns(b, chw)
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


def _rprelu(cv: _Materialize, p: Pending, st: Step) -> Pending:
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
    q = _as_float(cv, p, st.name)
    params = {"gamma": _f32(m.gamma), "slope": _f32(m.slope), "zeta": _f32(m.zeta)}
    x = cv.b.add("rprelu_f32", q.value, name=st.name, params=params, attrs={"source": st.name})
    return _float_pending(cv, x, st.name, q.chw)


def _rsign_shift(m: nn.Module | None) -> np.ndarray | None:
    """The float32 ``beta`` of a binary layer's ReActNet RSign input quantizer, else None."""
    iq = getattr(m, "input_quantizer", None)
    return _f32(iq.beta) if isinstance(iq, RSign) else None

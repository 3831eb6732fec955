"""Lowering rules of the survey's methods: DoReFa / PACT k-bit unsigned activations
(``threshold_u8`` -> ``conv2d_u8b1`` / ``dense_u8b1``), BinaryConnect / BWN real-valued
activations (``conv2d_f32b1`` / ``dense_f32b1``), ReActNet's RSign and RPReLU, XNOR-Net++'s
per-position scale, ABC-Net's weighted binary branches (``abc_conv``)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from ..ir.bits import pack_bits
from ..ir.reference import gamma32
from ..nn.survey import AbcConv2d, DoReFaAct, PactAct, RPReLU, RSign, XnorPPConv2d
from . import batchshift as bs
from ._core import Pending, _conv_attrs, _conv_bias, _f32, _nhwc_columns
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

    # ----------------------------------------------------------------- ABC-Net branches
    def abc_conv(self, step: Step, p: Pending) -> Pending:
        """ABC-Net (:class:`~bitflow.nn.survey.AbcConv2d`): ``y = sum_{m,n} a_m b_n
        conv(A_n, B_m) + bias``.

        - Activation bases: ``A_n = sign(fl(fl(x + v_n) - 0.5))`` on PyTorch's float32 ``x``
          (the BatchNorm'ed input) is ``x >= t_n`` exactly, ``t_n`` the smallest float32 with
          ``fl(t_n + v_n) >= 0.5`` (:func:`abc_boundaries`): N exact BatchShift thresholds with
          the boundary ``t_n`` (the RSign rule), one ``threshold_bits`` (``threshold_f32_bits``
          after a float producer) per base.
        - M x N ``bconv2d``, one per (m, n) (attribute ``abc_base = n``; the M packed weight bases
          are stored once and shared by the N convolutions of each), zero padding as
          ``F.conv2d`` pads ``sum_n b_n A_n``: every branch's padded taps add 0.
        - The weighted sum. Fixed point (``a_m 2^fa``, ``b_n 2^fb`` integers, e.g. trained with
          ``frac_bits``) and small enough that PyTorch's own float32 convolution of the dyadic
          ``sum b_n A_n`` and ``sum a_m B_m`` is exact (every partial sum an integer multiple of
          ``2^-(fa+fb)`` below ``2^24`` of them): ``requant_i32`` (``c_mn = a_m b_n 2^(fa+fb)``)
          + ``add_i32``, an int32 accumulator with ``alpha = 2^-(fa+fb)``, then exact BatchShift
          thresholds as for any binary conv. Otherwise float32: ``scale_bias`` (``fl(a_m b_n)``,
          the bias in the first branch) + ``add_f32``; the decisions after it are near-threshold
          ones within ``torch_err_bound`` (attribute of the sum: PyTorch's own error, see
          :func:`abc_torch_err_bound`) plus the engine's own rounding."""
        m = step.module
        assert isinstance(m, AbcConv2d)
        self._check_conv(step.name, m)
        if p.flatten is not None or p.chw is None:
            raise unsupported(
                step.name, "AbcConv2d", "an ABC-Net convolution needs a spatial input"
            )
        if m.in_channels != p.channels:
            raise ValueError(
                f"layer {step.name!r} expects {m.in_channels} channels, gets {p.channels}"
            )
        with torch.no_grad():
            bases, a_t = m.weight_bases()
            b_t = m.act_scales().detach()
            v_t = m.shift_a.detach()
        bw = bases.detach().numpy()  # [M, O, C, kh, kw]
        if not np.all(np.abs(bw) == 1):
            raise ValueError(f"layer {step.name!r}: ABC-Net weight bases are not all +-1")
        a = a_t.detach().to(torch.float32).numpy().astype(np.float32)
        b = b_t.to(torch.float32).numpy().astype(np.float32)
        v = v_t.to(torch.float32).numpy().astype(np.float32)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(np.isfinite(v))):
            raise ValueError(f"layer {step.name!r}: ABC-Net scales or shifts contain NaN or inf")
        lanes = p.channels
        bits = [
            self.to_bits(p, step.name, np.full(lanes, t, np.float32))[0] for t in abc_boundaries(v)
        ]
        o, kk = m.out_channels, m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        attrs = _conv_attrs(step.name, m, pad_value=0)
        d: dict[tuple[int, int], str] = {}
        for i in range(bw.shape[0]):
            w = pack_bits(bw[i].transpose(0, 2, 3, 1) < 0)
            first = f"{step.name}.w{i}a0"
            for n, x in enumerate(bits):
                d[i, n] = self.b.add(
                    "bconv2d",
                    x,
                    name=f"{step.name}.w{i}a{n}",
                    attrs={**attrs, "abc_base": n},
                    params={"w": w} if n == 0 else None,
                    shared=None if n == 0 else {"w": f"{first}.w"},
                )
        bias = _conv_bias(m)
        fixed = abc_fixed_point(a, b, kk)
        tag = {"source": step.name, "abc_sum": f"{len(a)}x{len(b)}"}
        if fixed is not None:
            c, k = fixed
            terms = [
                self.b.add(
                    "requant_i32",
                    d[i, n],
                    name=f"{step.name}.c{i}{n}",
                    attrs={"shift": 0, **tag},
                    params={"m": np.full(o, c[i, n], np.int64), "b": np.zeros(o, np.int64)},
                )
                for (i, n) in d
            ]
            out = (
                terms[0]
                if len(terms) == 1
                else self.b.add("add_i32", terms, name=step.name, attrs=tag)
            )
            reach = kk * int(np.abs(c).sum())
            return self._accumulator(
                out,
                step.name,
                np.full(o, 2.0**-k, np.float32),
                bias,
                np.full(o, -reach),
                np.full(o, reach),
            )
        terms = []
        for j, (i, n) in enumerate(d):
            cw = np.float32(np.float64(a[i]) * np.float64(b[n]))
            terms.append(
                self.b.add(
                    "scale_bias",
                    d[i, n],
                    name=f"{step.name}.s{i}{n}",
                    attrs=tag,
                    params={
                        "scale": np.full(o, cw, np.float32),
                        "bias": bias if j == 0 else np.zeros(o, np.float32),
                    },
                )
            )
        err = abc_torch_err_bound(a, b, kk, bias)
        sattrs = {**tag, "torch_err_bound": [float(e) for e in err]}
        if len(terms) == 1:  # M = N = 1: the one scale_bias carries the bound
            op = self.b.ops[-1]
            op.attrs.update(sattrs)
            out = terms[0]
        else:
            out = self.b.add("add_f32", terms, name=step.name, attrs=sattrs)
        v_ = self.b.values[out]
        return Pending(out, step.name, False, o, (o, v_.shape[0], v_.shape[1]))

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


def abc_boundaries(shift: np.ndarray) -> np.ndarray:
    """ABC-Net's activation bases as exact thresholds: for every float32 shift ``v``, the
    smallest float32 ``t`` with ``fl(fl(t + v) - 0.5) >= 0`` (``AbcConv2d.act_bases``:
    ``sign(z - 0.5)``, ``z = x + v``, both float32 operations, ``sign(0) = +1``). A float32
    difference is ``>= 0`` exactly when ``z >= 0.5``, and ``fl(x + v)`` is monotone in ``x``, so
    PyTorch's base is ``+1`` exactly when ``x >= t``; ``t`` by bisection over the ordered float32
    keys (33 steps, every shift at once)."""
    v = np.asarray(shift, np.float32)
    if not np.all(np.isfinite(v)):
        raise ValueError("ABC-Net shifts must be finite")
    half = np.float32(0.5)

    def ok(keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (bs.f32_from_keys(keys) + v) - half >= 0

    lo = np.full(v.shape, -bs._F32_MAX_KEY, np.int64)  # fl(-max + v) - 0.5 < 0 for finite v
    hi = np.full(v.shape, bs._F32_MAX_KEY, np.int64)
    if np.any(ok(lo)) or not np.all(ok(hi)):  # pragma: no cover - impossible for finite v
        raise ValueError("ABC-Net shift out of range")
    while np.any(hi - lo > 1):  # invariant: ok(hi), not ok(lo)
        mid = (lo + hi) // 2
        good = ok(mid)
        hi = np.where(good, mid, hi)
        lo = np.where(good, lo, mid)
    return bs.f32_from_keys(hi)


def _dyadic_exponent(x: np.ndarray, max_exp: int = 30) -> int | None:
    """The smallest ``f <= max_exp`` with every ``x 2^f`` an integer (None if there is none)."""
    x64 = np.asarray(x, np.float64)
    for f in range(max_exp + 1):
        y = x64 * 2.0**f
        if np.all(y == np.round(y)):
            return f
    return None


def abc_fixed_point(a: np.ndarray, b: np.ndarray, fan_in: int) -> tuple[np.ndarray, int] | None:
    """``(c, k)`` with integer branch weights ``c[m, n] = a_m b_n 2^k`` when ABC-Net's sum is
    exact in integers *and* PyTorch's float32 convolution computes it exactly, else None.

    ``a_m 2^fa`` and ``b_n 2^fb`` integers, ``k = fa + fb``. PyTorch convolves
    ``sum_n b_n A_n`` (integers times ``2^-fb``, at most ``sum |b| 2^fb`` of them) with
    ``sum_m a_m B_m``: every product and partial sum is an integer multiple of ``2^-k`` of
    magnitude at most ``fan_in (sum |a| 2^fa) (sum |b| 2^fb) < 2^24``, exact in float32 in any
    order; then the int32 accumulator ``sum c d`` (``|d| <= fan_in``) fits too."""
    fa, fb = _dyadic_exponent(a), _dyadic_exponent(b)
    if fa is None or fb is None:
        return None
    ai = np.round(np.asarray(a, np.float64) * 2.0**fa).astype(np.int64)
    bi = np.round(np.asarray(b, np.float64) * 2.0**fb).astype(np.int64)
    if fan_in * int(np.abs(ai).sum()) * int(np.abs(bi).sum()) >= 2**24:
        return None
    return ai[:, None] * bi[None, :], fa + fb


def abc_torch_err_bound(a: np.ndarray, b: np.ndarray, fan_in: int, bias: np.ndarray) -> np.ndarray:
    """Per output channel, a bound on ``|PyTorch's float32 y - exact y|`` of an ABC-Net layer
    (``exact = sum a_m b_n d_mn + bias`` with the float32 ``a``, ``b``; Higham's bound):
    ``w = fl(sum_m a_m B_m)`` and ``x = fl(sum_n b_n A_n)`` are within ``gamma_{M-1} sum|a|`` and
    ``gamma_{N-1} sum|b|`` of exact, the convolution adds ``gamma_K sum |w||x|`` over ``K``
    taps and the bias one rounding, so with ``S = K sum|a| sum|b|`` (``|d| <= K``)
    ``|err| <= gamma_{K + M + N + 2} (S + |bias|)`` (first order; ``gamma`` absorbs the rest)."""
    s = (
        fan_in
        * float(np.abs(np.asarray(a, np.float64)).sum())
        * float(np.abs(np.asarray(b, np.float64)).sum())
    )
    g = gamma32(fan_in + len(a) + len(b) + 2)
    return g * (s + np.abs(np.asarray(bias, np.float64)))

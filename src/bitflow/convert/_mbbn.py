"""What the converter reads from MBBN layers (``bitflow.nn.mbbn``): exact quantizer boundaries,
integer weight levels and PyTorch's own levels (for the tie report and :func:`verify`).

Activation quantizer of an ``M``-bit layer (MBBN Eq. 7, 9, 21; Table II). Both trainable
quantizers compute ``h = clip(u)`` (HTanh to ``[-t, t]``, HReLU to ``[0, t]``; ``t = 1`` for
:class:`~bitflow.nn.mbbn.MBitEncoder`, the learned range for
:class:`~bitflow.nn.mbbn.OddLinearQuantizer`), ``y = A h / t`` with ``A = 2^M - 1``, and the odd
level ``v = clamp(2 floor(y / 2) + 1, -A, A)``. With ``q = (v + A) / 2`` this is
``q = #{j : y >= 2j}`` over ``j = -(2^(M-1) - 1) .. 2^(M-1) - 1`` (the ``2^M - 1`` even points
strictly inside ``(-A, A)``). Since ``|2j t / A| < t`` the clip never moves ``u`` across such a
point, so in real arithmetic ``y >= 2j  <=>  u >= b_j = 2 j t / A``, and for HReLU every
``j <= 0`` is always passed (``h >= 0``). The rational ``b_j`` (from the float32 ``t`` the
layer uses) are cross-checked against the quantizer's own float64 ``boundaries()``.

PyTorch does not compute in real arithmetic: on its float32 input ``u`` it forms
``y = fl(A h)`` (encoder) or ``fl(fl(A h) / t)`` (odd linear), so its level changes at a float32
``b'_j`` that can be one float32 below (or above) ``b_j``. Example (``M = 4``, ``t = 1``,
``j = -3``): ``fl32(-0.4) = -0.4000000059604645 < -6/15``, but ``15 fl32(-0.4) = -6.0000000894``
is within half an ulp (2.4e-7) of -6, so ``fl(15 fl32(-0.4)) = -6`` and PyTorch puts
``fl32(-0.4)`` in the upper level. Likewise ``M = 1``: ``u = -2^-149`` gives ``u / 2 = -0``
(underflow) and level +1. The converter therefore finds ``b'_j`` = the smallest float32 ``u``
for which the quantizer itself (``decompose``, float32) passes step ``j``, by evaluating it on
the float32 neighbours of ``b_j`` (the level is monotone in ``u``; the window widens until its
ends straddle the step). The exact BatchNorm value ``u`` (a real number) decides the level that
PyTorch's quantizer gives its correctly rounded float32 value ``rn(u)``: ``rn(u) >= b'_j`` iff
``u`` is at or above the midpoint ``(pred(b'_j) + b'_j) / 2`` (ties to even: inclusive when
``b'_j`` has an even significand, strict when odd). These
:class:`~bitflow.convert.batchshift.Boundary` steps are handed to
:func:`~bitflow.convert.batchshift.level_int_thresholds`. What remains between the integer
model and PyTorch is PyTorch's own BatchNorm rounding (not always correctly rounded): the
converter's ``ties``.

A 1-bit ``{-1,+1}`` input quantizer (``ste_sign`` and friends) is the case ``M = 1``, one
boundary ``0`` (``sign(0) = +1``, BitFlow-Net Eq. 2).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from ..nn import quantizers as Q
from ..nn.mbbn import (
    MBitConv2d,
    MBitEncoder,
    MBitLinear,
    MultiBitInputQuantizer,
    OddLinearQuantizer,
    encode,
)
from ..nn.mcn import UInt8Act
from ._trace import unsupported
from .batchshift import Boundary, f32_from_keys, f32_keys

_MAX_STEP_WINDOW = 1 << 20  # float32 neighbours searched on each side of a real boundary


def _float32_step(iq: MultiBitInputQuantizer, where: str, level: int, b: Fraction) -> Boundary:
    """The exact real-line form of step ``level`` (``q >= level + 1``) of PyTorch's float32
    quantizer near the real boundary ``b`` (module docstring)."""
    a = (1 << int(iq.bits)) - 1
    centre = int(f32_keys(np.array([float(b)], np.float32))[0])
    width = 8
    while True:
        keys = np.arange(centre - width, centre + width + 1, dtype=np.int64)
        u = f32_from_keys(keys)
        with torch.no_grad():
            v, _ = iq.decompose(torch.from_numpy(np.ascontiguousarray(u)))
        q = np.rint((v.detach().to(torch.float64).numpy() + a) / 2).astype(np.int64)
        if np.any(np.diff(q) < 0):
            raise ValueError(
                f"layer {where!r}: the input quantizer's level is not monotone in float32 near "
                f"{float(b)}"
            )
        passed = q >= level + 1
        if not passed[0] and passed[-1]:
            k = int(keys[int(np.argmax(passed))])
            break
        if width >= _MAX_STEP_WINDOW:
            raise ValueError(
                f"layer {where!r}: the input quantizer's float32 step {level} is not within "
                f"{_MAX_STEP_WINDOW} float32 values of its boundary {float(b)}"
            )
        width *= 8
    hi, lo = (float(x) for x in f32_from_keys(np.array([k, k - 1], np.int64)))
    mid = (Fraction(lo) + Fraction(hi)) / 2
    odd = bool(int(np.array(hi, np.float32).view(np.uint32)) & 1)
    return Boundary(mid, strict=odd)


def quantizer_boundaries(where: str, layer: nn.Module) -> tuple[int, list[Boundary | None]]:
    """``(M, boundaries)`` of ``layer.input_quantizer``: ``2^M - 1`` ascending exact steps
    (``None`` = ``-inf``, always passed): the level PyTorch's float32 quantizer gives the
    correctly rounded float32 value of a real input (module docstring). Raises
    :class:`UnsupportedLayerError` for quantizers whose level is not such a step function."""
    iq = getattr(layer, "input_quantizer", None)
    what = type(layer).__name__
    if type(iq) in (MBitEncoder, OddLinearQuantizer):
        assert isinstance(iq, MultiBitInputQuantizer)
        m = int(iq.bits)
        a = (1 << m) - 1
        with torch.no_grad():
            t32 = float(iq.clip_range().detach().to(torch.float32))
        if not (math.isfinite(t32) and t32 > 0):
            raise ValueError(
                f"layer {where!r}: quantizer range t must be finite and > 0, got {t32}"
            )
        t = Fraction(t32)
        half = 1 << (m - 1)
        out: list[Fraction | None] = []
        for j in range(-(half - 1), half):
            out.append(None if (iq.activation == "hrelu" and j <= 0) else Fraction(2 * j) * t / a)
        own = iq.boundaries().detach().to(torch.float64).numpy()
        mine = np.array([-math.inf if b is None else float(b) for b in out])
        if own.shape != mine.shape or not np.allclose(own, mine, rtol=1e-12, atol=0.0):
            raise ValueError(
                f"layer {where!r}: the quantizer's boundaries() {own.tolist()} differ from the odd-level "
                f"ladder 2jt/A = {mine.tolist()} that the converter implements"
            )
        return m, [
            None if b is None else _float32_step(iq, where, level, b) for level, b in enumerate(out)
        ]
    if isinstance(iq, MultiBitInputQuantizer):
        raise unsupported(
            where,
            what,
            f"input quantizer {type(iq).__name__} (only mbit_encoder and odd_linear convert)",
        )
    if isinstance(iq, Q.InputQuantizer) and int(getattr(iq, "bits", 1)) == 1:
        return 1, [Boundary(Fraction(0))]
    raise unsupported(
        where,
        what,
        f"its input_quantizer must be an M-bit MBBN quantizer or a 1-bit sign quantizer "
        f"(got {type(iq).__name__})",
    )


def torch_levels(layer: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """PyTorch's own integer levels of ``layer.input_quantizer`` on ``u`` (int64; +-1 for 1 bit)."""
    iq = layer.input_quantizer
    assert isinstance(iq, nn.Module)
    with torch.no_grad():
        if isinstance(iq, UInt8Act):  # MCN W1/A8 codes q as the 8-bit odd level 2q - 255
            return (2 * iq.codes(u) - 255).round().to(torch.int64)
        if isinstance(iq, MultiBitInputQuantizer):
            v, _ = iq.decompose(u)
            return v.round().to(torch.int64)
        return torch.where(iq(u) < 0, -1, 1).to(torch.int64)


def weight_levels(where: str, layer: nn.Module) -> tuple[np.ndarray, int, np.ndarray]:
    """``(levels, K, scale)``: the layer's integer weight levels (int64, odd, ``|v| <= 2^K - 1``;
    +-1 for ``K = 1``), ``K`` and the per-output-channel float32 ``scale_x * scale_w`` that
    multiplies the integer accumulator (``layer.output_scale()``; ones when there is none)."""
    assert isinstance(layer, (MBitConv2d, MBitLinear))
    k = int(layer.bits_w)
    with torch.no_grad():
        vw, _ = layer.quantized_weight()
        s = layer.output_scale()
    v = vw.detach().to(torch.float64).numpy()
    b = (1 << k) - 1
    if not np.all(np.isfinite(v)) or not np.array_equal(v, np.round(v)):
        raise ValueError(f"layer {where!r}: quantized weight levels are not integers")
    vi = v.astype(np.int64)
    if np.any(vi % 2 != 1) or np.any(np.abs(vi) > b):
        raise ValueError(
            f"layer {where!r}: weight levels must be odd integers in [-{b}, {b}] for {k}-bit weights"
        )
    o = vi.shape[0]
    scale = (
        np.ones(o, np.float32)
        if s is None
        else s.detach().to(torch.float32).numpy().astype(np.float32).reshape(-1)
    )
    if scale.shape != (o,):
        raise ValueError(f"layer {where!r}: output scale has shape {scale.shape}, expected ({o},)")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(
            f"layer {where!r}: the output scale scale_x * scale_w must be finite and > 0"
        )
    return vi, k, scale


def weight_planes(levels: np.ndarray, k: int) -> np.ndarray:
    """``{-1,+1}`` planes ``[K, *levels.shape]`` (Eq. 7, engine convention) as int8."""
    return np.asarray(encode(levels, k), np.int8)


__all__ = ["quantizer_boundaries", "torch_levels", "weight_levels", "weight_planes"]

"""What the converter reads from MBBN layers (``bitflow.nn.mbbn``): exact quantizer boundaries,
integer weight levels and PyTorch's own levels (for the tie report and :func:`verify`).

Activation quantizer of an ``M``-bit layer (MBBN Eq. 7, 9, 21; Table II). Both trainable
quantizers compute ``h = clip(u)`` (HTanh to ``[-t, t]``, HReLU to ``[0, t]``; ``t = 1`` for
:class:`~bitflow.nn.mbbn.MBitEncoder`, the learned range for
:class:`~bitflow.nn.mbbn.OddLinearQuantizer`), ``y = A h / t`` with ``A = 2^M - 1``, and the odd
level ``v = clamp(2 floor(y / 2) + 1, -A, A)``. With ``q = (v + A) / 2`` this is
``q = #{j : y >= 2j}`` over ``j = -(2^(M-1) - 1) .. 2^(M-1) - 1`` (the ``2^M - 1`` even points
strictly inside ``(-A, A)``). Since ``|2j t / A| < t`` the clip never moves ``u`` across such a
point, so ``y >= 2j  <=>  u >= b_j = 2 j t / A`` exactly, and for HReLU every ``j <= 0`` is
always passed (``h >= 0``). These rational ``b_j`` (from the float32 ``t`` the layer uses) are
the boundaries handed to :func:`~bitflow.convert.batchshift.level_int_thresholds`; they are
cross-checked against the quantizer's own float64 ``boundaries()``.

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


def quantizer_boundaries(where: str, layer: nn.Module) -> tuple[int, list[Fraction | None]]:
    """``(M, boundaries)`` of ``layer.input_quantizer``: ``2^M - 1`` ascending exact rationals
    (``None`` = ``-inf``, always passed). Raises :class:`UnsupportedLayerError` for quantizers
    whose level is not such a step function."""
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
        return m, out
    if isinstance(iq, MultiBitInputQuantizer):
        raise unsupported(
            where,
            what,
            f"input quantizer {type(iq).__name__} (only mbit_encoder and odd_linear convert)",
        )
    if isinstance(iq, Q.InputQuantizer) and int(getattr(iq, "bits", 1)) == 1:
        return 1, [Fraction(0)]
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

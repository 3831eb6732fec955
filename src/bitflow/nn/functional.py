"""Straight-through estimators (STEs) as ``torch.autograd.Function``s.

Every function documents its forward rule, its gradient rule and the paper equation.
Sign convention everywhere: ``sign(0) = +1`` (BitFlow-Net Eq. 2), so the binary value of an
input ``x`` is ``-1 if x < 0 else +1`` (NaN maps to +1, like the engine's bit packing,
where a bit is 1 iff the value is < 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _native


def sign(x: Tensor) -> Tensor:
    """Deterministic sign with ``sign(0) = +1`` (BitFlow-Net Eq. 2); no gradient.

    Written as ``1 - 2 [x < 0]`` so that NaN and -0.0 give +1, exactly as the engine packs it
    (``torch.where`` on a bool mask is several times slower on the CPU, and this runs on every
    activation of every training step)."""
    return 1.0 - 2.0 * (x < 0).to(x.dtype)


#: Tensors with at least this many elements take the native one-pass STE kernels (below it the
#: call costs more than the passes it saves); tests set it to 0 to exercise them on small shapes.
NATIVE_MIN_NUMEL = 1 << 14

_NATIVE_VIEW = {torch.float32: torch.float32, torch.bfloat16: torch.int16, torch.uint8: torch.uint8}


def _flat(t: Tensor) -> np.ndarray | None:
    """``t``'s elements in memory order as a 1-D array sharing its memory (bfloat16 as its int16
    bit patterns), when the native STE kernels can take it: a dense CPU tensor (contiguous or
    channels_last) of float32 / bfloat16 / uint8 with at least ``NATIVE_MIN_NUMEL`` elements;
    else None (the PyTorch expression runs; always under ``torch.compile``, which fuses it)."""
    if (
        torch.compiler.is_compiling()
        or t.device.type != "cpu"
        or t.dtype not in _NATIVE_VIEW
        or t.numel() < max(NATIVE_MIN_NUMEL, 1)
        or not (
            t.is_contiguous()
            or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
        )
    ):
        return None
    return _mem(t)


def _mem(t: Tensor) -> np.ndarray:
    """The 1-D memory-order view of a dense tensor (``_flat`` without the checks)."""
    return t.detach().as_strided((t.numel(),), (1,)).view(_NATIVE_VIEW[t.dtype]).numpy()


def _native_sign(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(sign(x), 1[|x| <= 1] as uint8)`` in one native pass, both with ``x``'s strides; None
    when ``x`` is not for the native kernels (``_flat``)."""
    xf = _flat(x)
    if xf is None:
        return None
    q, mask = torch.empty_like(x), torch.empty_like(x, dtype=torch.uint8)
    _native.ste_sign(xf, _mem(q), _mem(mask), torch.get_num_threads())
    return q, mask


class SignSTE(torch.autograd.Function):
    """BNN sign with the clipped straight-through estimator.

    forward:  ``q = sign(x)``  (Eq. 2, sign(0)=+1)
    backward: ``dL/dx = dL/dq * 1[|x| <= 1]``  (the hardtanh gate; survey Eq. 5, Hubara et al.)

    Dense float32 / bfloat16 CPU tensors take one native pass each way (``_native.ste_sign``
    writes ``q`` and the gate as one byte per element, which is all the backward keeps;
    ``_native.ste_gate`` multiplies): the same values as the PyTorch expressions, element by
    element, in a quarter of the memory passes. The STEs were a third of a binary training step;
    a bfloat16 step of the VGG-small chain is ~1.3x faster, of ResNet-20 ~1.4x.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        fast = _native_sign(x)
        ctx.gate = fast is not None
        if fast is not None:
            ctx.save_for_backward(fast[1])  # the gate: one byte per element
            return fast[0]
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (saved,) = ctx.saved_tensors
        if ctx.gate:  # the native forward kept the gate
            gf = _flat(grad) if grad.stride() == saved.stride() else None
            if gf is not None:
                out = torch.empty_like(grad)
                _native.ste_gate(gf, _mem(saved), _mem(out), torch.get_num_threads())
                return out
            return grad * saved.to(grad.dtype)
        return grad * (saved.abs() <= 1).to(grad.dtype)


class IdentitySTE(torch.autograd.Function):
    """Sign forward, identity backward: ``q = sign(x)``, ``dL/dx = dL/dq`` (BinaryConnect)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class ApproxSignSTE(torch.autograd.Function):
    """Bi-Real Net's piecewise-polynomial approximation of sign (survey, Bi-Real Net).

    forward:  ``q = sign(x)``
    backward: ``dL/dx = dL/dq * (2 - 2|x|) * 1[|x| <= 1]`` (derivative of the quadratic
    approximation ``2x + x^2 sgn(-x)`` on [-1, 1], zero outside).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        fast = _native_sign(x)
        return fast[0] if fast is not None else sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        f32 = x.dtype == torch.float32 and grad.dtype == torch.float32
        xf = _flat(x) if f32 and grad.stride() == x.stride() else None
        gf = _flat(grad) if xf is not None else None
        if xf is not None and gf is not None:  # one native pass, the same float32 values
            out = torch.empty_like(grad)
            _native.approx_sign_grad(xf, gf, _mem(out), torch.get_num_threads())
            return out
        # (2 - 2|x|)^+ in one temporary, updated in place (five passes over memory become four)
        return x.abs().mul_(-2.0).add_(2.0).clamp_min_(0.0).mul_(grad)


class XnorScale(torch.autograd.Function):
    """Channel-wise scaling factor ``alpha_o = (1/n) sum_i |W_{o,i}|`` (XNOR-Net, BitFlow-Net Eq. 3).

    forward:  ``alpha`` of shape ``[O]`` (one per output channel, ``n`` = elements per channel)
    backward: ``dL/dW_{o,i} = dL/dalpha_o * sign(W_{o,i}) / n`` with ``sign(0) = +1``.

    Together with the sign STE this is exactly BitFlow-Net Eq. 8 for ``W~ = alpha * sign(W)``
    (Eq. 7): ``dL/dW_i = dL/dW~_i * alpha + sign(W_i) * (1/n) * sum_j dL/dW~_j * sign(W_j)``,
    because ``dL/dalpha = sum_j dL/dW~_j * sign(W_j)``. (Autograd of ``W.abs().mean()`` would
    give the same except at ``W_i = 0``, where torch uses ``sgn(0) = 0`` and the paper ``+1``.)
    """

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return w.abs().flatten(1).mean(dim=1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        n = w[0].numel()
        shape = (-1,) + (1,) * (w.dim() - 1)
        return grad.view(shape) * sign(w) / n


def ste_sign(x: Tensor) -> Tensor:
    """``SignSTE.apply(x)``: sign forward, clipped identity backward."""
    return SignSTE.apply(x)  # type: ignore[no-any-return]


def identity_ste(x: Tensor) -> Tensor:
    """``IdentitySTE.apply(x)``: sign forward, identity backward."""
    return IdentitySTE.apply(x)  # type: ignore[no-any-return]


def approx_sign(x: Tensor) -> Tensor:
    """``ApproxSignSTE.apply(x)``: sign forward, Bi-Real piecewise-polynomial backward."""
    return ApproxSignSTE.apply(x)  # type: ignore[no-any-return]


def xnor_scale(w: Tensor) -> Tensor:
    """``XnorScale.apply(w)``: per-output-channel mean |W| with the Eq. 8 gradient."""
    return XnorScale.apply(w)  # type: ignore[no-any-return]

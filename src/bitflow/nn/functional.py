"""Straight-through estimators (STEs) as ``torch.autograd.Function``s.

Every function documents its forward rule, its gradient rule and the paper equation.
Sign convention everywhere: ``sign(0) = +1`` (BitFlow-Net Eq. 2), so the binary value of an
input ``x`` is ``-1 if x < 0 else +1`` (NaN maps to +1, like the engine's bit packing,
where a bit is 1 iff the value is < 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def sign(x: Tensor) -> Tensor:
    """Deterministic sign with ``sign(0) = +1`` (BitFlow-Net Eq. 2); no gradient.

    Written as ``1 - 2 [x < 0]`` so that NaN and -0.0 give +1, exactly as the engine packs it
    (``torch.where`` on a bool mask is several times slower on the CPU, and this runs on every
    activation of every training step)."""
    return 1.0 - 2.0 * (x < 0).to(x.dtype)


class SignSTE(torch.autograd.Function):
    """BNN sign with the clipped straight-through estimator.

    forward:  ``q = sign(x)``  (Eq. 2, sign(0)=+1)
    backward: ``dL/dx = dL/dq * 1[|x| <= 1]``  (the hardtanh gate; survey Eq. 5, Hubara et al.)
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


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
        return sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
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

"""Quantizers: small ``nn.Module``s registered by name.

Activation (input) quantizers map a real tensor to ``{-1, +1}`` values:

- ``"ste_sign"``: sign forward (Eq. 2, sign(0)=+1), clipped STE backward (BNN; survey Eq. 5)
- ``"identity_ste"``: sign forward, gradient passes unchanged
- ``"approx_sign"``: sign forward, Bi-Real Net's polynomial gradient

Weight quantizers map latent float weights ``W`` (shape ``[O, ...]``) to binary weights and an
optional per-output-channel scale:

- ``"sign"``: ``W_b = sign(W)`` (BNN), no scale
- ``"xnor"``: ``W~ = alpha * sign(W)``, ``alpha_o = mean |W_o|`` (XNOR-Net; BitFlow-Net Eq. 3, 7),
  gradient exactly Eq. 8 (identity STE on the sign part, the true mean-|W| term on alpha).

``get(x)`` accepts ``None``, a registered name, a quantizer class or an instance.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .._registry import Registry
from . import functional as F_

_REGISTRY: Registry[type[nn.Module]] = Registry("quantizer")


class InputQuantizer(nn.Module):
    """Base class of activation quantizers producing ``{-1, +1}`` (``bits = 1``)."""

    name: str = ""
    bits: int = 1


class WeightQuantizer(nn.Module):
    """Base class of weight quantizers.

    ``decompose(w)`` returns ``(b, alpha)`` with ``b`` in ``{-1, +1}`` (differentiable through
    an STE) and ``alpha`` of shape ``[O]`` or ``None``; ``forward(w) = alpha * b`` (or ``b``).
    Binary layers use ``decompose`` so that the convolution of ``+-1`` data stays an exact
    integer in float32 and ``alpha`` multiplies once afterwards (the arithmetic the integer
    engine reproduces).
    """

    name: str = ""
    bits: int = 1
    has_scale: bool = False

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        raise TypeError(f"{type(self).__name__} must implement decompose()")

    def forward(self, w: Tensor) -> Tensor:
        b, alpha = self.decompose(w)
        if alpha is None:
            return b
        return b * alpha.view((-1,) + (1,) * (w.dim() - 1))


def register(name: str) -> Any:
    """Class decorator: register a quantizer under ``name`` (sets ``cls.name``)."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        cls.name = name  # type: ignore[attr-defined]
        return _REGISTRY.register(name)(cls)

    return deco


@register("ste_sign")
class SteSign(InputQuantizer):
    """``q = sign(x)`` (sign(0)=+1); ``dq/dx = 1[|x| <= 1]`` (clipped STE)."""

    def forward(self, x: Tensor) -> Tensor:
        return F_.ste_sign(x)


@register("identity_ste")
class IdentitySte(InputQuantizer):
    """``q = sign(x)``; ``dq/dx = 1`` (gradient passes unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return F_.identity_ste(x)


@register("approx_sign")
class ApproxSign(InputQuantizer):
    """``q = sign(x)``; ``dq/dx = (2 - 2|x|) 1[|x| <= 1]`` (Bi-Real Net)."""

    def forward(self, x: Tensor) -> Tensor:
        return F_.approx_sign(x)


@register("sign")
class SignWeight(WeightQuantizer):
    """BNN weights: ``W_b = sign(W)``, identity STE, no scaling factor."""

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return F_.identity_ste(w), None


@register("xnor")
class XnorWeight(WeightQuantizer):
    """XNOR-Net weights ``W~ = alpha * sign(W)``, ``alpha_o = (1/n) sum |W_{o,i}|`` (Eq. 3, 7).

    Gradient (Eq. 8): ``dL/dW_i = alpha dL/dW~_i + sign(W_i) (1/n) sum_j dL/dW~_j sign(W_j)``.
    """

    has_scale = True

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return F_.identity_ste(w), F_.xnor_scale(w)


def get(x: None | str | type[nn.Module] | nn.Module) -> nn.Module | None:
    """Resolve a quantizer: ``None`` -> ``None``, a name or class -> a new instance, an
    instance -> itself. Unknown names raise ``KeyError`` listing the valid names."""
    if x is None or isinstance(x, nn.Module):
        return x
    if isinstance(x, str):
        return _REGISTRY.get(x)()
    if isinstance(x, type) and issubclass(x, nn.Module):
        return x()
    raise TypeError(
        f"a quantizer must be None, a name, a class or an nn.Module, not {type(x).__name__}"
    )


def list_quantizers() -> list[str]:
    """Names of all registered quantizers."""
    return _REGISTRY.names()


__all__ = [
    "ApproxSign",
    "IdentitySte",
    "InputQuantizer",
    "SignWeight",
    "SteSign",
    "WeightQuantizer",
    "XnorWeight",
    "get",
    "list_quantizers",
    "register",
]

"""Lower MCN layers (:class:`~bitflow.nn.mcn.MCConv2d`) to layers the converter already handles.

- The first layer (``replicate_input``, real input): the convolution of the ``K``-times replicated
  input with ``W`` is the convolution of the input with ``W`` summed over the replicas, the very
  float32 weight :meth:`MCConv2d.forward` uses -> ``nn.Conv2d`` (a float first layer).
- MCN-XNOR with MCN-1 modulation and symmetric centers (``BN -> sign -> MCconv``): output
  channel ``(h, k)`` is ``a * mean(M_k)`` times the binary response ``sign(x) (*) s_h``, which the
  layer computes as an exact integer convolution followed by one float32 multiplication ->
  a :class:`~bitflow.nn.BinaryConv2d` with weights ``s_h`` (replicated over ``k``) and per-channel
  ``alpha = a * mean(M_k)`` (> 0), the same float32 tensor: the BatchShift thresholds that follow
  are exact, exactly as for any binary conv.

Not lowered (a clear :class:`UnsupportedLayerError`): full M with binary inputs (``W`` is not a
per-channel multiple of +-1 weights), real activations after the first layer (W1/A32, needs a
+-1-weight convolution over real inputs), and non-symmetric or ``U > 2`` centers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..nn import BinaryConv2d
from ..nn import quantizers as Q
from ..nn.functional import sign
from ..nn.mcn import MCConv2d
from ._trace import unsupported


class FixedScaleSign(Q.WeightQuantizer):
    """``decompose(w) = (sign(w), alpha)`` with a fixed per-channel ``alpha`` (the lowered MCN-1
    modulation ``a * mean(M_k)``); inference only."""

    alpha: Tensor
    name = "mcn_fixed_scale"
    has_scale = True

    def __init__(self, alpha: Tensor) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha.detach().clone())

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return sign(w), self.alpha


def _binary_conv(layer: MCConv2d) -> BinaryConv2d:
    """The lowered MCN-1 binary MCconv: a plain :class:`BinaryConv2d` with ``+-1`` weights ``s_h``
    replicated over the ``K`` planes and ``alpha = a * mean(M_k)``."""
    conv = BinaryConv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        bias=False,
        input_quantizer=copy.deepcopy(layer.input_quantizer),
        weight_quantizer=FixedScaleSign(layer.plane_scale()),
        weight_clip=None,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.sign_filters().detach().repeat_interleave(layer.planes, dim=0))
    return conv


def _first_conv(layer: MCConv2d) -> nn.Conv2d:
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        bias=False,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.conv_weight().detach())
    return conv


def _lower(name: str, layer: MCConv2d) -> nn.Module:
    why = ""
    if not layer.binary:
        why = "U-MCN (unbinarized filters) is a float model; it is not deployed"
    elif not (layer.symmetric and layer.num_centers == 2):
        why = "only symmetric two-center (a1 = -a2) filters are 1-bit; train with symmetric=True"
    elif layer.replicate_input and layer.input_quantizer is None:
        return _first_conv(layer)
    elif layer.input_quantizer is None:
        why = (
            "real activations after the first layer (MCN as published, W1/A32) need a +-1-weight "
            "convolution over real inputs, which the engine does not have yet"
        )
    elif layer.variant != "mcn1":
        why = (
            "full M-Filters with binary inputs (MCN-XNOR) weight every tap differently, so the output "
            "is not a per-channel multiple of a binary convolution; use MCN-1 modulation (mcn1_xnor_*)"
        )
    else:
        return _binary_conv(layer)
    raise unsupported(name, "MCConv2d", why)


def has_mcn(model: nn.Module) -> bool:
    return any(isinstance(m, MCConv2d) for m in model.modules())


def lower_mcn(model: nn.Module) -> nn.Module:
    """``model`` itself if it has no MCconv layers, else a copy (in eval mode) with each
    :class:`MCConv2d` replaced by its lowered equivalent under the same qualified name."""
    if not has_mcn(model):
        return model
    out = copy.deepcopy(model)
    out.eval()
    for name, m in list(out.named_modules()):
        if isinstance(m, MCConv2d):
            parent: Any = out
            *path, leaf = name.split(".")
            for p in path:
                parent = getattr(parent, p)
            setattr(parent, leaf, _lower(name, m))
    return out


__all__ = ["FixedScaleSign", "has_mcn", "lower_mcn"]

"""Binary layers: drop-in subclasses of ``nn.Conv2d`` / ``nn.Linear``.

``BinaryConv2d(in, out, k, stride, padding, ..., input_quantizer="ste_sign",
weight_quantizer="xnor", pad_value=0, weight_clip=1.0)`` computes (BitFlow-Net Eq. 4-5)

    Y = (sign(X) (*) sign(W)) * alpha

with ``(*)`` the cross-correlation of ``+-1`` tensors, which float32 computes exactly (every
partial sum is an integer below 2^24), and one multiplication by the per-channel ``alpha`` of
the weight quantizer afterwards (Eq. 5). This is the arithmetic the integer engine reproduces.

Padding: ``pad_value=0`` pads the *binarized* input with 0 (what a float model does; the
engine corrects for it exactly), ``pad_value=1`` pads with +1 (needs no correction).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import quantizers as Q

QuantizerSpec = None | str | type[nn.Module] | nn.Module


def _check_pad_value(pad_value: float) -> float:
    if pad_value not in (0, 1):
        raise ValueError(f"pad_value must be 0 or 1 (+1), got {pad_value!r}")
    return float(pad_value)


class _BinaryMixin:
    input_quantizer: nn.Module | None
    weight_quantizer: nn.Module | None
    weight: Tensor
    weight_clip: float | None

    def _init_quantizers(
        self,
        input_quantizer: QuantizerSpec,
        weight_quantizer: QuantizerSpec,
        weight_clip: float | None,
    ) -> None:
        iq = Q.get(input_quantizer)
        if isinstance(iq, Q.WeightQuantizer):
            # A weight quantizer reduces over dim 0 (the output channels of a weight); applied
            # to activations it would scale by a per-*sample* mean and not produce +-1 values.
            raise ValueError(
                f"input_quantizer {getattr(iq, 'name', '') or type(iq).__name__!r} is a weight "
                "quantizer; use an activation quantizer such as 'ste_sign', 'identity_ste' or "
                "'approx_sign'"
            )
        self.input_quantizer = iq
        self.weight_quantizer = Q.get(weight_quantizer)
        if weight_clip is not None and weight_clip <= 0:
            raise ValueError(f"weight_clip must be positive or None, got {weight_clip}")
        self.weight_clip = weight_clip

    #: Real-valued warm-up (Bi-Real Sec. 3.3): while ``True`` the layer computes its real-valued
    #: twin, ``conv(clip(x, -1, 1), W)`` with the latent weights ``W`` and no scale, instead of
    #: ``conv(sign x, sign W) * alpha``. Set for a whole model by :func:`set_real_mode` (the
    #: trainer does it for a recipe's ``real_epochs``); never set in a model that is converted.
    real: bool = False

    def _quantize_input(self, x: Tensor) -> Tensor:
        if self.real:
            return x.clamp(-1.0, 1.0)
        return self.input_quantizer(x) if self.input_quantizer is not None else x

    def quantized_weight(self) -> tuple[Tensor, Tensor | None]:
        """``(b, alpha)``: binary weights (STE) and per-output-channel scale or ``None``
        (in the real-valued warm-up, :attr:`real`: the latent weights and ``None``)."""
        wq = self.weight_quantizer
        if wq is None or self.real:
            return self.weight, None
        if isinstance(wq, Q.WeightQuantizer):
            return wq.decompose(self.weight)
        return wq(self.weight), None

    @torch.no_grad()
    def clip_weights_(self) -> None:
        """Clamp the latent float weights to ``[-weight_clip, weight_clip]`` (BNN practice)."""
        if self.weight_clip is not None:
            self.weight.clamp_(-self.weight_clip, self.weight_clip)


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """Binarized 2-D convolution (BitFlow-Net Eq. 4-5). See the module docstring."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        input_quantizer: QuantizerSpec = "ste_sign",
        weight_quantizer: QuantizerSpec = "xnor",
        pad_value: float = 0,
        weight_clip: float | None = 1.0,
    ) -> None:
        if padding_mode != "zeros":
            raise ValueError("BinaryConv2d supports padding_mode='zeros' only (see pad_value)")
        if isinstance(padding, str):
            raise ValueError("BinaryConv2d needs explicit integer padding, not a string")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            "zeros",
            device,
            dtype,
        )
        self.pad_value = _check_pad_value(pad_value)
        self._init_quantizers(input_quantizer, weight_quantizer, weight_clip)

    def forward(self, x: Tensor) -> Tensor:
        xq = self._quantize_input(x)
        b, alpha = self.quantized_weight()
        padding = self.padding  # a tuple: the constructor refuses string padding
        if self.pad_value != 0 and not isinstance(padding, str) and any(p > 0 for p in padding):
            ph, pw = padding
            xq = F.pad(xq, (pw, pw, ph, ph), value=self.pad_value)
            padding = (0, 0)
        y = F.conv2d(xq, b, None, self.stride, padding, self.dilation, self.groups)
        if alpha is not None:
            y = y * alpha.view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        iq = getattr(self.input_quantizer, "name", self.input_quantizer)
        wq = getattr(self.weight_quantizer, "name", self.weight_quantizer)
        return f"{super().extra_repr()}, input_quantizer={iq}, weight_quantizer={wq}, pad_value={self.pad_value:g}"


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Binarized fully connected layer: ``y = (sign(x) @ sign(W)^T) * alpha (+ bias)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        input_quantizer: QuantizerSpec = "ste_sign",
        weight_quantizer: QuantizerSpec = "xnor",
        weight_clip: float | None = 1.0,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_quantizers(input_quantizer, weight_quantizer, weight_clip)

    def forward(self, x: Tensor) -> Tensor:
        xq = self._quantize_input(x)
        b, alpha = self.quantized_weight()
        y = F.linear(xq, b)
        if alpha is not None:
            y = y * alpha
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        iq = getattr(self.input_quantizer, "name", self.input_quantizer)
        wq = getattr(self.weight_quantizer, "name", self.weight_quantizer)
        return f"{super().extra_repr()}, input_quantizer={iq}, weight_quantizer={wq}"


class _RoundSTE(torch.autograd.Function):
    """``round`` forward, identity backward (fake quantization)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class Int8Conv2d(nn.Conv2d):
    """Fixed-point first layer: uint8 pixels times int8 weights, trained fake-quantized.

    Input ``x`` in ``[0, 1]`` is ``pixel / 255``; the layer recovers ``p = round(255 x)`` in
    ``0..255``. Weights are quantized per output channel, symmetric:
    ``s_o = max_i |W_{o,i}| / 127``, ``q = clamp(round(W / s_o), -127, 127)`` (STE on round).
    Output ``y = (p (*) q) * (s_o / 255) + bias``: the convolution of integers is exact in
    float32 while ``255 * 127 * fan_in < 2^24`` (fan_in <= 518), so the integer engine, which
    computes ``p (*) q`` in int32, sees exactly the same integer and the threshold that follows
    can be evaluated on it without any float rounding.
    """

    def __init__(self, *args: Any, integer_output: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError("Int8Conv2d supports zero padding only")
        # integer_output: return the integer accumulator p (*) q itself (no s_o / 255, no bias);
        # for a following FixedPointBN, whose batch statistics absorb the per-channel scale
        self.integer_output = bool(integer_output)
        if self.integer_output and self.bias is not None:
            raise ValueError("Int8Conv2d(integer_output=True) has no bias (pass bias=False)")
        fan_in = self.weight[0].numel()
        if 255 * 127 * fan_in >= 2**24:
            raise ValueError(
                f"Int8Conv2d fan-in {fan_in} too large for exact float32 accumulation (max 518)"
            )

    def weight_scale(self) -> Tensor:
        """Per-output-channel scale ``s_o = max |W_o| / 127`` (never 0)."""
        return (self.weight.detach().abs().flatten(1).amax(dim=1) / 127.0).clamp_min(1e-12)

    def quantized_weight(self) -> tuple[Tensor, Tensor]:
        """``(q, s)``: integer-valued weights in ``[-127, 127]`` (STE) and scales ``s``."""
        s = self.weight_scale()
        q = _RoundSTE.apply(self.weight / s.view(-1, 1, 1, 1)).clamp(-127, 127)
        return q, s

    def forward(self, x: Tensor) -> Tensor:
        p = torch.round(x.detach() * 255.0).clamp(0, 255) + (x - x.detach()) * 255.0
        q, s = self.quantized_weight()
        y = F.conv2d(p, q, None, self.stride, self.padding, self.dilation, self.groups)
        if self.integer_output:
            return y
        y = y * (s / 255.0).view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class Scale(nn.Module):
    """Learned scalar scale ``y = s * x`` after a binarized last layer (BitFlow-Net III.B, [38])."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def clip_weights_(model: nn.Module) -> None:
    """Clamp the latent weights of every binary layer that has ``weight_clip`` set."""
    for m in model.modules():
        if isinstance(m, _BinaryMixin):
            m.clip_weights_()


def set_real_mode(model: nn.Module, real: bool) -> int:
    """Switch every ``BinaryConv2d`` / ``BinaryLinear`` of ``model`` to its real-valued twin
    (``real=True``: ``clip(x, -1, 1)`` for ``sign x``, latent ``W`` for ``alpha sign W``) or back
    to binary; returns the number of layers switched.

    This is Bi-Real-Net's pre-training (Liu et al. 2018, Sec. 3.3: train the real-valued network
    with the ``clip(-1, x, 1)`` nonlinearity, then binarize and fine-tune) inside one run and one
    set of parameters: a model in real mode computes exactly what its full-precision twin
    (e.g. ``resnet20 --model-arg activation=htanh``) computes with the same state dict. Only
    the binary layers change; every other module (stems, BatchNorms, shortcuts) is shared.

    A fixed-point stream's :class:`~bitflow.nn.FixedPointBN` evaluates in its float form in real
    mode (``exact = not real``): its exact int64 form rounds the accumulators to integers first,
    which only binary layers produce (a real-valued convolution's outputs are O(1): rounding them
    cost the warm-up model of ``bireal_resnet20 residual=int`` 2.2 points of validation accuracy,
    88.8 against 91.0 %, and made it a weaker distillation teacher)."""
    from .fixedpoint import FixedPointBN

    n = 0
    for m in model.modules():
        if isinstance(m, _BinaryMixin):
            m.real = bool(real)
            n += 1
        elif isinstance(m, FixedPointBN):
            m.exact = not real
    return n


def binary_layers(model: nn.Module) -> dict[str, BinaryConv2d | BinaryLinear]:
    """``{qualified name: layer}`` for every ``BinaryConv2d`` / ``BinaryLinear`` in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (BinaryConv2d, BinaryLinear))}


__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "Int8Conv2d",
    "Scale",
    "binary_layers",
    "clip_weights_",
    "set_real_mode",
]

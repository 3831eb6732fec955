"""MBBN layers: :class:`MBitConv2d` / :class:`MBitLinear` (exact integer products of levels,
rescaled once, Eq. 9)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import quantizers as Q
from ..layers import BinaryConv2d, BinaryLinear, QuantizerSpec, _BinaryMixin
from .packed import accumulator_bound
from .quantizers import MultiBitInputQuantizer, _planes_of_levels, make_quantizers

# ============================================================================ layers


class _MBitMixin(_BinaryMixin):
    """Shared arithmetic of :class:`MBitConv2d` and :class:`MBitLinear`."""

    training: bool  # from nn.Module, which every user of the mixin also subclasses

    def _setup(self) -> None:
        init = getattr(self.weight_quantizer, "init_latent_", None)
        if callable(init):
            init(self.weight)
        if self.accumulator_bound() >= 2**53:
            raise ValueError(
                f"fan-in {self.fan_in} with {self.bits_a}-bit activations and {self.bits_w}-bit weights "
                f"gives |acc| up to {self.accumulator_bound()}, beyond exact float64 (2^53)"
            )

    @property
    def fan_in(self) -> int:
        return int(self.weight[0].numel())

    @property
    def bits_a(self) -> int:
        """``M``: planes of the input activations (1 for a ``{-1,+1}`` quantizer)."""
        return int(getattr(self.input_quantizer, "bits", 1))

    @property
    def bits_w(self) -> int:
        """``K``: planes of the weights."""
        return int(getattr(self.weight_quantizer, "bits", 1))

    def accumulator_bound(self) -> int:
        """``fan_in (2^M - 1)(2^K - 1)``: the largest possible ``|levels_x . levels_w|``."""
        return accumulator_bound(self.fan_in, self.bits_a, self.bits_w)

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """float32 when every partial sum is an integer below 2^24 (exact), else float64.

        Except while training with autograd on: then float32 always (an 8-bit x 8-bit layer with
        fan-in 288 reaches 18.7M > 2^24, and float64 convolutions make such training ~3x
        slower); a rounding of the sum in the last of 24 bits does not matter to a gradient
        step. Evaluation (``model.eval()`` or ``torch.no_grad()``) is exact, which is what the
        converted integer model is checked against."""
        if self.accumulator_bound() < 2**24 or (self.training and torch.is_grad_enabled()):
            return torch.float32
        return torch.float64

    def quantized_input(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(levels, scale)`` of the input: odd integer levels and a scalar scale (or None)."""
        iq = self.input_quantizer
        if iq is None:
            return x, None
        dec = getattr(iq, "decompose", None)
        if callable(dec):
            return dec(x)  # type: ignore[no-any-return]
        return iq(x), None

    def output_scale(self) -> Tensor | None:
        """Per-output-channel ``scale_x * scale_w`` ``[O]`` that multiplies the integer result
        (``None``: no scale). The converter must fold this (not only the weight's alpha) into
        the thresholds: for ``odd_linear`` the activation scale ``t / A`` is not 1."""
        iq = self.input_quantizer
        sx = iq.scale() if isinstance(iq, MultiBitInputQuantizer) else None
        with torch.no_grad():
            _, sw = self.quantized_weight()
        s = self._scale(sx, sw)
        return None if s is None else s.detach()

    def _scale(self, sx: Tensor | None, sw: Tensor | None) -> Tensor | None:
        if sx is None:
            return sw
        if sw is None:
            return sx.reshape(1).expand(self.weight.shape[0])
        return sx * sw

    _channel_shape: tuple[int, ...]  # how a per-output-channel [O] tensor broadcasts over y

    def _product(self, xq: Tensor, b: Tensor) -> Tensor:
        """``v_x (*) v_w`` (convolution) or ``v_x @ v_w^T`` in :attr:`accumulate_dtype`."""
        raise NotImplementedError

    def _finish(self, y: Tensor, s: Tensor | None) -> Tensor:
        if s is not None:
            y = y * s.view(self._channel_shape)
        bias = getattr(self, "bias", None)
        if bias is not None:
            y = y + bias.view(self._channel_shape)
        return y

    def forward(self, x: Tensor) -> Tensor:
        vx, sx = self.quantized_input(x)
        vw, sw = self.quantized_weight()
        return self._finish(self._product(vx, vw), self._scale(sx, sw))

    @torch.no_grad()
    def integer_output(self, x: Tensor) -> Tensor:
        """The integer product of the levels as int64: what the engine accumulates (before any
        scale)."""
        vx, _ = self.quantized_input(x)
        vw, _ = self.quantized_weight()
        return self._product(vx, vw).round().to(torch.int64)

    def extra_repr(self) -> str:
        # super(): BinaryConv2d's / BinaryLinear's, next in the MRO of MBitConv2d / MBitLinear
        return f"{super().extra_repr()}, bits_a={self.bits_a}, bits_w={self.bits_w}, accumulate={str(self.accumulate_dtype).replace('torch.', '')}"  # type: ignore[misc]

    def _pad_level(self) -> float:
        """The level of a padded tap with ``pad_value=1``: every plane +1, i.e. ``2^M - 1``."""
        return float((1 << self.bits_a) - 1)


class MBitConv2d(_MBitMixin, BinaryConv2d):  # type: ignore[misc]
    """M-bit activations x K-bit weights 2-D convolution (MBBN Eq. 8-9), a ``BinaryConv2d``.

    ``Y = (v_x (*) v_w) * scale_x * scale_w (+ bias)`` with integer ``v`` from the quantizers'
    ``decompose``; the convolution of integers is exact (see ``accumulate_dtype``). Equals the
    ``M x K`` binary branches ``sum_{m,k} 2^(m+k) (c_m (*) d_k)`` times the scales
    (:meth:`forward_branches`).

    Quantizers: by default built by :func:`make_quantizers` from ``bits_a``, ``bits_w``,
    ``method``, ``activation``; explicit ``input_quantizer`` / ``weight_quantizer`` override.
    ``pad_value=0`` pads the levels with 0 (every plane 0, what a float model does);
    ``pad_value=1`` pads with every plane +1, i.e. the level ``2^M - 1``.
    """

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
        bits_a: int = 2,
        bits_w: int = 2,
        method: str = "encoder",
        activation: str = "htanh",
        gradient: str = "sine",
        per_channel: bool = False,
        input_quantizer: QuantizerSpec = None,
        weight_quantizer: QuantizerSpec = None,
        pad_value: float = 0,
        weight_clip: float | None = 1.0,
    ) -> None:
        iq, wq = _resolve_quantizers(
            bits_a,
            bits_w,
            method,
            activation,
            gradient,
            per_channel,
            input_quantizer,
            weight_quantizer,
        )
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
            input_quantizer=iq,
            weight_quantizer=wq,
            pad_value=pad_value,
            weight_clip=weight_clip,
        )
        self._setup()

    def _pad(self, xq: Tensor) -> tuple[Tensor, Any]:
        if self.pad_value != 0 and any(p > 0 for p in self.padding):  # type: ignore[operator]
            ph, pw = (int(p) for p in self.padding)  # integer padding (checked by BinaryConv2d)
            return F.pad(xq, (pw, pw, ph, ph), value=self._pad_level()), (0, 0)
        return xq, self.padding

    _channel_shape = (1, -1, 1, 1)

    def _product(self, xq: Tensor, b: Tensor) -> Tensor:
        dt = self.accumulate_dtype
        xq, padding = self._pad(xq)
        if xq.dtype != dt:
            return F.conv2d(
                xq.to(dt), b.to(dt), None, self.stride, padding, self.dilation, self.groups
            ).to(xq.dtype)
        return F.conv2d(xq, b.to(dt), None, self.stride, padding, self.dilation, self.groups)

    @torch.no_grad()
    def forward_branches(self, x: Tensor) -> Tensor:
        """The multi-branch binary network: ``sum_{m<M} sum_{k<K} 2^(m+k) conv(c_m, d_k)``
        times the scales (Eq. 8-9, Fig. 1), every branch a ``{-1,+1}`` convolution (zero- or
        +1-padded per plane). Equals :meth:`forward` exactly (Algorithm 2's transformation)."""
        vx, sx = self.quantized_input(x)
        vw, sw = self.quantized_weight()
        cx = _planes_of_levels(vx, self.bits_a)
        dw = _planes_of_levels(vw, self.bits_w)
        acc = torch.zeros((), dtype=torch.float64)
        for m in range(self.bits_a):
            xm, padding = self._pad_plane(cx[m])
            for k in range(self.bits_w):
                br = F.conv2d(xm, dw[k], None, self.stride, padding, self.dilation, self.groups)
                acc = acc + (2.0 ** (m + k)) * br.double()
        return self._finish(acc.to(x.dtype), self._scale(sx, sw))

    def _pad_plane(self, c: Tensor) -> tuple[Tensor, Any]:
        if self.pad_value != 0 and any(p > 0 for p in self.padding):  # type: ignore[operator]
            ph, pw = (int(p) for p in self.padding)  # integer padding (checked by BinaryConv2d)
            return F.pad(c, (pw, pw, ph, ph), value=1.0), (0, 0)
        return c, self.padding


class MBitLinear(_MBitMixin, BinaryLinear):  # type: ignore[misc]
    """M-bit x K-bit fully connected layer: ``y = (v_x @ v_w^T) * scale_x * scale_w (+ bias)``
    (MBBN Eq. 8-9); same quantizer options as :class:`MBitConv2d`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bits_a: int = 2,
        bits_w: int = 2,
        method: str = "encoder",
        activation: str = "htanh",
        gradient: str = "sine",
        per_channel: bool = False,
        input_quantizer: QuantizerSpec = None,
        weight_quantizer: QuantizerSpec = None,
        weight_clip: float | None = 1.0,
    ) -> None:
        iq, wq = _resolve_quantizers(
            bits_a,
            bits_w,
            method,
            activation,
            gradient,
            per_channel,
            input_quantizer,
            weight_quantizer,
        )
        super().__init__(
            in_features,
            out_features,
            bias,
            device,
            dtype,
            input_quantizer=iq,
            weight_quantizer=wq,
            weight_clip=weight_clip,
        )
        self._setup()

    _channel_shape = (-1,)

    def _product(self, xq: Tensor, b: Tensor) -> Tensor:
        dt = self.accumulate_dtype
        if xq.dtype != dt:
            return F.linear(xq.to(dt), b.to(dt)).to(xq.dtype)
        return F.linear(xq, b.to(dt))

    @torch.no_grad()
    def forward_branches(self, x: Tensor) -> Tensor:
        """``sum_{m,k} 2^(m+k) (c_m @ d_k^T)`` times the scales (Eq. 8-9); equals :meth:`forward`."""
        vx, sx = self.quantized_input(x)
        vw, sw = self.quantized_weight()
        cx = _planes_of_levels(vx, self.bits_a)
        dw = _planes_of_levels(vw, self.bits_w)
        acc = torch.zeros((), dtype=torch.float64)
        for m in range(self.bits_a):
            for k in range(self.bits_w):
                acc = acc + (2.0 ** (m + k)) * F.linear(cx[m], dw[k]).double()
        return self._finish(acc.to(x.dtype), self._scale(sx, sw))


def _resolve_quantizers(
    bits_a: int,
    bits_w: int,
    method: str,
    activation: str,
    gradient: str,
    per_channel: bool,
    input_quantizer: QuantizerSpec,
    weight_quantizer: QuantizerSpec,
) -> tuple[nn.Module | None, nn.Module | None]:
    iq_d, wq_d = make_quantizers(
        bits_a,
        bits_w,
        method=method,
        activation=activation,
        gradient=gradient,
        per_channel=per_channel,
    )
    iq = Q.get(input_quantizer) if input_quantizer is not None else iq_d
    wq = Q.get(weight_quantizer) if weight_quantizer is not None else wq_d
    return iq, wq


def mbit_layers(model: nn.Module) -> dict[str, MBitConv2d | MBitLinear]:
    """``{qualified name: layer}`` for every :class:`MBitConv2d` / :class:`MBitLinear`."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (MBitConv2d, MBitLinear))}

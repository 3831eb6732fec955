"""Residual BNNs: Bi-Real-Net (Liu et al., ECCV 2018; survey Sec. 3.2) and full-precision twins.

Bi-Real unit (one per binary 3x3 conv, the "real-valued shortcut around every binary conv")::

    out = BN(BinConv(sign x)) + shortcut(x)

with ``sign`` the ApproxSign activation (forward ``sign``, backward the piecewise-quadratic
derivative ``2 + 2x`` on [-1, 0), ``2 - 2x`` on [0, 1), 0 elsewhere; ``input_quantizer=
"approx_sign"``), XNOR weights with a channel scale alpha, and a real-valued downsample
shortcut ``BN(Conv1x1(AvgPool2d(2)(x)))`` where the stride or the width changes. The stream
``x`` stays real (float32 at inference: graphs of mode ``mixed``), the stem and the classifier
are full precision (``first_layer="int8"``: a fixed-point stem).

- ``bireal_resnet18``: 4 stages x 2 basic blocks x 2 units (16 binary convs), widths ``w, 2w,
  4w, 8w``; ``stem="imagenet"`` (7x7/2 conv + BN + 3x3/2 max-pool, for 224x224) or
  ``"cifar"`` (3x3/1 conv + BN, for 28x28 / 32x32); ``"auto"`` picks by ``image_size``.
- ``bireal_resnet20``: ResNet-20 layout for small images: 3 stages x 3 blocks x 2 units
  (18 binary convs), widths ``w, 2w, 4w`` (``w = 16`` default), cifar stem.
- ``resnet18`` / ``resnet20``: the full-precision twins (the same units with ``nn.Conv2d`` and
  a ReLU-free real stream, so weights map one to one).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..nn import BinaryConv2d
from ._factory import register_model
from .blocks import first_conv


class BiRealUnit(nn.Module):
    """``out = BN(conv(x)) + shortcut(x)``; ``conv`` binary (sign inside) or float (twin)."""

    def __init__(
        self, cin: int, cout: int, stride: int, binary: bool, input_quantizer: str = "approx_sign"
    ) -> None:
        super().__init__()
        if binary:
            self.conv: nn.Module = BinaryConv2d(
                cin,
                cout,
                3,
                stride=stride,
                padding=1,
                bias=False,
                input_quantizer=input_quantizer,
                weight_quantizer="xnor",
            )
        else:
            self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            pool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.shortcut: nn.Module = nn.Sequential(
                pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


class BiRealNet(nn.Module):
    """Stem -> stages of Bi-Real units -> global average pool -> linear (module docstring)."""

    def __init__(
        self,
        *,
        blocks: tuple[int, ...],
        width: int,
        num_classes: int,
        in_channels: int,
        image_size: int,
        stem: str,
        first_layer: str,
        binary: bool,
    ) -> None:
        super().__init__()
        if stem == "auto":
            stem = "imagenet" if image_size >= 112 else "cifar"
        if stem == "imagenet":
            self.stem = nn.Sequential(
                first_conv(in_channels, width, 7, stride=2, padding=3, first_layer=first_layer),
                nn.BatchNorm2d(width),
                nn.MaxPool2d(3, 2, 1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(
                first_conv(in_channels, width, 3, padding=1, first_layer=first_layer),
                nn.BatchNorm2d(width),
            )
        else:
            raise ValueError(f"stem must be 'auto', 'imagenet' or 'cifar', got {stem!r}")
        units: list[nn.Module] = []
        cin = width
        for s, n in enumerate(blocks):
            cout = width * 2**s
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                units += [BiRealUnit(cin, cout, stride, binary), BiRealUnit(cout, cout, 1, binary)]
                cin = cout
        self.units = nn.Sequential(*units)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.inference = "bitflow"

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.units(self.stem(x)))


def _make(blocks: tuple[int, ...], binary: bool, default_width: int, **kw: Any) -> nn.Module:
    opts = {
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 28,
        "width": default_width,
        "stem": "auto",
        "first_layer": "float",
    }
    unknown = set(kw) - set(opts)
    if unknown:
        raise TypeError(f"unexpected options {sorted(unknown)}; valid: {sorted(opts)}")
    opts.update(kw)
    if int(opts["width"]) < 1 or int(opts["num_classes"]) < 1:  # type: ignore[call-overload]
        raise ValueError("width and num_classes must be >= 1")
    if not binary and opts["first_layer"] != "float":
        raise ValueError("the full-precision twins take first_layer='float' only")
    return BiRealNet(blocks=blocks, binary=binary, **opts)  # type: ignore[arg-type]


@register_model("bireal_resnet18")
def bireal_resnet18(**kw: Any) -> nn.Module:
    """Bi-Real-Net 18 (16 binary 3x3 convs, each with its own shortcut); width 64 default."""
    return _make((2, 2, 2, 2), True, 64, **kw)


@register_model("bireal_resnet20")
def bireal_resnet20(**kw: Any) -> nn.Module:
    """Bi-Real ResNet-20 for 28x28 / 32x32 inputs (18 binary 3x3 convs); width 16 default."""
    return _make((3, 3, 3), True, 16, **kw)


@register_model("resnet18")
def resnet18(**kw: Any) -> nn.Module:
    """Full-precision twin of ``bireal_resnet18``."""
    return _make((2, 2, 2, 2), False, 64, **kw)


@register_model("resnet20")
def resnet20(**kw: Any) -> nn.Module:
    """Full-precision twin of ``bireal_resnet20``."""
    return _make((3, 3, 3), False, 16, **kw)


__all__ = ["BiRealNet", "BiRealUnit", "bireal_resnet18", "bireal_resnet20", "resnet18", "resnet20"]

"""MBBN models: multi-bit activations and weights on ``{-1, +1}`` planes (MBBN paper, Sec. V.A).

- ``mbbn_vgg_small``: the plan and widths of ``bitflow_vgg_small`` (:func:`~bitflow.models.zoo.
  vgg_small_plan`), a flat ``nn.Sequential`` in the block order ``BN -> quantizer -> MBitConv
  -> ReLU? -> pool?``; the first layer (``"float"`` or ``"int8"``) and the classifier are full
  precision. Binary layers: 4 convolutions + 1 fully connected = 5.
- ``mbbn_resnet18``: ResNet-18 (4 stages x 2 basic blocks, widths ``w, 2w, 4w, 8w``) whose 16
  3x3 convolutions are ``MBitConv2d`` (``BN -> quantizer -> conv`` inside each block), with
  full-precision shortcuts (identity, or 1x1 stride-s conv + BN where the shape changes) and
  full-precision adds, a full-precision stem and classifier. ``stem="imagenet"``: 7x7/2 conv +
  3x3/2 max-pool; ``"cifar"``: 3x3/1 conv, no pool (for 28x28 or 32x32 inputs);
  ``"auto"`` picks ``"imagenet"`` for ``image_size >= 112``.

Common options: ``bits_a`` (M, activation planes) and ``bits_w`` (K, weight planes), each an
int or a per-binary-layer list (mixed precision, Table IV; for the ResNet also a list of 4, one
per stage), ``activation`` (``"htanh"`` | ``"hrelu"``, Table I), ``method`` (``"encoder"``:
Algorithm 1, ``"quantizer"``: Algorithm 2), ``gradient`` (``"sine"`` Eq. 13 | ``"ste"``, for
the encoder), ``per_channel`` (per-output-channel weight range, Algorithm 2 only), ``relu``,
``pad_value``, ``num_classes``, ``in_channels``, ``image_size``, ``width``.

``relu`` defaults to True for ``mbbn_vgg_small`` (the bitflow zoo's block order; it also keeps
the module indices of the full-precision twin ``vgg_small``, so that :func:`bitflow.nn.mbbn.
init_from_higher` can start from it, Sec. V.A) and to False inside the ResNet blocks (HTanh /
HReLU in the quantizer is the nonlinearity; the residual stream stays signed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..nn.mbbn import METHODS, MBitConv2d, MBitLinear, make_quantizers
from ._factory import register_model
from .blocks import classifier
from .zoo import FC, Conv, Plan, plan_layers, vgg_small_plan


def per_layer_bits(
    value: int | Sequence[int], n: int, name: str, groups: Sequence[int] | None = None
) -> list[int]:
    """Expand ``value`` to ``n`` per-layer bit widths.

    An int applies to every layer; a list of length ``n`` is taken as is; with ``groups`` (layer
    counts per group, summing to ``n``) a list with one entry per group is expanded.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a list of ints, got a bool")
    if isinstance(value, int):
        out = [value] * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        vals = list(value)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            raise TypeError(f"{name} must hold ints, got {vals!r}")
        if len(vals) == n:
            out = vals
        elif groups is not None and len(vals) == len(groups):
            out = [v for v, g in zip(vals, groups, strict=True) for _ in range(g)]
        else:
            allowed = f"{n}" + (f" or {len(groups)} (one per stage)" if groups is not None else "")
            raise ValueError(
                f"{name} has {len(vals)} entries; this model has {n} binary layers, so give 1 int or a list of {allowed}"
            )
    else:
        raise TypeError(f"{name} must be an int or a list of ints, got {type(value).__name__}")
    for v in out:
        if not 1 <= v <= 8:
            raise ValueError(f"{name} entries must be in 1..8 (the paper's range), got {v}")
    return out


def _check_common(method: str, activation: str) -> None:
    if method not in METHODS:
        raise ValueError(
            f"method must be 'encoder' (Algorithm 1) or 'quantizer' (Algorithm 2), got {method!r}"
        )
    if activation not in ("htanh", "hrelu"):
        raise ValueError(f"activation must be 'htanh' or 'hrelu', got {activation!r}")


def _tag(
    model: nn.Module,
    bits_a: list[int],
    bits_w: list[int],
    method: str,
    activation: str,
    image_size: int,
    in_channels: int,
    num_classes: int,
) -> None:
    model.inference = "mbbn"  # type: ignore[assignment]
    model.image_size = image_size  # type: ignore[assignment]
    model.in_channels = in_channels  # type: ignore[assignment]
    model.num_classes = num_classes  # type: ignore[assignment]
    model.mbbn = {"bits_a": bits_a, "bits_w": bits_w, "method": method, "activation": activation}  # type: ignore[assignment]


def build_mbbn(
    plan: Plan,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    bits_a: int | Sequence[int] = 2,
    bits_w: int | Sequence[int] = 2,
    activation: str = "htanh",
    method: str = "encoder",
    gradient: str = "sine",
    per_channel: bool = False,
    relu: bool = True,
    pad_value: float = 0,
    first_layer: str = "float",
) -> nn.Sequential:
    """A flat MBBN ``nn.Sequential`` from a zoo plan (binary layers = convs + fcs of the plan)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    _check_common(method, activation)
    n_bin = len(plan.convs) + len(plan.fcs)
    ba = per_layer_bits(bits_a, n_bin, "bits_a")
    bw = per_layer_bits(bits_w, n_bin, "bits_w")
    qkw: dict[str, Any] = {
        "method": method,
        "activation": activation,
        "gradient": gradient,
        "per_channel": per_channel,
    }

    def conv_block(cin: int, c: Conv, i: int) -> list[nn.Module]:
        mods: list[nn.Module] = [
            nn.BatchNorm2d(cin),
            MBitConv2d(
                cin,
                c.cout,
                c.k,
                stride=c.stride,
                padding=c.padding,
                bias=False,
                bits_a=ba[i],
                bits_w=bw[i],
                pad_value=pad_value,
                **qkw,
            ),
        ]
        if relu:
            mods.append(nn.ReLU())
        if c.pool is not None:
            mods.append(nn.MaxPool2d(*c.pool))
        return mods

    def fc_block(fin: int, fc: FC, i: int) -> list[nn.Module]:
        mods: list[nn.Module] = [
            nn.BatchNorm1d(fin),
            MBitLinear(fin, fc.fout, bias=False, bits_a=ba[i], bits_w=bw[i], **qkw),
        ]
        return mods + [nn.ReLU()] if relu else mods

    mods, fin = plan_layers(plan, in_channels, first_layer, conv_block, fc_block)
    mods += classifier(fin, num_classes, last_layer="float")
    model = nn.Sequential(*mods)
    _tag(model, ba, bw, method, activation, plan.image_size, in_channels, num_classes)
    return model


@register_model("mbbn_vgg_small")
def mbbn_vgg_small(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    width: int = 32,
    fc: int = 256,
    **kw: Any,
) -> nn.Module:
    """MBBN VGG-small (plan of ``bitflow_vgg_small``): 5 binary layers with M-bit activations and
    K-bit weights; full-precision first and last layers."""
    return build_mbbn(
        vgg_small_plan(width=width, fc=fc, image_size=image_size),
        num_classes=num_classes,
        in_channels=in_channels,
        **kw,
    )


class MBitBasicBlock(nn.Module):
    """ResNet basic block with two M-bit x K-bit 3x3 convolutions and a full-precision shortcut::

        h = conv1(BN1(x))  [quantizer inside conv1]   -> ReLU?
        h = conv2(BN2(h))                              -> out = h + shortcut(x)

    ``shortcut`` is the identity, or ``Conv1x1(stride) -> BN`` (full precision) when the stride
    or the width changes.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        bits: Sequence[tuple[int, int]],
        qkw: dict[str, Any],
        relu: bool,
        pad_value: float,
    ) -> None:
        super().__init__()
        (m1, k1), (m2, k2) = bits
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = MBitConv2d(
            cin, cout, 3, stride=stride, padding=1, bits_a=m1, bits_w=k1, pad_value=pad_value, **qkw
        )
        self.act = nn.ReLU() if relu else nn.Identity()
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = MBitConv2d(
            cout, cout, 3, stride=1, padding=1, bits_a=m2, bits_w=k2, pad_value=pad_value, **qkw
        )
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.conv1(self.bn1(x)))
        h = self.conv2(self.bn2(h))
        return h + self.shortcut(x)


class MBitResNet(nn.Module):
    """ResNet-18-style MBBN (see the module docstring)."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        width: int,
        bits_a: list[int],
        bits_w: list[int],
        qkw: dict[str, Any],
        stem: str,
        relu: bool,
        pad_value: float,
        blocks: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
        else:
            raise ValueError(f"stem must be 'auto', 'imagenet' or 'cifar', got {stem!r}")
        layers: list[nn.Module] = []
        cin, i = width, 0
        for s, n in enumerate(blocks):
            cout = width * 2**s
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                bits = [(bits_a[i], bits_w[i]), (bits_a[i + 1], bits_w[i + 1])]
                layers.append(MBitBasicBlock(cin, cout, stride, bits, qkw, relu, pad_value))
                cin, i = cout, i + 2
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(cin, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))


@register_model("mbbn_resnet18")
def mbbn_resnet18(
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    width: int = 64,
    bits_a: int | Sequence[int] = 2,
    bits_w: int | Sequence[int] = 2,
    activation: str = "htanh",
    method: str = "encoder",
    gradient: str = "sine",
    per_channel: bool = False,
    stem: str = "auto",
    relu: bool = False,
    pad_value: float = 0,
) -> nn.Module:
    """MBBN ResNet-18: 16 M-bit x K-bit 3x3 convolutions, full-precision stem, shortcuts, adds
    and classifier. ``bits_a``/``bits_w``: int, 16 per-conv values, or 4 per-stage values."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    _check_common(method, activation)
    if stem == "auto":
        stem = "imagenet" if image_size >= 112 else "cifar"
    min_size = 32 if stem == "imagenet" else 8
    if image_size < min_size:
        raise ValueError(
            f"image_size {image_size} is too small for the {stem!r} stem (need >= {min_size})"
        )
    groups = (4, 4, 4, 4)
    ba = per_layer_bits(bits_a, 16, "bits_a", groups)
    bw = per_layer_bits(bits_w, 16, "bits_w", groups)
    # Validate the quantizer options once (e.g. hrelu with 1 bit) with a clear message.
    for m, k in set(zip(ba, bw, strict=True)):
        make_quantizers(
            m, k, method=method, activation=activation, gradient=gradient, per_channel=per_channel
        )
    qkw: dict[str, Any] = {
        "method": method,
        "activation": activation,
        "gradient": gradient,
        "per_channel": per_channel,
    }
    model = MBitResNet(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        width=width,
        bits_a=ba,
        bits_w=bw,
        qkw=qkw,
        stem=stem,
        relu=relu,
        pad_value=pad_value,
    )
    _tag(model, ba, bw, method, activation, image_size, in_channels, num_classes)
    return model


__all__ = [
    "MBitBasicBlock",
    "MBitResNet",
    "build_mbbn",
    "mbbn_resnet18",
    "mbbn_vgg_small",
    "per_layer_bits",
]

"""Residual binary networks: Bi-Real-Net, BitFlow / XNOR ResNet-18 and their full-precision twins.

Two residual layouts, each a stem, a flat ``nn.Sequential`` of residual units and a head.

**Bi-Real layout** (Liu et al., "Bi-Real Net", ECCV 2018; survey Sec. 3.2): every binary 3x3
convolution has its own shortcut, so the real-valued activations before each sign are carried to
the next unit instead of being lost to binarization. Unit ``l`` (:class:`BiRealUnit`)::

    x_{l+1} = requant( BN_l( BinConv_l( sign(x_l) ) ) + shortcut_l(x_l) )

where ``BinConv(sign(x)) = (sign(x) (*) sign(W)) * alpha`` (the sign is the ``input_quantizer``
inside :class:`~bitflow.nn.BinaryConv2d`; ``"approx_sign"`` gives Bi-Real's ApproxSign gradient
``d sign(x)/dx ~ (2 - 2|x|) 1[|x| <= 1]``, Bi-Real Eq. 5; ``alpha_o = mean |W_o|`` is Bi-Real's
magnitude-aware weight scale, Eq. 6-8, the ``"xnor"`` weight quantizer). ``shortcut_l`` is the
identity, or, where the stride or the width changes, the real-valued downsample
``BN(Conv1x1(AvgPool2d(2, 2)(x)))`` (``downsample="avgpool"``, Bi-Real) or ``BN(Conv1x1/2(x))``
(``downsample="conv"``, ResNet option B).

- ``bireal_resnet18``: stem ``Conv7x7/2 -> BN -> MaxPool3x3/2`` (ImageNet, no ReLU as in Bi-Real)
  or ``Conv3x3/1 -> BN`` (small inputs); 4 stages x 4 units, widths ``w, 2w, 4w, 8w`` (``w = 64``):
  16 binary convolutions; head ``AdaptiveAvgPool2d(1) -> Flatten -> Linear``.
- ``bireal_resnet20``: the CIFAR ResNet-20 layout (He et al. 2016, 3 stages x 3 basic blocks of two
  3x3 convolutions) with a shortcut around every convolution: stem ``Conv3x3/1 -> BN``, 3 stages x 6
  units, widths ``w, 2w, 4w`` (``w = 16``): 18 binary convolutions; 28 -> 28 -> 14 -> 7.
  ``stem="s2"`` makes the stem ``Conv3x3/2`` (28 -> 14 -> 7 -> 4): a quarter of the positions, so
  twice the width costs about the same MACs (the odd 7x7 map then needs ``downsample="conv"``
  or, on the int stream, the binary downsample).

**BitFlow layout** (:class:`BinaryBasicBlock`; the zoo's block order ``BN -> sign -> BinConv``,
BitFlow-Net Sec. II.A / Algorithm 1, inside a ResNet basic block, XNOR-Net's ResNet-18)::

    h = act1( BinConv1( sign( BN1(x) ) ) )        act1 = ReLU (relu=True, Algorithm 1 line 10) or none
    h = BinConv2( sign( BN2(h) ) )
    x' = requant( h + shortcut(x) )               shortcut: identity or BN(Conv1x1/2(x)) (default)

- ``bitflow_resnet18`` / ``xnor_resnet18``: stem ``Conv -> BN -> ReLU (-> MaxPool)``, 4 stages x 2
  blocks (16 binary convolutions), head ``BN -> ReLU -> AdaptiveAvgPool2d(1) -> Flatten ->
  Linear``. They build the same training graph and differ only in ``model.inference``
  (``"bitflow"``: integer thresholds where possible; ``"xnor"``: float alpha + BatchNorm), as the
  zoo's ``bitflow_*`` / ``xnor_*`` pairs do.

**Full-precision twins** ``resnet18`` and ``resnet20`` (``block="bireal"``, default, or
``"bitflow"``) have the same modules and parameter names as their binary versions with
``nn.Conv2d`` in place of ``BinaryConv2d`` and a real nonlinearity ``act`` (``activation="relu"``,
or ``"htanh"``, Bi-Real's ``clip(-1, x, 1)`` pre-training nonlinearity) where the binary model has
its sign. Their state dicts load into the binary model unchanged, so ``bitflow train --model
bireal_resnet20 --init-from runs/resnet20/best.pt`` starts from a trained twin (Bi-Real Sec. 3.3).

**Residual stream.** ``residual="float"`` keeps the stream in float32 (as published). Every unit
ends in ``requant`` (and the stem in ``stem.requant``), built by :func:`residual_requant`:
``nn.Identity`` for ``"float"``. ``residual="int"`` (bitflow's own, Bi-Real layout only) holds the
stream in fixed point, ``x = r 2^-f`` with ``r`` a ``b``-bit integer (``residual_frac = f = 8``,
``residual_bits = b = 16``; one power-of-two scale for every stream tensor, so adds need no
shifts), see :mod:`bitflow.nn.fixedpoint`: every BatchNorm that feeds the stream is a
:class:`~bitflow.nn.FixedPointBN` (output rounded to the grid), ``requant`` a
:class:`~bitflow.nn.StreamClamp` (saturation), the binary convolutions use the unscaled ``"sign"``
weights (the integer accumulator goes into the BN, whose batch statistics absorb alpha), the stem
is an ``Int8Conv2d(integer_output=True)`` and the downsample shortcut is binary
(``BinConv1x1/2(sign x) -> FixedPointBN``, ``downsample="binary"``). Every value between the input
and the classifier is then an integer and every sign is decided by integer arithmetic; the head
(global average pool -> Linear) stays float.

Conversion contract: forward passes use only ``BinaryConv2d``, ``nn.Conv2d``, ``Int8Conv2d``
(``first_layer="int8"``), ``nn.BatchNorm2d``, ``nn.ReLU``, ``nn.MaxPool2d``,
``nn.AvgPool2d(2, 2)``, ``nn.AdaptiveAvgPool2d(1)``, ``nn.Flatten``, ``nn.Linear``,
``nn.Identity`` and ``+``; ``nn.Hardtanh`` appears only in a twin built with ``activation="htanh"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..nn import BinaryConv2d, FixedPointBN, Int8Conv2d, StreamClamp
from ._factory import register_model
from .blocks import first_conv

RESIDUALS = ("float", "int")
DOWNSAMPLES = ("avgpool", "conv", "binary")
STEMS = ("auto", "imagenet", "cifar", "s2")
ACTIVATIONS = ("relu", "htanh")


def residual_requant(residual: str, frac: int = 8, bits: int = 16) -> nn.Module:
    """The quantizer of the residual stream, applied to every unit's output (and the stem's).

    ``"float"``: ``nn.Identity`` (the float32 stream of Bi-Real / ResNet); ``"int"``: the
    saturation :class:`~bitflow.nn.StreamClamp` of the fixed-point stream ``r 2^-frac`` (the
    rounding happens in the :class:`~bitflow.nn.FixedPointBN` of each branch).
    """
    if residual == "float":
        return nn.Identity()
    if residual == "int":
        return StreamClamp(frac, bits)
    raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")


def _stream_bn(cout: int, residual: str, frac: int) -> nn.BatchNorm2d:
    """The BatchNorm of a branch that feeds the stream (rounded to the grid when it is int)."""
    return FixedPointBN(cout, frac) if residual == "int" else nn.BatchNorm2d(cout)


def _activation(activation: str) -> nn.Module:
    """The full-precision twin's nonlinearity in place of the sign."""
    if activation == "relu":
        return nn.ReLU()
    if activation == "htanh":
        return nn.Hardtanh(-1.0, 1.0)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def shortcut(
    cin: int,
    cout: int,
    stride: int,
    downsample: str,
    *,
    bkw: dict[str, object] | None = None,
    residual: str = "float",
    frac: int = 8,
) -> nn.Module:
    """Identity if the shape is kept, else a downsample:
    ``"avgpool"``: ``AvgPool2d(2, 2) (if stride 2) -> Conv1x1 -> BN`` (Bi-Real, real-valued);
    ``"conv"``: ``Conv1x1/stride -> BN`` (ResNet option B, real-valued);
    ``"binary"``: ``BinConv1x1/stride(sign x) -> BN`` (``bkw``: the binary conv's quantizers; a
    :class:`~bitflow.nn.FixedPointBN` on an int stream)."""
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {downsample!r}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if stride == 1 and cin == cout:
        return nn.Identity()
    if downsample == "binary":
        conv = BinaryConv2d(cin, cout, 1, stride=stride, bias=False, **(bkw or {}))  # type: ignore[arg-type]
        return nn.Sequential(conv, _stream_bn(cout, residual, frac))
    if downsample == "avgpool":
        pool: list[nn.Module] = [nn.AvgPool2d(2, 2)] if stride == 2 else []
        return nn.Sequential(*pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


def _conv3x3(cin: int, cout: int, stride: int, binary: bool, bkw: dict[str, object]) -> nn.Conv2d:
    if binary:
        return BinaryConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, **bkw)  # type: ignore[arg-type]
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BiRealUnit(nn.Module):
    """One Bi-Real unit: ``x' = requant(bn(conv(act(x))) + shortcut(x))``.

    Binary: ``act`` is ``None`` (the sign is ``conv.input_quantizer``) and ``conv`` a
    ``BinaryConv2d``; twin: ``act`` a ReLU/Hardtanh and ``conv`` an ``nn.Conv2d`` (same shapes).
    Submodules: ``conv``, ``bn``, ``shortcut``, ``requant`` (and ``act`` in the twin).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        *,
        binary: bool,
        bkw: dict[str, object],
        downsample: str,
        residual: str,
        activation: str = "relu",
        frac: int = 8,
        bits: int = 16,
    ) -> None:
        super().__init__()
        self.act: nn.Module | None = None if binary else _activation(activation)
        self.conv = _conv3x3(cin, cout, stride, binary, bkw)
        self.bn = _stream_bn(cout, residual, frac)
        self.shortcut = shortcut(
            cin, cout, stride, downsample, bkw=bkw, residual=residual, frac=frac
        )
        self.requant = residual_requant(residual, frac, bits)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.act is None else self.act(x)
        return self.requant(self.bn(self.conv(h)) + self.shortcut(x))  # type: ignore[no-any-return]


class BinaryBasicBlock(nn.Module):
    """ResNet basic block in the BitFlow order (see the module docstring)::

        h = act1(conv1(a(bn1(x))));  x' = requant(conv2(a(bn2(h))) + shortcut(x))

    Binary: ``a`` is the sign inside ``conv1``/``conv2`` (no module); twin: ``a`` is ``act``
    (ReLU/Hardtanh), which with ``relu=False`` makes the twin a pre-activation ResNet (He et al.
    2016b). ``act1`` is a ReLU (``relu=True``) or ``None``. Submodules: ``bn1``, ``conv1``,
    ``act1``, ``bn2``, ``conv2``, ``shortcut``, ``requant`` (and ``act`` in the twin).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        *,
        binary: bool,
        bkw: dict[str, object],
        downsample: str,
        residual: str,
        relu: bool,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.act: nn.Module | None = None if binary else _activation(activation)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride, binary, bkw)
        self.act1: nn.Module | None = nn.ReLU() if relu else None
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout, 1, binary, bkw)
        self.shortcut = shortcut(cin, cout, stride, downsample, bkw=bkw)
        self.requant = residual_requant(residual)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn1(x)
        if self.act is not None:
            h = self.act(h)
        h = self.conv1(h)
        if self.act1 is not None:
            h = self.act1(h)
        h = self.bn2(h)
        if self.act is not None:
            h = self.act(h)
        return self.requant(self.conv2(h) + self.shortcut(x))  # type: ignore[no-any-return]


def _stem(
    in_channels: int,
    width: int,
    stem: str,
    first_layer: str,
    relu: bool,
    residual: str,
    frac: int = 8,
    bits: int = 16,
) -> nn.Sequential:
    """``conv -> BN -> ReLU? -> MaxPool3x3/2 (imagenet) -> requant``; conv is 7x7/2 (imagenet),
    3x3/1 (cifar) or 3x3/2 (s2), float (``nn.Conv2d``) or fixed point (``Int8Conv2d``), with a bias like every
    zoo first layer (:func:`~bitflow.models.blocks.first_conv`; redundant before BN: +``width``
    parameters). Int stream: ``Int8Conv2d(integer_output=True, bias=False) -> FixedPointBN``
    (the accumulator rounded to the grid; max-pooling grid values is exact)."""
    k, s, p = {"imagenet": (7, 2, 3), "s2": (3, 2, 1)}.get(stem, (3, 1, 1))
    conv: nn.Module
    if residual == "int":
        conv = Int8Conv2d(
            in_channels, width, k, stride=s, padding=p, bias=False, integer_output=True
        )
    else:
        conv = first_conv(in_channels, width, k, stride=s, padding=p, first_layer=first_layer)
    mods: list[nn.Module] = [conv, _stream_bn(width, residual, frac)]
    if relu:
        mods.append(nn.ReLU())
    # the saturation commutes with the max-pool (both monotone); on the int stream it goes first,
    # fused into the requantization
    if residual == "int":
        mods.append(residual_requant(residual, frac, bits))
    if stem == "imagenet":
        mods.append(nn.MaxPool2d(3, 2, 1))
    if residual != "int":
        mods.append(residual_requant(residual, frac, bits))
    return nn.Sequential(*mods)


def _stem_size(image_size: int, stem: str) -> int:
    if stem == "imagenet":
        conv = (image_size + 2 * 3 - 7) // 2 + 1
        return (conv + 2 - 3) // 2 + 1
    if stem == "s2":
        return (image_size + 2 - 3) // 2 + 1
    return image_size


class ResNet(nn.Module):
    """A residual network ``head(units(stem(x)))``: ``stem`` (see :func:`_stem`), ``units`` (a
    flat ``nn.Sequential`` of :class:`BiRealUnit` or :class:`BinaryBasicBlock`), ``head``
    (``[BN -> ReLU ->] AdaptiveAvgPool2d(1) -> Flatten -> Linear``)."""

    def __init__(
        self, stem: nn.Sequential, units: Sequence[nn.Module], head: nn.Sequential
    ) -> None:
        super().__init__()
        self.stem = stem
        self.units = nn.Sequential(*units)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.units(self.stem(x)))  # type: ignore[no-any-return]


def build_resnet(
    *,
    block: str,
    stages: Sequence[int],
    binary: bool,
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int,
    stem: str,
    first_layer: str | None = None,
    residual: str = "float",
    downsample: str = "auto",
    input_quantizer: str = "approx_sign",
    weight_quantizer: str | None = None,
    pad_value: float = 0,
    relu: bool | None = None,
    activation: str = "relu",
    inference: str = "bitflow",
    residual_frac: int = 8,
    residual_bits: int = 16,
    widths: Sequence[int] | None = None,
) -> ResNet:
    """Build a residual network. ``block="bireal"``: ``stages[i]`` :class:`BiRealUnit` s of width
    ``width * 2^i``; ``"bitflow"``: ``stages[i]`` :class:`BinaryBasicBlock` s. The first unit of
    every stage but the first has stride 2. ``binary=False`` builds the full-precision twin.
    ``widths`` (one per stage) overrides ``width * 2^i``; the stem has ``widths[0]`` channels.

    ``None`` / ``"auto"`` options follow ``residual``: float stream -> ``first_layer="float"``,
    ``downsample="avgpool"`` (``"conv"`` for block ``"bitflow"``), ``weight_quantizer="xnor"``;
    int stream -> ``"int8"`` (integer accumulator), ``"binary"``, ``"sign"`` (the only choices
    that keep every value an integer; anything else raises ``ValueError``)."""
    int_stream = residual == "int"
    if int_stream:
        if block != "bireal" or not binary:
            raise ValueError(
                "residual='int' needs the binary Bi-Real layout (block='bireal', binary=True): every "
                "branch that feeds the stream must end in a BatchNorm on an integer accumulator"
            )
        for opt, val, want in (
            ("first_layer", first_layer, "int8"),
            ("downsample", downsample, "binary"),
            ("weight_quantizer", weight_quantizer, "sign"),
        ):
            if val not in (None, "auto", want):
                raise ValueError(
                    f"residual='int' needs {opt}={want!r} (every value an integer), got {val!r}"
                )
        first_layer, downsample, weight_quantizer = "int8", "binary", "sign"
    first_layer = first_layer or "float"
    weight_quantizer = weight_quantizer or "xnor"
    if downsample == "auto":
        downsample = "avgpool" if block == "bireal" else "conv"
    if block not in ("bireal", "bitflow"):
        raise ValueError(f"block must be 'bireal' or 'bitflow', got {block!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if width < 1 or in_channels < 1:
        raise ValueError(f"width and in_channels must be >= 1, got {width} and {in_channels}")
    stage_widths = _stage_widths(width, widths, len(stages))
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if stem == "auto":
        stem = "imagenet" if image_size >= 112 else "cifar"
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {downsample!r}")
    residual_requant(residual)  # validate before building anything
    if not binary:
        _activation(activation)
    if relu is not None and block == "bireal":
        raise ValueError("relu applies to block='bitflow' only (a Bi-Real unit has no ReLU)")
    relu = True if relu is None else relu
    bkw: dict[str, object] = {
        "input_quantizer": input_quantizer,
        "weight_quantizer": weight_quantizer,
        "pad_value": pad_value,
    }
    bireal = block == "bireal"
    size = _stem_size(image_size, stem)
    if size < 1:
        raise ValueError(f"image_size {image_size} is too small for the {stem!r} stem")
    units: list[nn.Module] = []
    cin = stage_widths[0]
    for i, n in enumerate(stages):
        cout = stage_widths[i]
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            if stride == 2:
                if downsample == "avgpool" and size % 2:
                    raise ValueError(
                        f"image_size {image_size}: stage {i + 1} downsamples a {size}x{size} map; AvgPool2d(2, 2) "
                        f"gives {size // 2}x{size // 2} but the stride-2 conv gives {(size + 1) // 2}x{(size + 1) // 2}. "
                        "Use downsample='conv' (a 1x1 stride-2 conv shortcut) or an image size whose maps stay even"
                    )
                size = (size + 1) // 2
            if bireal:
                units.append(
                    BiRealUnit(
                        cin,
                        cout,
                        stride,
                        binary=binary,
                        bkw=bkw,
                        downsample=downsample,
                        residual=residual,
                        activation=activation,
                        frac=residual_frac,
                        bits=residual_bits,
                    )
                )
            else:
                units.append(
                    BinaryBasicBlock(
                        cin,
                        cout,
                        stride,
                        binary=binary,
                        bkw=bkw,
                        downsample=downsample,
                        residual=residual,
                        relu=relu,
                        activation=activation,
                    )
                )
            cin = cout
    head: list[nn.Module] = [] if bireal else [nn.BatchNorm2d(cin), nn.ReLU()]
    head += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    model = ResNet(
        _stem(
            in_channels,
            stage_widths[0],
            stem,
            first_layer,
            relu=not bireal,
            residual=residual,
            frac=residual_frac,
            bits=residual_bits,
        ),
        units,
        nn.Sequential(*head),
    )
    model.inference = inference if binary else "float"  # type: ignore[assignment]
    model.image_size = image_size  # type: ignore[assignment]
    model.in_channels = in_channels  # type: ignore[assignment]
    model.num_classes = num_classes  # type: ignore[assignment]
    model.residual = residual  # type: ignore[assignment]
    if int_stream:
        model.residual_frac, model.residual_bits = residual_frac, residual_bits  # type: ignore[assignment]
    return model


# (num_classes, in_channels, image_size, width, stem) defaults: ImageNet-sized and small inputs
_IMAGENET = (1000, 3, 224, 64, "auto")
_SMALL = (10, 1, 28, 16, "cifar")


def _stage_widths(width: int, widths: Sequence[int] | None, n: int) -> list[int]:
    """Channels of each of the ``n`` stages: ``widths`` if given (one positive int per stage),
    else ``width * 2^i``."""
    if widths is None:
        return [width * 2**i for i in range(n)]
    ws = [int(w) for w in widths]
    if (
        len(ws) != n
        or any(w < 1 for w in ws)
        or any(w != v for w, v in zip(ws, widths, strict=True))
    ):
        raise ValueError(
            f"widths must be {n} positive integers (one per stage), got {list(widths)}"
        )
    return ws


def _named(fn: Any, name: str, doc: str) -> Any:
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return register_model(name)(fn)


def _bireal(name: str, stages: tuple[int, ...], defaults: tuple[Any, ...], doc: str) -> Any:
    """A registered Bi-Real ResNet builder (its parameters and their defaults are its API)."""
    nc, ic, size, wd, st = defaults

    def make(
        num_classes: int = nc,
        in_channels: int = ic,
        image_size: int = size,
        width: int = wd,
        stem: str = st,
        first_layer: str | None = None,
        residual: str = "float",
        downsample: str = "auto",
        input_quantizer: str = "approx_sign",
        weight_quantizer: str | None = None,
        pad_value: float = 0,
        residual_frac: int = 8,
        residual_bits: int = 16,
        widths: Sequence[int] | None = None,
    ) -> nn.Module:
        return build_resnet(
            block="bireal",
            stages=stages,
            binary=True,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            width=width,
            stem=stem,
            first_layer=first_layer,
            residual=residual,
            downsample=downsample,
            input_quantizer=input_quantizer,
            weight_quantizer=weight_quantizer,
            pad_value=pad_value,
            inference="bitflow",
            residual_frac=residual_frac,
            residual_bits=residual_bits,
            widths=widths,
        )

    return _named(make, name, doc)


bireal_resnet18 = _bireal(
    "bireal_resnet18",
    (4, 4, 4, 4),
    _IMAGENET,
    """Bi-Real-Net 18 (Liu et al. 2018): 16 binary 3x3 convolutions, each with its own shortcut
    ``x' = BN(BinConv(sign x)) + shortcut(x)``; float stem, downsample shortcuts and classifier.""",
)
bireal_resnet20 = _bireal(
    "bireal_resnet20",
    (6, 6, 6),
    _SMALL,
    """Bi-Real ResNet-20 for small inputs: 3 stages x 6 binary 3x3 convolutions (widths ``w, 2w,
    4w``), a shortcut around every one (Bi-Real), float stem, downsample shortcuts and classifier.""",
)


def _bitflow_resnet18(inference: str):  # type: ignore[no-untyped-def]
    def make(
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        width: int = 64,
        stem: str = "auto",
        first_layer: str = "float",
        residual: str = "float",
        downsample: str = "conv",
        input_quantizer: str = "ste_sign",
        weight_quantizer: str = "xnor",
        pad_value: float = 0,
        relu: bool = True,
    ) -> nn.Module:
        return build_resnet(
            block="bitflow",
            stages=(2, 2, 2, 2),
            binary=True,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            width=width,
            stem=stem,
            first_layer=first_layer,
            residual=residual,
            downsample=downsample,
            input_quantizer=input_quantizer,
            weight_quantizer=weight_quantizer,
            pad_value=pad_value,
            relu=relu,
            inference=inference,
        )

    return make


bitflow_resnet18 = _named(
    _bitflow_resnet18("bitflow"),
    "bitflow_resnet18",
    "Binary ResNet-18 in the BitFlow block order (BN -> sign -> BinConv, XNOR alpha), 16 binary 3x3 "
    "convolutions in 8 basic blocks with float shortcuts; BatchShift integer inference.",
)
xnor_resnet18 = _named(
    _bitflow_resnet18("xnor"),
    "xnor_resnet18",
    "XNOR-Net ResNet-18: the training graph of ``bitflow_resnet18``; float alpha + BatchNorm at inference.",
)


def _twin(
    name: str,
    stages: dict[str, tuple[int, ...]],
    defaults: tuple[Any, ...],
    doc: str,
) -> Any:
    """A registered full-precision twin builder; ``stages`` per ``block``."""
    nc, ic, size, wd, st = defaults

    def make(
        num_classes: int = nc,
        in_channels: int = ic,
        image_size: int = size,
        width: int = wd,
        stem: str = st,
        block: str = "bireal",
        first_layer: str = "float",
        downsample: str | None = None,
        activation: str = "relu",
        relu: bool | None = None,
        widths: Sequence[int] | None = None,
    ) -> nn.Module:
        return build_resnet(
            block=block,
            stages=stages["bireal" if block == "bireal" else "bitflow"],
            binary=False,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            width=width,
            stem=stem,
            first_layer=first_layer,
            downsample=downsample or ("avgpool" if block == "bireal" else "conv"),
            activation=activation,
            relu=relu,
            widths=widths,
        )

    return _named(make, name, doc)


resnet18 = _twin(
    "resnet18",
    {"bireal": (4, 4, 4, 4), "bitflow": (2, 2, 2, 2)},
    _IMAGENET,
    """Full-precision twin of ``bireal_resnet18`` (``block="bireal"``) or ``bitflow_resnet18``
    (``block="bitflow"``): same modules and parameter names, ``nn.Conv2d`` and ``activation``
    where the binary model has BinaryConv2d and its sign. ``downsample`` defaults to that of the
    binary model (``"avgpool"`` / ``"conv"``); ``relu`` (ReLU after ``conv1``, default on) applies
    to ``block="bitflow"`` only.""",
)
resnet20 = _twin(
    "resnet20",
    {"bireal": (6, 6, 6), "bitflow": (3, 3, 3)},
    _SMALL,
    """Full-precision twin of ``bireal_resnet20`` (``block="bireal"``: 18 units) or a ResNet-20 of
    3 x 3 basic blocks in the BitFlow order (``block="bitflow"``).""",
)


__all__ = [
    "BiRealUnit",
    "BinaryBasicBlock",
    "ResNet",
    "bireal_resnet18",
    "bireal_resnet20",
    "bitflow_resnet18",
    "build_resnet",
    "residual_requant",
    "resnet18",
    "resnet20",
    "shortcut",
    "xnor_resnet18",
]

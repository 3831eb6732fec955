"""The model zoo: BitFlow-Net / XNOR-Net AlexNet, small 28x28 models, and full-precision twins.

Every binary model is a flat ``nn.Sequential`` built from a layer plan, in the block order
``BN -> sign -> BinConv -> ReLU -> pool`` (BitFlow-Net Sec. II.A, Algorithm 1). The
full-precision twin of a plan has the same widths and order with ``nn.Conv2d``/``nn.Linear``
and no sign. ``bitflow_*`` and ``xnor_*`` build identical training graphs; they differ only at
inference (``model.inference``: BatchShift integer thresholds vs float alpha + BatchNorm).

Common options: ``num_classes``, ``in_channels``, ``first_layer`` (``"float"`` or ``"int8"``
fixed point), ``last_layer`` (``"float"`` or ``"binary"`` with a scale layer, Sec. III.B),
``weight_quantizer`` (``"xnor"``: with the scaling factor alpha; ``"sign"``: without),
``input_quantizer`` (``"ste_sign"``, ...), ``relu`` (ReLU after each binary layer, default on as
in Algorithm 1), ``pad_value`` (0 or +1 padding of binarized activations), ``width`` (channel
multiplier of the small models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ._factory import register_model
from .blocks import binary_conv_block, binary_fc_block, classifier, first_conv


@dataclass(frozen=True)
class Conv:
    cout: int
    k: int
    stride: int = 1
    padding: int = 0
    pool: tuple[int, int] | None = None


@dataclass(frozen=True)
class FC:
    fout: int


@dataclass(frozen=True)
class Plan:
    first: Conv
    first_pool: tuple[int, int] | None
    convs: tuple[Conv, ...]
    fcs: tuple[FC, ...]
    image_size: int


def _spatial(size: int, c: Conv) -> int:
    size = (size + 2 * c.padding - c.k) // c.stride + 1
    if c.pool is not None:
        size = (size - c.pool[0]) // c.pool[1] + 1
    return size


def plan_layers(
    plan: Plan,
    in_channels: int,
    first_layer: str,
    conv_block: Callable[[int, Conv, int], list[nn.Module]],
    fc_block: Callable[[int, FC, int], list[nn.Module]],
) -> tuple[list[nn.Module], int]:
    """The layers of a plan up to its classifier: the first conv (+ ReLU, pool), the conv blocks,
    the flatten and the FC blocks; ``conv_block(cin, conv, i)`` / ``fc_block(fin, fc, i)`` build
    the ``i``-th middle layer (counted over convs, then FCs). Returns the modules and the number
    of features of the last one."""
    f = plan.first
    mods: list[nn.Module] = [
        first_conv(
            in_channels, f.cout, f.k, stride=f.stride, padding=f.padding, first_layer=first_layer
        ),
        nn.ReLU(),
    ]
    size = (plan.image_size + 2 * f.padding - f.k) // f.stride + 1
    if plan.first_pool is not None:
        mods.append(nn.MaxPool2d(*plan.first_pool))
        size = (size - plan.first_pool[0]) // plan.first_pool[1] + 1
    cin, i = f.cout, 0
    for c in plan.convs:
        mods += conv_block(cin, c, i)
        size, cin, i = _spatial(size, c), c.cout, i + 1
    if size < 1:
        raise ValueError(f"image_size {plan.image_size} is too small for this model")
    mods.append(nn.Flatten())
    fin = cin * size * size
    for fc in plan.fcs:
        mods += fc_block(fin, fc, i)
        fin, i = fc.fout, i + 1
    return mods, fin


def build(
    plan: Plan,
    *,
    binary: bool,
    num_classes: int = 10,
    in_channels: int = 1,
    first_layer: str = "float",
    last_layer: str = "float",
    weight_quantizer: str = "xnor",
    input_quantizer: str = "ste_sign",
    relu: bool = True,
    pad_value: float = 0,
    inference: str = "bitflow",
) -> nn.Sequential:
    """Build a flat ``nn.Sequential`` from a plan (binary or full-precision twin)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not binary:
        given = {
            k: v
            for k, v in (
                ("weight_quantizer", weight_quantizer),
                ("input_quantizer", input_quantizer),
                ("relu", relu),
                ("pad_value", pad_value),
            )
            if v
            != {
                "weight_quantizer": "xnor",
                "input_quantizer": "ste_sign",
                "relu": True,
                "pad_value": 0,
            }[k]
        }
        if given:
            raise ValueError(
                f"options {sorted(given)} apply to binary models only, not to a full-precision twin"
            )

    def conv_block(cin: int, c: Conv, _i: int) -> list[nn.Module]:
        if binary:
            return binary_conv_block(
                cin,
                c.cout,
                c.k,
                stride=c.stride,
                padding=c.padding,
                pool=c.pool,
                relu=relu,
                weight_quantizer=weight_quantizer,
                input_quantizer=input_quantizer,
                pad_value=pad_value,
            )
        mods: list[nn.Module] = [
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, c.cout, c.k, c.stride, c.padding, bias=False),
            nn.ReLU(),
        ]
        if c.pool is not None:
            mods.append(nn.MaxPool2d(*c.pool))
        return mods

    def fc_block(fin: int, fc: FC, _i: int) -> list[nn.Module]:
        if binary:
            return binary_fc_block(
                fin,
                fc.fout,
                relu=relu,
                weight_quantizer=weight_quantizer,
                input_quantizer=input_quantizer,
            )
        return [nn.BatchNorm1d(fin), nn.Linear(fin, fc.fout, bias=False), nn.ReLU()]

    mods, fin = plan_layers(plan, in_channels, first_layer, conv_block, fc_block)
    if binary:
        mods += classifier(
            fin,
            num_classes,
            last_layer=last_layer,
            weight_quantizer=weight_quantizer,
            input_quantizer=input_quantizer,
        )
    else:
        if last_layer != "float":
            raise ValueError("a full-precision model has a float last layer")
        mods += [nn.BatchNorm1d(fin), nn.Linear(fin, num_classes)]
    model = nn.Sequential(*mods)
    model.inference = inference if binary else "float"  # type: ignore[assignment]
    model.image_size = plan.image_size  # type: ignore[assignment]
    model.in_channels = in_channels  # type: ignore[assignment]
    model.num_classes = num_classes  # type: ignore[assignment]
    return model


def alexnet_plan(image_size: int = 224) -> Plan:
    """AlexNet as in BitFlow-Net Table 3: conv1 96 11x11/4 (full precision), BinConv2 96->192
    5x5, BinConv3 192->384, BinConv4 384->256, BinConv5 256->256 (3x3), BinFC6 9216->4096,
    BinFC7 4096->4096; max-pool 3/2 after conv1, conv2 and conv5 (224 -> 55 -> 27 -> 13 -> 6)."""
    return Plan(
        first=Conv(96, 11, 4, 2),
        first_pool=(3, 2),
        convs=(
            Conv(192, 5, 1, 2, (3, 2)),
            Conv(384, 3, 1, 1),
            Conv(256, 3, 1, 1),
            Conv(256, 3, 1, 1, (3, 2)),
        ),
        fcs=(FC(4096), FC(4096)),
        image_size=image_size,
    )


def vgg_small_plan(width: int = 32, fc: int = 256, image_size: int = 28) -> Plan:
    """A small VGG-style net for 28x28 inputs: conv1 w (float) -> [w, pool] -> [2w] ->
    [2w, pool] -> [4w, pool] (3x3, padding 1) -> FC ``fc`` -> classifier."""
    w = width
    return Plan(
        first=Conv(w, 3, 1, 1),
        first_pool=None,
        convs=(
            Conv(w, 3, 1, 1, (2, 2)),
            Conv(2 * w, 3, 1, 1),
            Conv(2 * w, 3, 1, 1, (2, 2)),
            Conv(4 * w, 3, 1, 1, (2, 2)),
        ),
        fcs=(FC(fc),),
        image_size=image_size,
    )


def lenet_plan(width: int = 32, fc: int = 256, image_size: int = 28) -> Plan:
    """LeNet-style: conv1 w 5x5 (float) + pool -> BinConv 2w 5x5 + pool -> FC ``fc``."""
    return Plan(
        first=Conv(width, 5),
        first_pool=(2, 2),
        convs=(Conv(2 * width, 5, 1, 0, (2, 2)),),
        fcs=(FC(fc),),
        image_size=image_size,
    )


def _variant(
    plan: Plan, binary: bool, inference: str, num_classes: int, in_channels: int, kw: dict[str, Any]
) -> nn.Module:
    """:func:`build` of one registered variant of a plan (``kw``: the model's other options)."""
    return build(
        plan,
        binary=binary,
        num_classes=num_classes,
        in_channels=in_channels,
        inference=inference,
        **kw,
    )


def _alexnet(binary: bool, inference: str):  # type: ignore[no-untyped-def]
    def make(
        num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, **kw: Any
    ) -> nn.Module:
        return _variant(alexnet_plan(image_size), binary, inference, num_classes, in_channels, kw)

    return make


def _small(plan_fn, binary: bool, inference: str):  # type: ignore[no-untyped-def]
    def make(
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 32,
        fc: int = 256,
        **kw: Any,
    ) -> nn.Module:
        plan = plan_fn(width=width, fc=fc, image_size=image_size)
        return _variant(plan, binary, inference, num_classes, in_channels, kw)

    return make


# (name prefix, binary, inference) of the three variants of every plan
_VARIANTS = (("bitflow_", True, "bitflow"), ("xnor_", True, "xnor"), ("", False, "float"))
_ALEXNET_DOCS = {
    "bitflow_": "BitFlow-Net AlexNet (binary middle layers; BatchShift at inference).",
    "xnor_": "XNOR-Net AlexNet: the same training graph; float alpha + BatchNorm at inference.",
    "": "Full-precision AlexNet with the same widths and block order (baseline).",
}
for _prefix, _binary, _inf in _VARIANTS:
    _fn = _alexnet(_binary, _inf)
    _fn.__name__ = _prefix + "alexnet"
    _fn.__doc__ = _ALEXNET_DOCS[_prefix]
    register_model(_prefix + "alexnet")(_fn)

for _name, _plan in (("vgg_small", vgg_small_plan), ("lenet", lenet_plan)):
    _doc = (_plan.__doc__ or "").strip()
    for _prefix, _binary, _inf in _VARIANTS:
        _fn = _small(_plan, _binary, _inf)
        _fn.__name__ = _prefix + _name
        _fn.__doc__ = ("Full-precision twin. " if not _binary else f"{_inf} inference. ") + _doc
        register_model(_prefix + _name)(_fn)

"""Building blocks in the XNOR-Net / BitFlow-Net order.

A binary block is ``BN -> sign -> BinConv -> (ReLU) -> (pool)`` (XNOR-Net; BitFlow-Net Sec. II.A
and Algorithm 1, ReLU at line 10). The sign lives inside the binary layer (its
``input_quantizer``), so a model is a flat ``nn.Sequential`` of standard modules that both the
trainer and the converter read.
"""

from __future__ import annotations

from torch import nn

from ..nn import BinaryConv2d, BinaryLinear, Int8Conv2d, Scale


def binary_conv_block(
    cin: int,
    cout: int,
    k: int,
    *,
    stride: int = 1,
    padding: int = 0,
    pool: tuple[int, int] | None = None,
    relu: bool = True,
    weight_quantizer: str = "xnor",
    input_quantizer: str = "ste_sign",
    pad_value: float = 0,
) -> list[nn.Module]:
    """``BN(cin) -> sign -> BinaryConv2d(cin, cout, k) -> ReLU? -> MaxPool?``."""
    mods: list[nn.Module] = [
        nn.BatchNorm2d(cin),
        BinaryConv2d(
            cin,
            cout,
            k,
            stride=stride,
            padding=padding,
            bias=False,
            input_quantizer=input_quantizer,
            weight_quantizer=weight_quantizer,
            pad_value=pad_value,
        ),
    ]
    if relu:
        mods.append(nn.ReLU(inplace=False))
    if pool is not None:
        mods.append(nn.MaxPool2d(pool[0], pool[1]))
    return mods


def binary_fc_block(
    fin: int,
    fout: int,
    *,
    relu: bool = True,
    weight_quantizer: str = "xnor",
    input_quantizer: str = "ste_sign",
) -> list[nn.Module]:
    """``BN1d(fin) -> sign -> BinaryLinear(fin, fout) -> ReLU?``."""
    mods: list[nn.Module] = [
        nn.BatchNorm1d(fin),
        BinaryLinear(
            fin,
            fout,
            bias=False,
            input_quantizer=input_quantizer,
            weight_quantizer=weight_quantizer,
        ),
    ]
    if relu:
        mods.append(nn.ReLU(inplace=False))
    return mods


def first_conv(
    cin: int, cout: int, k: int, *, stride: int = 1, padding: int = 0, first_layer: str = "float"
) -> nn.Module:
    """Full-precision first convolution: ``"float"`` (float32) or ``"int8"`` (fixed point)."""
    if first_layer == "float":
        return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=True)
    if first_layer == "int8":
        return Int8Conv2d(cin, cout, k, stride=stride, padding=padding, bias=True)
    raise ValueError(f"first_layer must be 'float' or 'int8', got {first_layer!r}")


def classifier(
    fin: int,
    num_classes: int,
    *,
    last_layer: str = "float",
    weight_quantizer: str = "xnor",
    input_quantizer: str = "ste_sign",
) -> list[nn.Module]:
    """Last layer: ``BN1d -> Linear`` (full precision, default) or, with ``last_layer="binary"``,
    ``BN1d -> sign -> BinaryLinear -> Scale`` (BitFlow-Net Sec. III.B: a scale layer before
    softmax)."""
    if last_layer == "float":
        return [nn.BatchNorm1d(fin), nn.Linear(fin, num_classes)]
    if last_layer == "binary":
        return [
            nn.BatchNorm1d(fin),
            BinaryLinear(
                fin,
                num_classes,
                bias=False,
                input_quantizer=input_quantizer,
                weight_quantizer=weight_quantizer,
            ),
            Scale(1.0),
        ]
    raise ValueError(f"last_layer must be 'float' or 'binary', got {last_layer!r}")

"""Tests for bitflow.models: registry, the BitFlow-Net AlexNet and the small 28x28 models.

Oracles: BitFlow-Net Table 3 (layer widths, kernel sizes and the feature-map sizes 27x27 /
13x13 seen by BinConv2..5), Sec. III.B (binary last layer followed by a scale layer),
Sec. IV / Algorithm 1 (block order BN -> sign -> BinConv -> ReLU -> pool), the AlexNet
arithmetic 224 -> 55 -> 27 -> 13 -> 6 (so 256 * 6 * 6 = 9216 inputs to FC6), and plain
PyTorch training (a few Adam steps on one fixed batch must lower its loss).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _bounds import gamma
from torch import nn

from bitflow import models
from bitflow.nn import BinaryConv2d, BinaryLinear, Int8Conv2d, Scale, binary_layers, clip_weights_
from bitflow.nn import quantizers as Q

SMALL = ["bitflow_lenet", "xnor_lenet", "lenet", "bitflow_vgg_small", "xnor_vgg_small", "vgg_small"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    """These tensors are tiny: one intra-op thread avoids OpenMP spin-waits on a shared CPU
    (10-50x slower wall time with 2 contended threads). Restored after the module."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_list_models_contains_the_zoo() -> None:
    names = models.list_models()
    for n in (
        "bitflow_alexnet",
        "xnor_alexnet",
        "alexnet",
        "bitflow_vgg_small",
        "vgg_small",
        "bitflow_lenet",
        "lenet",
    ):
        assert n in names
    assert names == sorted(names)


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as ei:
        models.create("resnet9000")
    msg = str(ei.value)
    assert "resnet9000" in msg and "bitflow_alexnet" in msg and "lenet" in msg


# ----------------------------------------------------------------------------- AlexNet


@pytest.fixture(scope="module")
def alexnet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("bitflow_alexnet", num_classes=2)


def _binary_convs(model: nn.Module) -> list[tuple[int, BinaryConv2d]]:
    return [(i, m) for i, m in enumerate(model) if isinstance(m, BinaryConv2d)]


def test_bitflow_alexnet_widths_follow_table3(alexnet: nn.Module) -> None:
    conv1 = alexnet[0]
    assert type(conv1) is nn.Conv2d  # full precision first layer (Sec. III.B)
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride) == (
        3,
        96,
        (11, 11),
        (4, 4),
    )

    convs = [m for _, m in _binary_convs(alexnet)]
    got = [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in convs]
    assert got == [(96, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3)]  # BinConv2..5
    fcs = [m for m in alexnet.modules() if isinstance(m, BinaryLinear)]
    assert [(m.in_features, m.out_features) for m in fcs] == [
        (9216, 4096),
        (4096, 4096),
    ]  # BinFC6, 7
    for m in convs + fcs:
        assert isinstance(m.input_quantizer, Q.SteSign)
        assert isinstance(m.weight_quantizer, Q.XnorWeight)
        assert m.bias is None

    last = alexnet[-1]
    assert type(last) is nn.Linear and (last.in_features, last.out_features) == (4096, 2)
    assert isinstance(alexnet[-2], nn.BatchNorm1d) and alexnet[-2].num_features == 4096
    assert alexnet.inference == "bitflow" and alexnet.num_classes == 2 and alexnet.image_size == 224


def test_bitflow_alexnet_block_order(alexnet: nn.Module) -> None:
    """BN -> BinConv (sign inside) -> ReLU -> pool; max-pool 3/2 after conv1, conv2, conv5."""
    mods = list(alexnet)
    assert isinstance(mods[1], nn.ReLU) and isinstance(mods[2], nn.MaxPool2d)
    pooled = []
    for i, m in _binary_convs(alexnet):
        bn = mods[i - 1]
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == m.in_channels
        assert isinstance(mods[i + 1], nn.ReLU)
        if isinstance(mods[i + 2], nn.MaxPool2d):
            assert (mods[i + 2].kernel_size, mods[i + 2].stride) == (3, 2)
            pooled.append(m.out_channels)
    assert pooled == [192, 256]  # after BinConv2 and BinConv5
    for i, m in enumerate(mods):
        if isinstance(m, BinaryLinear):
            assert (
                isinstance(mods[i - 1], nn.BatchNorm1d)
                and mods[i - 1].num_features == m.in_features
            )
            assert isinstance(mods[i + 1], nn.ReLU)


def test_bitflow_alexnet_forward_224(alexnet: nn.Module) -> None:
    """One forward (batch 2): output [2, 2]; BinConv2 sees 27x27, BinConv3..5 13x13 (Table 3)."""
    sizes: list[tuple[int, int]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: sizes.append(tuple(inp[0].shape[-2:])))
        for _, m in _binary_convs(alexnet)
    ]
    flat: list[int] = []
    hooks.append(
        alexnet[-1].register_forward_hook(lambda mod, inp, out: flat.append(inp[0].shape[1]))
    )
    fc6 = next(m for m in alexnet.modules() if isinstance(m, BinaryLinear))
    hooks.append(fc6.register_forward_hook(lambda mod, inp, out: flat.append(inp[0].shape[1])))
    alexnet.eval()
    try:
        with torch.no_grad():
            y = alexnet(torch.randn(2, 3, 224, 224))
    finally:
        for h in hooks:
            h.remove()
    assert y.shape == (2, 2) and torch.isfinite(y).all()
    assert sizes == [(27, 27), (13, 13), (13, 13), (13, 13)]
    assert sorted(flat) == [4096, 9216]


@pytest.mark.parametrize("name,inference", [("xnor_alexnet", "xnor"), ("alexnet", "float")])
def test_alexnet_twins_have_the_same_widths(name: str, inference: str) -> None:
    torch.manual_seed(0)
    m = models.create(name, num_classes=3)
    assert m.inference == inference
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (3, 96, 11, 4),
        (96, 192, 5, 1),
        (192, 384, 3, 1),
        (384, 256, 3, 1),
        (256, 256, 3, 1),
    ]
    lins = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lins] == [
        (9216, 4096),
        (4096, 4096),
        (4096, 3),
    ]
    n_binary = len(binary_layers(m))
    assert n_binary == (6 if name == "xnor_alexnet" else 0)


# ----------------------------------------------------------------------------- small models


@pytest.mark.parametrize("name", SMALL)
def test_small_models_forward_and_train_step(name: str) -> None:
    """Forward [4,1,28,28] -> [4,10]; 10 Adam steps (lr 3e-3, weights clipped after each step)
    on one fixed batch of 16 lower that batch's cross-entropy by at least 10 %."""
    torch.manual_seed(1)
    m = models.create(name, width=16, fc=64)
    assert m(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with torch.no_grad():
        first = F.cross_entropy(m(x), y).item()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        for p in m.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
        opt.step()
        clip_weights_(m)
    with torch.no_grad():
        final = F.cross_entropy(m(x), y).item()
    assert final < 0.9 * first, (first, final)
    for layer in binary_layers(m).values():
        assert layer.weight.abs().max() <= 1.0


@pytest.mark.parametrize(
    "name,convs,fin",
    [
        # LeNet: 28 -5-> 24 -pool-> 12 -5-> 8 -pool-> 4: FC in = 2w * 4 * 4
        ("bitflow_lenet", [(8, 16, 5)], 16 * 4 * 4),
        # VGG-small: 28 -> 28 -pool-> 14 -> 14 -pool-> 7 -pool-> 3: FC in = 4w * 3 * 3
        ("bitflow_vgg_small", [(8, 8, 3), (8, 16, 3), (16, 16, 3), (16, 32, 3)], 32 * 3 * 3),
    ],
)
def test_small_model_widths(name: str, convs: list[tuple[int, int, int]], fin: int) -> None:
    m = models.create(name, width=8, fc=24)
    assert type(m[0]) is nn.Conv2d and m[0].out_channels == 8
    got = [(c.in_channels, c.out_channels, c.kernel_size[0]) for _, c in _binary_convs(m)]
    assert got == convs
    fcs = [x for x in m if isinstance(x, BinaryLinear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(fin, 24)]
    assert type(m[-1]) is nn.Linear and (m[-1].in_features, m[-1].out_features) == (24, 10)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_last_layer_binary_adds_scale() -> None:
    torch.manual_seed(0)
    m = models.create("bitflow_lenet", num_classes=5, last_layer="binary", width=8, fc=32)
    assert isinstance(m[-1], Scale)
    assert isinstance(m[-2], BinaryLinear) and (m[-2].in_features, m[-2].out_features) == (32, 5)
    assert isinstance(m[-3], nn.BatchNorm1d)
    assert not any(type(x) is nn.Linear for x in m)
    y = m(torch.randn(3, 1, 28, 28))
    assert y.shape == (3, 5)
    y.sum().backward()
    assert m[-1].scale.grad is not None
    m.eval()
    with torch.no_grad():
        m[-1].scale.fill_(2.0)
        y2 = m(torch.randn(3, 1, 28, 28))
        # output = 2 * alpha_o * integer in [-32, 32] (32 +-1 inputs: same parity as 32)
        ints = y2 / (2.0 * Q.get("xnor").decompose(m[-2].weight)[1])
    # y2 = fl(fl(integer alpha) 2) and the division by 2 alpha: 2 roundings of a value <= 32
    # (the binary layer has no bias; * 2 and / 2 are exact): within gamma_2 * 32 of an integer
    assert torch.allclose(ints, ints.round(), rtol=0, atol=gamma(2) * 32)
    assert ints.abs().max() <= 32 and torch.all(ints.round() % 2 == 0)


def test_first_layer_int8() -> None:
    torch.manual_seed(0)
    for name in ("bitflow_lenet", "lenet", "bitflow_vgg_small"):
        m = models.create(name, first_layer="int8", width=8, fc=16)
        assert isinstance(m[0], Int8Conv2d)
        x = torch.randint(0, 256, (2, 1, 28, 28)).float() / 255
        assert m(x).shape == (2, 10)
    assert type(models.create("bitflow_lenet")[0]) is nn.Conv2d  # default: float first layer


def test_options_reach_the_layers() -> None:
    m = models.create(
        "bitflow_vgg_small",
        width=4,
        fc=8,
        weight_quantizer="sign",
        input_quantizer="approx_sign",
        pad_value=1,
        relu=False,
        in_channels=3,
        num_classes=7,
        last_layer="binary",
    )
    layers = binary_layers(m)
    assert len(layers) == 4 + 1 + 1  # 4 binary convs, 1 binary FC, binary classifier
    for layer in layers.values():
        assert isinstance(layer.weight_quantizer, Q.SignWeight)
        assert isinstance(layer.input_quantizer, Q.ApproxSign)
        if isinstance(layer, BinaryConv2d):
            assert layer.pad_value == 1.0
    mods = list(m)
    for i, x in enumerate(mods[:-2]):
        if isinstance(x, (BinaryConv2d, BinaryLinear)):
            assert not isinstance(mods[i + 1], nn.ReLU)
    assert isinstance(mods[-1], Scale)
    assert m(torch.randn(2, 3, 28, 28)).shape == (2, 7)
    assert (m.in_channels, m.num_classes, m.inference) == (3, 7, "bitflow")


def test_image_size_option() -> None:
    m = models.create("bitflow_vgg_small", width=4, fc=8, image_size=32)
    # 32 -> 32 -pool-> 16 -> 16 -pool-> 8 -pool-> 4: FC in = 16 * 4 * 4
    assert next(x for x in m if isinstance(x, BinaryLinear)).in_features == 16 * 16
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "name,kwargs,exc,match",
    [
        ("bitflow_lenet", {"first_layer": "fp16"}, ValueError, "first_layer"),
        ("bitflow_lenet", {"last_layer": "ternary"}, ValueError, "last_layer"),
        ("lenet", {"last_layer": "binary"}, ValueError, "float last layer"),
        ("bitflow_lenet", {"weight_quantizer": "nope"}, KeyError, "nope"),
        ("bitflow_lenet", {"input_quantizer": "nope"}, KeyError, "nope"),
        ("bitflow_lenet", {"input_quantizer": "xnor"}, ValueError, "input_quantizer"),
        ("bitflow_vgg_small", {"pad_value": 2}, ValueError, "pad_value"),
        ("bitflow_lenet", {"num_classes": 0}, ValueError, "num_classes"),
        ("bitflow_vgg_small", {"image_size": 4}, ValueError, "too small"),
        ("bitflow_lenet", {"colour": "red"}, TypeError, "bitflow_lenet"),
        ("bitflow_alexnet", {"inference": "xnor"}, TypeError, "bitflow_alexnet"),
    ],
)
def test_bad_options_raise(name: str, kwargs: dict, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        models.create(name, **kwargs)


def test_bitflow_config_is_recorded_and_rebuilds() -> None:
    kwargs = {"num_classes": 3, "width": 8, "fc": 16, "last_layer": "binary"}
    m = models.create("bitflow_lenet", **kwargs)
    assert m.bitflow_config == {"name": "bitflow_lenet", "kwargs": kwargs}
    kwargs["width"] = 99  # the recorded copy is independent of the caller's dict
    assert m.bitflow_config["kwargs"]["width"] == 8
    cfg = m.bitflow_config
    again = models.create(cfg["name"], **cfg["kwargs"])
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in m.state_dict().items()
    }
    again.load_state_dict(m.state_dict(), strict=True)
    m.eval()
    again.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), again(x))
    assert models.create("lenet").bitflow_config == {"name": "lenet", "kwargs": {}}


def test_register_model_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("lenet")(lambda: nn.Identity())
    assert type(models.create("lenet")) is nn.Sequential


def test_full_precision_twin_rejects_binary_options() -> None:
    for kw in (
        {"relu": False},
        {"weight_quantizer": "sign"},
        {"pad_value": 1},
        {"input_quantizer": "approx_sign"},
    ):
        with pytest.raises(ValueError, match="binary models only"):
            models.create("vgg_small", **kw)

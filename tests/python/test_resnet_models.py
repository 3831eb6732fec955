"""Tests for the residual models (bitflow.models.resnet): Bi-Real-Net 18 / ResNet-20, BitFlow /
XNOR ResNet-18 and the full-precision twins resnet18 / resnet20.

Oracles: a hand-written functional forward from the papers' equations (Bi-Real Eq. 1-8:
``x' = BN(conv(sign x, sign W) * mean|W|) + shortcut(x)`` with ``F.conv2d`` on +-1 tensors; the
BitFlow block ``BN -> sign -> BinConv``), the torch.fx graph of each model (one add per binary
conv for Bi-Real, one per basic block for BitFlow, only the module types the converter accepts),
hand-derived parameter counts (torchvision's ResNet-18 has 11,689,512 parameters), the spatial
arithmetic of the stems (224 -> 112 -> 56 -> 28 -> 14 -> 7), and one optimizer step.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _bounds import assert_within, model_bound, reference_and_bound
from torch import Tensor, fx, nn

from bitflow import models
from bitflow.models.resnet import BinaryBasicBlock, BiRealUnit, ResNet
from bitflow.nn import BinaryConv2d, Int8Conv2d, binary_layers
from bitflow.nn import quantizers as Q

BINARY = ["bireal_resnet18", "bireal_resnet20", "bitflow_resnet18", "xnor_resnet18"]
TWINS = {
    "bireal_resnet18": ("resnet18", {}),
    "bireal_resnet20": ("resnet20", {}),
    "bitflow_resnet18": ("resnet18", {"block": "bitflow"}),
    "xnor_resnet18": ("resnet18", {"block": "bitflow"}),
}
# Small, fast configurations (module layout identical to the defaults, only narrower / smaller).
SMALL: dict[str, dict[str, Any]] = {
    "bireal_resnet18": {"width": 4, "image_size": 32, "in_channels": 1, "num_classes": 10},
    "bireal_resnet20": {"width": 4},
    "bitflow_resnet18": {"width": 4, "image_size": 28, "in_channels": 1, "num_classes": 10},
    "xnor_resnet18": {"width": 4, "image_size": 28, "in_channels": 1, "num_classes": 10},
}
# Module types the converter of issue 10 accepts (Hardtanh only in twins with activation="htanh").
ALLOWED_MODULES = (
    BinaryConv2d,
    Int8Conv2d,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Linear,
    nn.Identity,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm parameters and running statistics (eval mode uses them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


class _Leaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (BinaryConv2d, Int8Conv2d)) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> tuple[fx.Graph, dict[str, nn.Module]]:
    return _Leaves().trace(model), dict(model.named_modules())


# ----------------------------------------------------------------------------- registry, metadata


def test_registry_lists_the_residual_models() -> None:
    names = models.list_models()
    for n in [*BINARY, "resnet18", "resnet20"]:
        assert n in names


@pytest.mark.parametrize("name", BINARY)
def test_metadata_like_the_zoo(name: str) -> None:
    m = models.create(name, **SMALL[name])
    kw = SMALL[name]
    assert m.bitflow_config == {"name": name, "kwargs": kw}
    assert (m.image_size, m.in_channels) == (kw.get("image_size", 28), kw.get("in_channels", 1))
    assert m.num_classes == kw.get("num_classes", 10)
    assert m.inference == ("xnor" if name.startswith("xnor") else "bitflow")
    assert m.residual == "float"
    assert models.create("resnet20").inference == "float"


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("name", "kw", "sizes"),
    [
        ("bireal_resnet20", {}, [28, 14, 7]),
        ("bireal_resnet20", {"width": 4, "image_size": 32, "in_channels": 3}, [32, 16, 8]),
        # stride-2 stem: (28 + 2 - 3) // 2 + 1 = 14, then 14 -> 7 -> ceil(7/2) = 4
        ("bireal_resnet20", {"width": 4, "stem": "s2", "downsample": "conv"}, [14, 7, 4]),
        # ImageNet stem on a small input: 64 -> conv/2 32 -> maxpool/2 16 -> 16, 8, 4, 2
        (
            "bireal_resnet18",
            {"width": 4, "image_size": 64, "num_classes": 7, "stem": "imagenet"},
            [16, 8, 4, 2],
        ),
        (
            "bireal_resnet18",
            {"width": 4, "image_size": 64},
            [64, 32, 16, 8],
        ),  # "auto" -> cifar below 112
        (
            "bireal_resnet18",
            {"width": 4, "image_size": 28, "in_channels": 1, "downsample": "conv"},
            [28, 14, 7, 4],
        ),
        (
            "bitflow_resnet18",
            {"width": 4, "image_size": 28, "in_channels": 1, "num_classes": 10},
            [28, 14, 7, 4],
        ),
        (
            "xnor_resnet18",
            {"width": 4, "image_size": 112, "num_classes": 5},
            [28, 14, 7, 4],
        ),  # 112 -> 56 -> 28
        ("resnet18", {"width": 4, "image_size": 64}, [64, 32, 16, 8]),
        ("resnet20", {"width": 4, "block": "bitflow"}, [28, 14, 7]),
    ],
)
def test_output_and_stage_shapes(name: str, kw: dict[str, Any], sizes: list[int]) -> None:
    """Each stage doubles the width and halves the map (ceil); the stem keeps the width."""
    m = models.create(name, **kw).eval()
    w = kw.get("width", 16)
    x = torch.rand(2, m.in_channels, m.image_size, m.image_size)
    seen: list[tuple[int, ...]] = []
    hooks = [
        u.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape))) for u in m.units
    ]
    with torch.no_grad():
        assert tuple(m.stem(x).shape) == (2, w, sizes[0], sizes[0])
        y = m(x)
    for h in hooks:
        h.remove()
    assert tuple(y.shape) == (2, m.num_classes)
    per_stage = len(m.units) // len(sizes)
    got = [seen[i * per_stage + per_stage - 1] for i in range(len(sizes))]
    assert got == [(2, w * 2**i, s, s) for i, s in enumerate(sizes)]


def test_bireal_resnet18_imagenet_layout_at_224() -> None:
    """Shapes only (meta tensors: no memory, no compute): 224 -> 112 -> 56, stages 56/28/14/7."""
    with torch.device("meta"):
        m = models.create("bireal_resnet18")
        x = torch.empty(1, 3, 224, 224)
        s = m.stem(x)
        assert tuple(s.shape) == (1, 64, 56, 56)
        h = s
        outs = []
        for u in m.units:
            h = u(h)
            outs.append(tuple(h.shape[1:]))
        assert outs[3] == (64, 56, 56) and outs[7] == (128, 28, 28) and outs[11] == (256, 14, 14)
        assert outs[15] == (512, 7, 7)
        assert tuple(m.head(h).shape) == (1, 1000)
    stem = m.stem
    assert (stem[0].kernel_size, stem[0].stride, stem[0].padding) == ((7, 7), (2, 2), (3, 3))
    assert [type(t) for t in stem] == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.MaxPool2d,
        nn.Identity,
    ]  # Bi-Real: no ReLU


def test_odd_map_with_avgpool_downsample_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"stage 4 downsamples a 7x7 map.*downsample='conv'"):
        models.create("bireal_resnet18", image_size=28, in_channels=1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"residual": "int", "first_layer": "float"}, r"residual='int' needs first_layer='int8'"),
        ({"residual": "int", "downsample": "avgpool"}, r"residual='int' needs downsample='binary'"),
        (
            {"residual": "int", "weight_quantizer": "xnor"},
            r"residual='int' needs weight_quantizer='sign'",
        ),
        ({"residual": "fixed"}, "residual must be one of"),
        ({"stem": "big"}, "stem must be one of"),
        ({"first_layer": "int4"}, "first_layer must be"),
        ({"downsample": "maxpool"}, "downsample must be one of"),
        ({"num_classes": 0}, "num_classes"),
        ({"width": 0}, "width"),
        ({"widths": [16, 32]}, r"widths must be 3 positive integers"),
        ({"widths": [16, 0, 64]}, r"widths must be 3 positive integers"),
        ({"widths": [16, 32.5, 64]}, r"widths must be 3 positive integers"),
    ],
)
def test_bad_options(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        models.create("bireal_resnet20", **kw)


@pytest.mark.parametrize("name", ["bitflow_resnet18", "xnor_resnet18"])
def test_int_residual_needs_the_binary_bireal_layout(name: str) -> None:
    with pytest.raises(ValueError, match="residual='int' needs the binary Bi-Real layout"):
        models.create(name, residual="int")


def test_twin_options() -> None:
    with pytest.raises(ValueError, match="activation must be one of"):
        models.create("resnet20", activation="gelu")
    with pytest.raises(ValueError, match="block must be"):
        models.create("resnet20", block="dense")
    with pytest.raises(ValueError, match="relu applies to block='bitflow' only"):
        models.create("resnet20", relu=False)
    assert models.create("resnet20", block="bitflow", relu=False).units[0].act1 is None
    with pytest.raises(TypeError, match="resnet20"):  # binary-only options are not twin options
        models.create("resnet20", input_quantizer="ste_sign")


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    ("name", "n_bin", "n_add"),
    [
        ("bireal_resnet18", 16, 16),
        ("bireal_resnet20", 18, 18),
        ("bitflow_resnet18", 16, 8),
        ("xnor_resnet18", 16, 8),
    ],
)
def test_binary_convs_and_their_shortcuts_in_the_graph(name: str, n_bin: int, n_add: int) -> None:
    """Bi-Real: one add per binary conv, ``add(BN(BinConv(x)), shortcut(x))`` with the same ``x``
    (so every binary conv has its own shortcut). BitFlow: one add per basic block of 2 convs."""
    m = models.create(name, **SMALL[name])
    convs = [c for c in binary_layers(m).values()]
    assert len(convs) == n_bin and all(isinstance(c, BinaryConv2d) for c in convs)
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    graph, mods = _trace(m)
    adds = [
        n for n in graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)
    ]
    assert len(adds) == n_add

    def module(n: fx.Node) -> nn.Module | None:
        return mods[n.target] if n.op == "call_module" else None  # type: ignore[index]

    # The residual stream values: the stem's output and every unit's output (``requant``).
    requants = [m.stem[-1], *(u.requant for u in m.units)]
    assert all(isinstance(r, nn.Identity) for r in requants)
    for a in adds:
        main, skip = a.args
        assert isinstance(module(main), (nn.BatchNorm2d, BinaryConv2d))  # type: ignore[arg-type]
        # Walk the main branch back through its binary conv(s) to the unit's input.
        n, n_conv = main, 0
        while all(module(n) is not r for r in requants):
            n_conv += isinstance(module(n), BinaryConv2d)  # type: ignore[arg-type]
            n = n.args[0]  # type: ignore[assignment]
        assert n_conv == (1 if name.startswith("bireal") else 2)
        # The skip branch starts from the same value.
        s = skip
        while s is not n:
            assert isinstance(module(s), (nn.Identity, nn.AvgPool2d, nn.BatchNorm2d, nn.Conv2d))  # type: ignore[arg-type]
            assert not isinstance(module(s), BinaryConv2d)  # type: ignore[arg-type]
            s = s.args[0]  # type: ignore[assignment]


@pytest.mark.parametrize("name", [*BINARY, "resnet18", "resnet20"])
@pytest.mark.parametrize("first_layer", ["float", "int8"])
def test_only_convertible_modules_and_ops(name: str, first_layer: str) -> None:
    kw = SMALL.get(name, {"width": 4, "image_size": 32, "num_classes": 10})
    m = models.create(name, first_layer=first_layer, **kw)
    graph, mods = _trace(m)
    for n in graph.nodes:
        if n.op == "call_module":
            assert isinstance(mods[n.target], ALLOWED_MODULES), n.target
            if isinstance(mods[n.target], nn.AvgPool2d):
                p = mods[n.target]
                assert (p.kernel_size, p.stride, p.padding, p.ceil_mode) == (2, 2, 0, False)
        elif n.op == "call_function":
            assert n.target in (operator.add, torch.add), n.target
        else:
            assert n.op in ("placeholder", "output"), (n.op, n.target)
    assert isinstance(m.stem[0], Int8Conv2d if first_layer == "int8" else nn.Conv2d)
    used = Counter(
        type(q).__name__
        for c in binary_layers(m).values()
        for q in (c.input_quantizer, c.weight_quantizer)
    )
    if name.startswith("bireal"):
        assert used == Counter(
            {"ApproxSign": len(binary_layers(m)), "XnorWeight": len(binary_layers(m))}
        )
    elif name in BINARY:
        assert used == Counter({"SteSign": 16, "XnorWeight": 16})


# ----------------------------------------------------------------------------- functional oracle


def _bn(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    s = torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1) * bn.weight.view(
        1, -1, 1, 1
    ) + bn.bias.view(1, -1, 1, 1)


def _sign(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0, -1.0)  # sign(0) = +1 (BitFlow-Net Eq. 2)


def _binconv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``(sign(x) (*) sign(W)) * alpha``, ``alpha_o = mean |W_o|`` (XNOR-Net / Bi-Real Eq. 6)."""
    w = conv.weight
    alpha = w.abs().mean(dim=(1, 2, 3))
    return F.conv2d(_sign(x), _sign(w), None, conv.stride, conv.padding) * alpha.view(1, -1, 1, 1)


def _shortcut(x: Tensor, sc: nn.Module, downsample: str) -> Tensor:
    if isinstance(sc, nn.Identity):
        return x
    conv, bn = (
        [t for t in sc if isinstance(t, nn.Conv2d)][0],
        [t for t in sc if isinstance(t, nn.BatchNorm2d)][0],
    )
    if downsample == "avgpool":
        if x.shape[1] != conv.out_channels and any(isinstance(t, nn.AvgPool2d) for t in sc):
            x = F.avg_pool2d(x, 2, 2)
        return _bn(F.conv2d(x, conv.weight), bn)
    return _bn(F.conv2d(x, conv.weight, stride=conv.stride), bn)


def _reference_forward(m: ResNet, x: Tensor, downsample: str, imagenet: bool) -> Tensor:
    """The papers' equations with plain tensor ops (eval-mode BN). Bi-Real: stem conv -> BN
    (-> max-pool), no head BN; BitFlow: stem conv -> BN -> ReLU (-> max-pool), head BN -> ReLU."""
    bireal = isinstance(m.units[0], BiRealUnit)
    st = m.stem
    h = _bn(F.conv2d(x, st[0].weight, st[0].bias, st[0].stride, st[0].padding), st[1])
    if not bireal:
        h = h.clamp_min(0)
    if imagenet:
        h = F.max_pool2d(h, 3, 2, 1)
    for u in m.units:
        if isinstance(u, BiRealUnit):  # x' = BN(BinConv(sign x)) + shortcut(x)
            h = _bn(_binconv(h, u.conv), u.bn) + _shortcut(h, u.shortcut, downsample)
        else:  # BN -> sign -> BinConv -> ReLU, BN -> sign -> BinConv, + shortcut
            assert isinstance(u, BinaryBasicBlock)
            t = _binconv(_bn(h, u.bn1), u.conv1).clamp_min(0)
            h = _binconv(_bn(t, u.bn2), u.conv2) + _shortcut(h, u.shortcut, downsample)
    hd = list(m.head)
    if not bireal:
        h = _bn(h, hd[0]).clamp_min(0)
    return F.linear(h.mean(dim=(2, 3)), hd[-1].weight, hd[-1].bias)


@pytest.mark.parametrize(
    ("name", "kw", "downsample"),
    [
        ("bireal_resnet20", {"width": 4}, "avgpool"),
        ("bireal_resnet18", {"width": 4, "image_size": 64}, "avgpool"),
        ("bireal_resnet18", {"width": 4, "image_size": 64, "stem": "imagenet"}, "avgpool"),
        ("xnor_resnet18", {"width": 4, "image_size": 112, "num_classes": 3}, "conv"),
        (
            "bireal_resnet18",
            {"width": 4, "image_size": 28, "in_channels": 1, "downsample": "conv"},
            "conv",
        ),
        (
            "bitflow_resnet18",
            {"width": 4, "image_size": 28, "in_channels": 1, "num_classes": 10},
            "conv",
        ),
    ],
)
def test_forward_equals_the_papers_equations(
    name: str, kw: dict[str, Any], downsample: str
) -> None:
    torch.manual_seed(1)
    m = models.create(name, **kw)
    _randomize_bn(m)
    m.eval()
    x = torch.rand(3, m.in_channels, m.image_size, m.image_size)
    with torch.no_grad():
        got, want = (
            m(x),
            _reference_forward(
                m, x, downsample, m.image_size >= 112 or kw.get("stem") == "imagenet"
            ),
        )  # type: ignore[arg-type]
    # two float32 executions of the same network (same sign decisions, else this fails): each
    # within E of the exact value (float_error_bounds of the converted model), 2 E apart
    assert_within(
        got, want, model_bound(m, x.numpy()), name, empirical=(1e-4, 1e-4)
    )  # measured <= 9.6e-7


def test_each_bireal_unit_keeps_its_input_when_its_conv_branch_is_zero() -> None:
    """BN with gamma = beta = 0 removes the binary branch: every identity unit passes its input
    through unchanged (``x' = 0 + x``), i.e. each binary conv has its own shortcut."""
    m = models.create("bireal_resnet20", width=4).eval()
    _randomize_bn(m)
    n_identity = 0
    for u in m.units:
        h = torch.randn(2, u.conv.in_channels, 8, 8)
        with torch.no_grad():
            assert not torch.equal(u(h), h) or not isinstance(u.shortcut, nn.Identity)
            u.bn.weight.zero_()
            u.bn.bias.zero_()
            out, skip = u(h), u.shortcut(h)
        assert torch.equal(out, skip)  # only the shortcut is left
        if isinstance(u.shortcut, nn.Identity):
            n_identity += 1
            assert torch.equal(out, h)
    assert n_identity == 18 - 2  # all but the two widening units


# ----------------------------------------------------------------------------- twins, parameters


@pytest.mark.parametrize("name", BINARY)
def test_twin_has_the_binary_models_parameters(name: str) -> None:
    """Same parameter names and shapes, so a trained twin initialises the binary model
    (``--init-from``, Bi-Real Sec. 3.3) with a strict ``load_state_dict``."""
    twin_name, twin_kw = TWINS[name]
    kw = SMALL[name]
    b, f = models.create(name, **kw), models.create(twin_name, **twin_kw, **kw)
    sb, sf = b.state_dict(), f.state_dict()
    assert {k: tuple(v.shape) for k, v in sb.items()} == {k: tuple(v.shape) for k, v in sf.items()}
    b.load_state_dict(sf)  # strict
    fp_convs = [n for n, c in f.named_modules() if type(c) is nn.Conv2d and c.kernel_size == (3, 3)]
    assert fp_convs[1:] == list(binary_layers(b))  # stem conv is 3x3 in these small configurations
    assert not binary_layers(f)


def test_per_stage_widths() -> None:
    """``widths`` sets each stage's channels (the stem takes the first); the twin takes the same
    option and keeps the binary model's parameter shapes."""
    b = models.create("bireal_resnet20", widths=[8, 24, 40])
    f = models.create("resnet20", widths=[8, 24, 40], activation="htanh")
    assert [c.out_channels for c in binary_layers(b).values()] == [8] * 6 + [24] * 6 + [40] * 6
    assert b.head[-1].in_features == 40 and b.stem[0].out_channels == 8
    sb, sf = b.state_dict(), f.state_dict()
    assert {k: tuple(v.shape) for k, v in sb.items()} == {k: tuple(v.shape) for k, v in sf.items()}
    # the default is width * 2^i
    assert [
        c.out_channels for c in binary_layers(models.create("bireal_resnet20", width=4)).values()
    ][::6] == [4, 8, 16]


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_hand_derivation() -> None:
    # Bi-Real-18 / its twin at 224, 1000 classes: torchvision's ResNet-18 count 11,689,512, plus the
    # bias of our stem conv (64; the zoo's first layers all carry one):
    #   stem 7*7*3*64 + BN 2*64                                      =      9,536
    #   stage 1: 4 x (9*64*64 + 2*64)                                 =    147,968
    #   stage 2: 9*64*128 + 3*9*128^2 + 4*2*128 + (64*128 + 2*128)    =    525,568
    #   stage 3: 9*128*256 + 3*9*256^2 + 4*2*256 + (128*256 + 2*256)  =  2,099,712
    #   stage 4: 9*256*512 + 3*9*512^2 + 4*2*512 + (256*512 + 2*512)  =  8,393,728
    #   fc 512*1000 + 1000                                            =    513,000
    with torch.device("meta"):
        assert _n(models.create("resnet18")) == 11_689_512 + 64
        assert _n(models.create("bireal_resnet18")) == 11_689_512 + 64
        # BitFlow order: bn1 has c_in channels (-2*(64+128+256) for the 3 widening blocks) and the
        # head has BN(512) (+2*512): 11,689,512 - 896 + 1024.
        assert _n(models.create("bitflow_resnet18")) == 11_689_640 + 64
        assert _n(models.create("resnet18", block="bitflow")) == 11_689_640 + 64
    # Bi-Real ResNet-20, w = 16, 3 input channels, 10 classes:
    #   stem 9*3*16 + 16 (bias) + 32 = 480; stage 1: 6 x (9*16*16 + 32) = 14,016
    #   stage 2: 9*16*32 + 5*9*32^2 + 6*64 + (16*32 + 64) = 51,648
    #   stage 3: 9*32*64 + 5*9*64^2 + 6*128 + (32*64 + 128) = 205,696;  fc 64*10 + 10 = 650
    assert _n(models.create("bireal_resnet20", in_channels=3)) == 272_490
    assert _n(models.create("resnet20", in_channels=3)) == 272_490
    assert _n(models.create("bireal_resnet20")) == 272_490 - 9 * 2 * 16  # 1 input channel


# ----------------------------------------------------------------------------- training


def test_bireal_sign_gradient_is_approx_sign_in_the_model() -> None:
    """The gradient through a unit's binary branch is Bi-Real's ``2 - 2|x|`` on [-1, 1], 0
    outside (the elementwise rule itself is tested in test_nn.py)."""
    m = models.create("bireal_resnet20", width=4)
    u = m.units[0]
    x = torch.linspace(-1.5, 1.5, 2 * 4 * 5 * 5).view(2, 4, 5, 5).requires_grad_(True)
    q = u.conv.input_quantizer(x)
    g = torch.randn_like(q)
    (q * g).sum().backward()
    want = g * (2 - 2 * x.detach().abs()).clamp_min(0)
    torch.testing.assert_close(x.grad, want)
    assert isinstance(u.conv.input_quantizer, Q.ApproxSign)


@pytest.mark.parametrize("name", ["bireal_resnet20", "bitflow_resnet18", "resnet20"])
def test_one_training_step(name: str) -> None:
    torch.manual_seed(0)
    m = models.create(name, **SMALL.get(name, {"width": 4}))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    loss = F.cross_entropy(m(x), y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    no_grad = [
        k for k, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert not no_grad
    opt.step()
    changed = [k for k, p in m.named_parameters() if not torch.equal(p.detach(), before[k])]
    conv_keys = [
        k
        for k in before
        if k.endswith("conv.weight") or k.endswith("conv1.weight") or k.endswith("conv2.weight")
    ]
    assert conv_keys and set(conv_keys) <= set(changed)
    assert torch.isfinite(F.cross_entropy(m(x), y))


# ----------------------------------------------------------------------------- conversion contract


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("bireal_resnet20", {"width": 4}),
        ("bireal_resnet20", {"width": 4, "first_layer": "int8", "downsample": "conv"}),
        ("bireal_resnet20", {"width": 4, "stem": "s2", "downsample": "conv"}),
        ("bireal_resnet20", {"widths": [3, 5, 13]}),
        ("bireal_resnet18", {"width": 4, "image_size": 64, "stem": "imagenet", "in_channels": 3}),
        ("bitflow_resnet18", SMALL["bitflow_resnet18"]),
        ("xnor_resnet18", SMALL["xnor_resnet18"]),
        ("resnet20", {"width": 4}),
    ],
)
def test_converts_and_the_engine_matches(name: str, kw: dict[str, Any]) -> None:
    """The converter of issue 10 takes these models as they are: its reference executor predicts
    what PyTorch predicts, and the engine equals the reference on every kernel set."""
    import numpy as np

    from bitflow.convert import convert
    from bitflow.engine import Engine, available_kernels

    torch.manual_seed(0)
    m = models.create(name, **kw)
    _randomize_bn(m)
    m.eval()
    x = np.random.default_rng(0).random(
        (4, m.in_channels, m.image_size, m.image_size), dtype=np.float32
    )
    graph = convert(m)
    ref, bound = reference_and_bound(graph, x)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    # PyTorch and the reference executor: the same sign decisions (else this fails), so at most
    # 2 E apart (float_error_bounds: the float stem, BatchNorms, residual adds, classifier)
    assert_within(
        ref, want, bound, name, empirical=(1e-4, 1e-4)
    )  # measured <= 9.6e-7 (the bound is vacuous on the deepest nets: forward rule only)
    for k in available_kernels():
        np.testing.assert_array_equal(Engine(graph, kernels=k).predict(x), ref.argmax(1))

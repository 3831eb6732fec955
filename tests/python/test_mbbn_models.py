"""MBBN models (bitflow.models.mbbn): structure, mixed precision, training, progressive init.

Oracles: the layer plan of ``bitflow_vgg_small`` (the zoo) for the structure; the cross-entropy
loss of the same fixed batch before and after optimisation steps for training; the source
state dict itself for progressive initialisation; the trainer's own result file for the
end-to-end run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitflow.models import create
from bitflow.models.mbbn import per_layer_bits
from bitflow.nn import MBitConv2d, MBitLinear, clip_weights_
from bitflow.nn.mbbn import (
    MBitEncoder,
    OddLinearQuantizer,
    OddLinearWeight,
    init_from_higher,
    mbit_layers,
)

TINY = {"width": 4, "fc": 16}


def _bits(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.bits_a, m.bits_w) for m in mbit_layers(model).values()]


def test_vgg_small_structure_matches_the_bitflow_plan() -> None:
    model = create("mbbn_vgg_small", bits_a=2, bits_w=3)
    ref = create("bitflow_vgg_small")
    assert isinstance(model, nn.Sequential)
    assert isinstance(model[0], nn.Conv2d) and not isinstance(
        model[0], MBitConv2d
    )  # float first layer
    assert type(model[-1]) is nn.Linear  # float classifier
    # same module kinds and shapes at every index, binary layers replaced by MBit layers
    assert len(model) == len(ref)
    for a, b in zip(model, ref, strict=True):
        assert isinstance(a, type(b))
        if hasattr(b, "weight") and b.weight is not None:
            assert a.weight.shape == b.weight.shape
    assert _bits(model) == [(2, 3)] * 5
    assert model.mbbn == {
        "bits_a": [2] * 5,
        "bits_w": [3] * 5,
        "method": "encoder",
        "activation": "htanh",
    }
    assert model.bitflow_config == {"name": "mbbn_vgg_small", "kwargs": {"bits_a": 2, "bits_w": 3}}
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_mixed_precision_lists() -> None:
    model = create(
        "mbbn_vgg_small", bits_a=[1, 2, 3, 4, 5], bits_w=[2, 2, 3, 3, 4], method="quantizer", **TINY
    )
    assert _bits(model) == [(1, 2), (2, 2), (3, 3), (4, 3), (5, 4)]
    assert all(
        isinstance(m.input_quantizer, OddLinearQuantizer) for m in mbit_layers(model).values()
    )
    with pytest.raises(ValueError, match="5 binary layers"):
        create("mbbn_vgg_small", bits_a=[2, 2], **TINY)
    with pytest.raises(ValueError, match="1..8"):
        create("mbbn_vgg_small", bits_w=9, **TINY)
    with pytest.raises(TypeError, match="int"):
        create("mbbn_vgg_small", bits_a="2", **TINY)
    # ResNet-18: 16 binary convs; 4 values = one per stage (Table IV), or 16 values
    r = create(
        "mbbn_resnet18",
        num_classes=10,
        in_channels=1,
        image_size=28,
        width=4,
        bits_a=4,
        bits_w=[5, 3, 2, 2],
    )
    assert _bits(r) == [(4, 5)] * 4 + [(4, 3)] * 4 + [(4, 2)] * 8
    per_conv = list(range(1, 9)) * 2
    r = create(
        "mbbn_resnet18",
        num_classes=10,
        in_channels=1,
        image_size=28,
        width=4,
        bits_a=per_conv,
        bits_w=1,
    )
    assert [m for m, _ in _bits(r)] == per_conv
    with pytest.raises(ValueError, match="16 or 4"):
        create("mbbn_resnet18", image_size=28, width=4, bits_a=[2, 2, 2])
    assert per_layer_bits(3, 2, "b") == [3, 3]


def test_option_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="method"):
        create("mbbn_vgg_small", method="alg3", **TINY)
    with pytest.raises(ValueError, match="activation"):
        create("mbbn_resnet18", activation="relu", image_size=28, width=4)
    with pytest.raises(ValueError, match="constant"):
        create("mbbn_vgg_small", bits_a=1, activation="hrelu", **TINY)
    with pytest.raises(ValueError, match="constant"):
        create("mbbn_resnet18", bits_a=[2, 2, 1, 2], activation="hrelu", image_size=28, width=4)
    with pytest.raises(ValueError, match="stem"):
        create("mbbn_resnet18", stem="tiny", image_size=28, width=4)
    with pytest.raises(ValueError, match="too small"):
        create("mbbn_resnet18", image_size=4, width=4)


def test_resnet18_shapes_and_full_precision_shortcuts() -> None:
    r = create(
        "mbbn_resnet18", num_classes=10, in_channels=1, image_size=28, width=8, bits_a=2, bits_w=2
    )
    assert r(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    convs = [m for m in r.modules() if isinstance(m, nn.Conv2d)]
    mbit = [m for m in convs if isinstance(m, MBitConv2d)]
    assert len(mbit) == 16
    plain = [m for m in convs if not isinstance(m, MBitConv2d)]
    assert len(plain) == 1 + 3  # stem + three 1x1 downsample shortcuts, full precision
    assert r.stem[0].kernel_size == (3, 3)  # CIFAR-style stem for 28x28
    big = create("mbbn_resnet18", width=4)
    assert big.stem[0].kernel_size == (7, 7) and big(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def _loss_drops(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        clip_weights_(model)
    with torch.no_grad():
        after = float(F.cross_entropy(model(x), y))
    return before, after


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("mbbn_vgg_small", {"method": "encoder", "bits_a": 2, "bits_w": 2}),
        (
            "mbbn_vgg_small",
            {"method": "quantizer", "bits_a": 3, "bits_w": 2, "activation": "hrelu"},
        ),
        ("mbbn_vgg_small", {"method": "encoder", "bits_a": 1, "bits_w": 1}),
        (
            "mbbn_resnet18",
            {"method": "encoder", "bits_a": 2, "bits_w": 2, "width": 4, "gradient": "ste"},
        ),
        ("mbbn_resnet18", {"method": "quantizer", "bits_a": [4, 3, 2, 2], "bits_w": 2, "width": 4}),
    ],
)
def test_training_steps_lower_the_loss_on_a_fixed_batch(name: str, kw: dict[str, object]) -> None:
    torch.manual_seed(0)
    extra = {"width": 8, "fc": 32} if name == "mbbn_vgg_small" else {}
    model = create(name, num_classes=10, in_channels=1, image_size=28, **{**extra, **kw})
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    before, after = _loss_drops(model, x, y, steps=5, lr=5e-3)
    assert after < before - 0.05, (before, after)


def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for n, b in model.named_buffers() if "running" in n]:
            t.add_(0.1 * torch.rand(t.shape, generator=g, dtype=t.dtype))


def test_init_from_higher_copies_latent_weights_and_bn() -> None:
    torch.manual_seed(0)
    high = create("mbbn_vgg_small", bits_a=4, bits_w=4, method="quantizer", **TINY)
    _perturb(high, 1)
    low = create("mbbn_vgg_small", bits_a=2, bits_w=[1, 2, 2, 2, 3], method="quantizer", **TINY)
    copied = init_from_higher(low, high.state_dict())
    hs, ls = high.state_dict(), low.state_dict()
    assert set(copied) == set(ls) == set(hs)
    for k in hs:
        assert torch.equal(hs[k], ls[k]), k
    assert _bits(low) == [(2, 1), (2, 2), (2, 2), (2, 2), (2, 3)]  # bit widths stay the low model's


def test_init_from_full_precision_twin_reinitialises_ranges() -> None:
    torch.manual_seed(0)
    fp = create("vgg_small", **TINY)  # the full-precision twin: same indices and shapes
    _perturb(fp, 2)
    low = create("mbbn_vgg_small", bits_a=8, bits_w=8, method="quantizer", **TINY)
    copied = init_from_higher(low, fp.state_dict())
    assert set(copied) == set(fp.state_dict())
    for name, layer in mbit_layers(low).items():
        assert torch.equal(layer.weight.detach(), fp.state_dict()[f"{name}.weight"])
        wq = layer.weight_quantizer
        assert isinstance(wq, OddLinearWeight)
        torch.testing.assert_close(wq.t.detach(), layer.weight.detach().abs().max().reshape(1))


def test_init_from_higher_rejects_other_architectures() -> None:
    torch.manual_seed(0)
    low = create("mbbn_vgg_small", bits_a=2, bits_w=2, **TINY)
    before = {k: v.clone() for k, v in low.state_dict().items()}
    wider = create("mbbn_vgg_small", bits_a=4, bits_w=4, width=8, fc=16)
    with pytest.raises(ValueError, match="shape mismatch"):
        init_from_higher(low, wider.state_dict())
    resnet = create("mbbn_resnet18", image_size=28, in_channels=1, width=4)
    with pytest.raises(ValueError, match="missing"):
        init_from_higher(low, resnet.state_dict())
    for k, v in low.state_dict().items():
        assert torch.equal(v, before[k])  # unchanged on error
    with pytest.raises(TypeError):
        init_from_higher(low, [1, 2])  # type: ignore[arg-type]


def test_encoder_method_uses_algorithm_1_quantizers() -> None:
    model = create("mbbn_vgg_small", bits_a=3, bits_w=2, gradient="ste", **TINY)
    for layer in mbit_layers(model).values():
        assert (
            isinstance(layer.input_quantizer, MBitEncoder)
            and layer.input_quantizer.gradient == "ste"
        )
    assert isinstance(list(mbit_layers(model).values())[-1], MBitLinear)


def test_trains_with_the_existing_trainer(tmp_path: Path) -> None:
    from bitflow.train import TrainConfig, load_checkpoint, train
    from bitflow.train.checkpoint import model_from_checkpoint

    cfg = TrainConfig(
        model="mbbn_vgg_small",
        data="fashion-mnist",
        out=str(tmp_path),
        epochs=1,
        batch_size=64,
        limit_train=256,
        limit_test=128,
        seed=0,
        progress=False,
        model_kwargs={"bits_a": 2, "bits_w": 2, **TINY},
    )
    result = train(cfg)
    assert 0.0 <= result["test_accuracy"] <= 1.0
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["model_config"]["kwargs"]["bits_a"] == 2
    rebuilt, _ = model_from_checkpoint(tmp_path / "last.pt")
    assert _bits(rebuilt) == [(2, 2)] * 5


def test_init_across_methods() -> None:
    torch.manual_seed(0)
    alg2 = create("mbbn_vgg_small", bits_a=4, bits_w=4, method="quantizer", **TINY)
    alg1 = create("mbbn_vgg_small", bits_a=2, bits_w=2, method="encoder", **TINY)
    copied = init_from_higher(alg1, alg2.state_dict())  # the ranges t have no place in alg1
    assert copied and all("quantizer" not in k for k in copied)
    for name, layer in mbit_layers(alg1).items():
        assert torch.equal(layer.weight.detach(), alg2.state_dict()[f"{name}.weight"])


def _quant_mse(v: torch.Tensor, t: float, bits: int, lower: str = "symmetric") -> float:
    """Squared error of the odd-level quantizer with range ``t`` (the definition in
    :func:`bitflow.nn.mbbn.odd_linear_levels`, evaluated independently with torch.round)."""
    a = (1 << bits) - 1
    lo = -t if lower == "symmetric" else 0.0
    y = a * v.double().clamp(lo, t) / t
    lev = (2 * torch.floor(y / 2) + 1).clamp(-a, a)  # nearest odd integer, ties up
    return float(((lev * t / a) - v.double()).pow(2).mean())


def _calibration_batch(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _low_from_fp(seed: int, perturb: int, bits_a: int, bits_w: int) -> torch.nn.Module:
    """A tiny Algorithm 2 MBBN initialised from a perturbed full-precision twin."""
    torch.manual_seed(seed)
    fp = create("vgg_small", **TINY)
    _perturb(fp, perturb)
    low = create("mbbn_vgg_small", bits_a=bits_a, bits_w=bits_w, method="quantizer", **TINY)
    init_from_higher(low, fp.state_dict())
    return low


def test_calibrate_ranges_fits_mse_without_labels() -> None:
    from bitflow.nn.mbbn import calibrate_ranges

    low = _low_from_fp(0, 3, bits_a=3, bits_w=2)
    low.train()
    x, _ = _calibration_batch()
    seen: dict[str, torch.Tensor] = {}
    chosen = calibrate_ranges(low, x)
    assert low.training  # mode restored
    low.eval()
    hooks = [
        m.register_forward_pre_hook(lambda _m, inp, n=n: seen.__setitem__(n, inp[0].detach()))
        for n, m in mbit_layers(low).items()
    ]
    with torch.no_grad():
        low(x)
    for h in hooks:
        h.remove()
    for name, layer in mbit_layers(low).items():
        tw = float(layer.weight_quantizer.t.detach())
        ta = float(layer.input_quantizer.t.detach())
        assert chosen[f"{name}.weight_quantizer.t"] == pytest.approx(tw)
        assert chosen[f"{name}.input_quantizer.t"] == pytest.approx(ta)
        w, xa = layer.weight.detach(), seen[name]
        # The grid minimum is no worse than the naive ranges max|v| and 1.0, and no worse than its
        # grid neighbours (a local minimum of the squared error over t = max|v| j / 96).
        for v, t, bits in ((w, tw, 2), (xa, ta, 3)):
            amax = float(v.abs().max())
            err = _quant_mse(v, t, bits)
            assert err <= _quant_mse(v, amax, bits) + 1e-12
            assert err <= _quant_mse(v, 1.0, bits) + 1e-12 or 1.0 > amax
            for j in (round(t / amax * 96) - 1, round(t / amax * 96) + 1):
                if 1 <= j <= 96:
                    assert err <= _quant_mse(v, amax * j / 96, bits) + 1e-9


def test_calibrate_ranges_with_labels_never_raises_the_loss() -> None:
    from bitflow.nn.mbbn import calibrate_ranges

    low = _low_from_fp(1, 4, bits_a=2, bits_w=2)
    x, y = _calibration_batch()
    low.eval()
    with torch.no_grad():
        before = float(F.cross_entropy(low(x).double(), y))
    calibrate_ranges(low, x, y)
    with torch.no_grad():
        after = float(F.cross_entropy(low(x).double(), y))
    # Every greedy step keeps the current range among its candidates, so the loss cannot rise.
    assert after <= before + 1e-9


def test_calibrate_ranges_leaves_algorithm_1_alone_and_checks_input() -> None:
    from bitflow.nn.mbbn import calibrate_ranges

    enc = create("mbbn_vgg_small", bits_a=2, bits_w=2, method="encoder", **TINY)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    assert calibrate_ranges(enc, _calibration_batch()[0]) == {}
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    with pytest.raises(ValueError, match="non-empty"):
        calibrate_ranges(enc, torch.zeros(0, 1, 28, 28))
    with pytest.raises(ValueError, match="label"):
        calibrate_ranges(enc, torch.zeros(4, 1, 28, 28), torch.zeros(3))


def test_trainer_calibrates_after_init_from(tmp_path: Path) -> None:
    from bitflow.train import TrainConfig, load_checkpoint, train
    from bitflow.train.trainer import _calibrate

    torch.manual_seed(0)
    src = tmp_path / "fp"
    common = {
        "data": "fashion-mnist",
        "epochs": 1,
        "batch_size": 64,
        "limit_train": 128,
        "limit_test": 64,
        "progress": False,
    }
    train(TrainConfig(model="vgg_small", out=str(src), model_kwargs=dict(TINY), **common))  # type: ignore[arg-type]
    kw = {"bits_a": 3, "bits_w": 3, "method": "quantizer", **TINY}
    ranges = {}
    for cal in (True, False):
        out = tmp_path / f"low{cal}"
        # lr 1e-12 (must be > 0): two Adam steps move each parameter by ~2e-12, so the ranges stay
        # where initialisation put them (to pytest.approx's 1e-6 relative tolerance)
        train(
            TrainConfig(
                model="mbbn_vgg_small",
                out=str(out),
                init_from=str(src / "last.pt"),
                calibrate=cal,
                lr=1e-12,
                model_kwargs=kw,
                **common,
            )
        )  # type: ignore[arg-type]
        st = load_checkpoint(out / "last.pt")["model"]
        ranges[cal] = {k: float(v.mean()) for k, v in st.items() if k.endswith("quantizer.t")}
    fresh = create("mbbn_vgg_small", **kw)  # type: ignore[arg-type]
    init_from_higher(fresh, load_checkpoint(src / "last.pt")["model"])
    expect_uncal = {
        f"{n}.{q}.t": float(getattr(m, q).t.detach().mean())
        for n, m in mbit_layers(fresh).items()
        for q in ("input_quantizer", "weight_quantizer")
    }
    assert ranges[False] == pytest.approx(expect_uncal)  # copied / max|w| / 1.0
    assert all(v == 1.0 for k, v in ranges[False].items() if k.endswith("input_quantizer.t"))
    assert ranges[True] != pytest.approx(ranges[False])
    from bitflow.data import get_data

    data = get_data("fashion-mnist", val_fraction=0.1, seed=0, limit_train=128, limit_test=64)
    expect_cal = _calibrate(fresh, data.train, 0)  # the trainer's seeded training subset
    assert ranges[True] == pytest.approx(expect_cal)

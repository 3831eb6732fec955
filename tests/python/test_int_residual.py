"""The fixed-point residual stream (``residual="int"``, issue 10 Sec. 3): the requantization is
exact against rational arithmetic, the native ops equal the reference, and a converted int-stream
Bi-Real network has every sign decided in integers: ``verify`` reports 0 sign mismatches, 0
prediction mismatches and 0 near-threshold values, and the engine equals the reference executor
op by op (integers and bits identical) on every kernel set."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from bitflow import _native as N
from bitflow import models
from bitflow.convert import UnsupportedLayerError, convert, verify
from bitflow.engine import Engine, available_kernels
from bitflow.engine.check import compare_with_reference
from bitflow.ir import pack_bits
from bitflow.ir.graph import GraphError, Op
from bitflow.ir.reference import run_op
from bitflow.models.resnet import build_resnet
from bitflow.nn import BinaryConv2d, FixedPointBN, Int8Conv2d, StreamClamp
from bitflow.nn.fixedpoint import SHIFT


def _floor_exact(u: int, m: int, b: int, shift: int) -> int:
    return math.floor(Fraction(u * m + b, 2**shift))


# --------------------------------------------------------------------------- native ops
@pytest.mark.parametrize("clamp", [None, (-5, 7)])
def test_requant_i32_native_equals_exact_integers(clamp: tuple[int, int] | None) -> None:
    rng = np.random.default_rng(0)
    c = 13
    x = rng.integers(-(2**20), 2**20, size=(3, 5, 4, c)).astype(np.int32)
    x.flat[:4] = [0, -1, 2**20 - 1, -(2**20)]
    m = rng.integers(-(2**30), 2**30, size=c).astype(np.int64)
    b = rng.integers(-(2**40), 2**40, size=c).astype(np.int64)
    shift = 31
    lo, hi = clamp if clamp is not None else (None, None)
    got = N.requant_i32(x, m, b, shift, lo, hi)
    want = np.array(
        [
            _floor_exact(int(v), int(m[i % c]), int(b[i % c]), shift)
            for i, v in enumerate(x.ravel())
        ],
        dtype=object,
    )
    if clamp is not None:
        want = np.clip(want, *clamp)
    assert np.array_equal(got.ravel().astype(np.int64), want.astype(np.int64))
    # the op table's reference (graph op) computes the same
    op = Op(
        "requant_i32",
        "r",
        ["x"],
        ["y"],
        {"shift": shift, **({"clamp": list(clamp)} if clamp else {})},
        {"m": "r.m", "b": "r.b"},
    )

    class _G:
        tensors = {"r.m": m, "r.b": b}

    ref = run_op(_G(), op, [x], [])  # type: ignore[arg-type]
    assert np.array_equal(ref, got)


@pytest.mark.parametrize("threads", [1, 3])
def test_requant_i32_wide_multipliers_exact_on_every_path(threads: int) -> None:
    """|m| >= 2^31: a row whose |x| keeps |x m| + |b| < 2^63 runs in int64 (vectorized), any
    other row in 128 bits; both equal exact rational floors, at the int32 extremes too."""
    rng = np.random.default_rng(5)
    c = 19
    m = rng.integers(-(2**40), 2**40, size=c).astype(np.int64)
    m[0], m[1] = 2**40, -(2**40)  # max |m| = 2^40: rows with |x| <= ~2^22.99 fit int64
    b = rng.integers(-(2**61), 2**61, size=c).astype(np.int64)
    x = rng.integers(-(2**22), 2**22, size=(4, 6, c)).astype(np.int32)
    x[1, 2, 3] = np.iinfo(np.int32).min  # these rows need 128 bits
    x[2, 0, 0] = np.iinfo(np.int32).max
    x[3, 5, 7] = 2**23  # just past the int64 bound with |b| near 2^61
    x[0, 0, :2] = [2**22 - 1, -(2**22)]
    shift = 40
    for lo, hi in ((None, None), (-(2**20), 2**20)):
        old = N._set_grain_ns(0.0)
        try:
            got = N.requant_i32(x, m, b, shift, lo, hi, threads)
        finally:
            N._set_grain_ns(old)
        want = np.array(
            [
                _floor_exact(int(v), int(m[i % c]), int(b[i % c]), shift)
                for i, v in enumerate(x.ravel())
            ],
            dtype=object,
        )
        if lo is not None:
            want = np.clip(want, lo, hi)
        assert np.array_equal(got.ravel().astype(np.int64), want.astype(np.int64)), (lo, hi)


def test_int_stream_ops_are_thread_count_invariant_and_take_both_paths() -> None:
    """Large maps split over threads give the same integers; a multiplier >= 2^31 takes the
    128-bit path, which must equal the narrow (int64) path where both apply."""
    old = N._set_grain_ns(0.0)  # every op uses all the threads it is given
    try:
        _thread_invariance()
    finally:
        N._set_grain_ns(old)


def _thread_invariance() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-4000, 4000, size=(2, 40, 40, 24)).astype(np.int32)
    m = rng.integers(-(2**30), 2**30, size=24).astype(np.int64)
    b = rng.integers(-(2**50), 2**50, size=24).astype(np.int64)
    one = N.requant_i32(x, m, b, 24, -32768, 32767, 1)
    assert np.array_equal(one, N.requant_i32(x, m, b, 24, -32768, 32767, 2))
    wide = N.requant_i32(x, m * 4, b * 4, 26, -32768, 32767, 1)  # same value, |4 m| may exceed 2^31
    assert np.abs(m * 4).max() >= 2**31 and np.array_equal(wide, one)
    y = rng.integers(-(2**20), 2**20, size=x.shape).astype(np.int32)
    s1 = N.add_i32([x, y], -30000, 30000, 1)
    assert np.array_equal(s1, N.add_i32([x, y], -30000, 30000, 2))
    assert np.array_equal(s1, np.clip(x.astype(np.int64) + y, -30000, 30000))


def test_requant_i32_overflow_without_clamp_is_an_error() -> None:
    x = np.full((1, 2), 2**30, np.int32)
    m = np.array([4, 1], np.int64)
    with pytest.raises(ValueError, match="overflows int32"):
        N.requant_i32(x, m, np.zeros(2, np.int64), 0)
    # with a clamp it saturates
    assert N.requant_i32(x, m, np.zeros(2, np.int64), 0, -100, 100).tolist() == [[100, 100]]


def test_add_i32_saturates_to_its_clamp() -> None:
    a = np.array([[30000, -30000, 5]], np.int32)
    b = np.array([[30000, -30000, -7]], np.int32)
    assert N.add_i32([a, b], -32768, 32767).tolist() == [[32767, -32768, -2]]
    assert N.add_i32([a, b]).tolist() == [[60000, -60000, -2]]
    with pytest.raises(ValueError, match="clamp range"):
        N.add_i32([a, b], 5, 4)


# --------------------------------------------------------------------------- FixedPointBN
def _randomized_bn(c: int, frac: int, seed: int) -> FixedPointBN:
    g = torch.Generator().manual_seed(seed)
    bn = FixedPointBN(c, frac).eval()
    with torch.no_grad():
        bn.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 200)
        bn.running_var.copy_(torch.rand(c, generator=g) * 500 + 1e-3)
        bn.weight.copy_((torch.rand(c, generator=g) - 0.5) * 4)
        bn.bias.copy_((torch.rand(c, generator=g) - 0.5) * 4)
    return bn


def test_fixed_point_bn_eval_is_the_rounded_batchnorm() -> None:
    """Oracle: ``floor(BN(u) 2^f + 1/2)`` in exact rational arithmetic from the float32
    parameters (sqrt in float64). The int64 form may differ from it only where the exact value lies
    within ``(|u| + 1) 2^-S`` (plus the float64 sqrt's rounding) of the rounding boundary."""
    c, frac = 6, 8
    bn = _randomized_bn(c, frac, 1)
    u = (
        torch.arange(-300, 301, dtype=torch.float32)
        .view(1, 1, -1, 1)
        .expand(1, c, -1, 1)
        .contiguous()
    )
    r = (bn(u) * 2.0**frac).round().to(torch.int64)[0, :, :, 0]
    differ = 0
    for ch in range(c):
        s = Fraction(float(bn.weight.detach()[ch])) / Fraction(
            math.sqrt(float(bn.running_var[ch]) + bn.eps)
        )
        for i, uv in enumerate(range(-300, 301)):
            z = (
                s * (uv - Fraction(float(bn.running_mean[ch])))
                + Fraction(float(bn.bias.detach()[ch]))
            ) * 2**frac
            want = math.floor(z + Fraction(1, 2))
            got = int(r[ch, i])
            if got != want:
                gap = abs(z + Fraction(1, 2) - round(z + Fraction(1, 2)))
                assert gap <= Fraction(abs(uv) + 2, 2**SHIFT) * 2**frac, (ch, uv, got, want)
                differ += 1
    assert differ <= 2  # a handful at most: the grid of m, b is 2^-24 fine


def test_fixed_point_bn_fast_form_differs_from_the_rounded_batchnorm_only_at_ties() -> None:
    """``exact = False`` (a distillation teacher's form): ``floor(BN(u) 2^f + 1/2)`` evaluated in
    float32. Oracle: the same value in exact rational arithmetic (as above); the float form may
    differ only where the exact value lies within float32 rounding of the boundary (a few ulps of
    the terms, bounded here by ``2^-17 (1 + |z|)``), and it equals the exact int64 form elsewhere."""
    c, frac = 6, 8
    bn = _randomized_bn(c, frac, 2)
    u = torch.arange(-3000, 3001, dtype=torch.float32).view(1, 1, -1, 1).expand(1, c, -1, 1)
    u = u.contiguous()
    with torch.no_grad():
        exact = (bn(u) * 2.0**frac).round().to(torch.int64)[0, :, :, 0]
        bn.exact = False
        fast = (bn(u) * 2.0**frac).round().to(torch.int64)[0, :, :, 0]
    differ = 0
    for ch in range(c):
        s = Fraction(float(bn.weight.detach()[ch])) / Fraction(
            math.sqrt(float(bn.running_var[ch]) + bn.eps)
        )
        for i in torch.nonzero(fast[ch] != exact[ch]).flatten().tolist():
            uv = i - 3000
            z = (
                s * (uv - Fraction(float(bn.running_mean[ch])))
                + Fraction(float(bn.bias.detach()[ch]))
            ) * 2**frac
            gap = abs(z + Fraction(1, 2) - round(z + Fraction(1, 2)))
            assert gap <= Fraction(1, 2**17) * (1 + abs(z)), (ch, uv, int(fast[ch, i]))
            assert abs(int(fast[ch, i]) - int(exact[ch, i])) == 1
            differ += 1
    # of 36,006 values (|z| up to ~1e5 here, where float32 resolves ~0.01): ties are rare
    assert 0 < differ <= 180  # measured 61; > 0 shows the oracle compares two different forms
    assert int((fast != exact).sum()) == differ


def test_the_warmup_teacher_uses_the_fast_form_and_the_model_stays_exact(tmp_path: Path) -> None:
    from bitflow.train import trainer

    model = models.create("bireal_resnet20", width=4, residual="int")
    teacher = trainer._warmup_teacher(model, {}, tmp_path / "warmup.pt", fresh=True, save=False)
    fbn = [m for m in teacher.modules() if isinstance(m, FixedPointBN)]
    assert fbn and not any(m.exact for m in fbn)
    assert all(m.exact for m in model.modules() if isinstance(m, FixedPointBN))
    # a model loaded from a state dict evaluates exactly: the flag is not part of it
    assert "exact" not in "".join(model.state_dict())


def test_fixed_point_bn_trains_on_the_grid_with_a_straight_through_gradient() -> None:
    torch.manual_seed(0)
    bn = FixedPointBN(4, frac=3).train()
    ref = nn.BatchNorm2d(4).train()
    u = (torch.randn(8, 4, 5, 5) * 20).round().requires_grad_(True)
    u2 = u.detach().clone().requires_grad_(True)
    y = bn(u)
    yr = ref(u2)
    assert torch.equal(y * 8, (y * 8).round())  # on the 2^-3 grid
    assert (y - yr).abs().max() <= 0.5 / 8 + 1e-6  # rounded to the nearest grid point
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (yr * w).sum().backward()
    assert u.grad is not None and u2.grad is not None
    torch.testing.assert_close(u.grad, u2.grad)  # STE: d floor(z + 1/2) / dz = 1


def test_round_half_up_commutes_with_integer_adds() -> None:
    """Why floor(z + 1/2) and not round-half-even: the stream adds an integer to each rounded
    branch, and only the half-up rule gives the same result as rounding the sum."""
    z = torch.tensor([2.5, 3.5, -0.5, -1.5, 0.49])
    k = torch.tensor([1.0, -2.0, 3.0, 1.0, 5.0])
    assert torch.equal(torch.floor(z + 0.5) + k, torch.floor(z + k + 0.5))
    assert not torch.equal(torch.round(z) + k, torch.round(z + k))  # half-even does not commute


def test_stream_clamp_saturates() -> None:
    c = StreamClamp(frac=2, bits=4)  # r in [-8, 7], x = r / 4
    x = torch.tensor([-5.0, -2.0, 1.75, 1.5, 9.0])
    assert c(x).tolist() == [-2.0, -2.0, 1.75, 1.5, 1.75]


# --------------------------------------------------------------------------- conversion
def _calibrated(model: nn.Module, shape: tuple[int, ...], seed: int, steps: int = 3) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics with a few training-mode passes."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.5
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-1.0, 1.0)
        for _ in range(steps):
            model(torch.rand(*shape))
    return model.eval()


def _assert_integer_exact(model: nn.Module, x: np.ndarray) -> None:
    graph = convert(model)
    assert graph.mode == "bitflow"
    assert not any(op.type in ("add_f32", "affine_f32", "threshold_f32_bits") for op in graph.ops)
    r = verify(model, graph, x)
    assert r["sign_mismatches"] == 0
    assert r["prediction_mismatches"] == 0
    assert r["near_threshold"]["count"] == 0
    assert r["signs_compared"] > 0
    for k in available_kernels():
        rep = compare_with_reference(Engine(graph, kernels=k, threads=2), x)["reference"]
        assert rep["exact_mismatches"] == 0 and rep["prediction_mismatches"] == 0, (k, rep)
        assert rep["exact_values_compared"] > 0


def test_int_bireal_resnet20_is_integer_exact() -> None:
    model = _calibrated(
        models.create("bireal_resnet20", residual="int", width=8), (32, 1, 28, 28), 0
    )
    graph = convert(model)
    types = [op.type for op in graph.ops]
    # 18 units + 2 binary downsamples; the stem and every unit output signed once
    assert types.count("requant_i32") == 1 + 18 + 2
    assert types.count("add_i32") == 18
    assert types.count("threshold_bits") == 18
    x = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    _assert_integer_exact(model, x)


def test_int_bireal_resnet20_with_stride2_stem_is_integer_exact() -> None:
    """Stride-2 int8 stem (28 -> 14) and binary downsample of the odd 7x7 map (-> 4x4)."""
    model = _calibrated(
        models.create("bireal_resnet20", residual="int", width=8, stem="s2"), (32, 1, 28, 28), 0
    )
    x = np.random.default_rng(1).random((16, 1, 28, 28), dtype=np.float32)
    _assert_integer_exact(model, x)


def test_int_bireal_resnet18_224_is_integer_exact() -> None:
    """ImageNet layout: 7x7/2 int8 stem, saturation then 3x3/2 max-pool of the int stream."""
    model = _calibrated(
        models.create("bireal_resnet18", residual="int", width=8, num_classes=1000),
        (4, 3, 224, 224),
        1,
        2,
    )
    x = np.random.default_rng(1).random((4, 3, 224, 224), dtype=np.float32)
    _assert_integer_exact(model, x)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stages=st.lists(st.integers(1, 2), min_size=1, max_size=3),
    width=st.integers(1, 11),
    size=st.sampled_from([8, 10, 12]),
    frac=st.integers(0, 10),
    bits=st.sampled_from([4, 8, 16]),
    seed=st.integers(0, 2**16),
)
def test_random_int_stream_networks_are_integer_exact(
    stages: list[int], width: int, size: int, frac: int, bits: int, seed: int
) -> None:
    """Odd widths, narrow saturating streams (4 bits: the clamp is hit), coarse and fine grids."""
    model = build_resnet(
        block="bireal",
        stages=stages,
        binary=True,
        num_classes=5,
        in_channels=2,
        image_size=size,
        width=width,
        stem="cifar",
        residual="int",
        residual_frac=frac,
        residual_bits=bits,
    )
    _calibrated(model, (16, 2, size, size), seed)
    x = np.random.default_rng(seed).random((8, 2, size, size), dtype=np.float32)
    _assert_integer_exact(model, x)


# --------------------------------------------------------------------------- errors
class _StreamNet(nn.Module):
    """int8 stem -> fixed-point BN = the integer stream h; ``bn(bconv(h)) + h`` -> head."""

    def __init__(self, bn: type[nn.Module]) -> None:
        super().__init__()
        self.stem = Int8Conv2d(1, 4, 3, padding=1, bias=False, integer_output=True)
        self.bn0 = FixedPointBN(4)
        self.conv = BinaryConv2d(4, 4, 3, padding=1, bias=False, weight_quantizer="xnor")
        self.bn = bn(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn0(self.stem(x))
        return self.head(self.bn(self.conv(h)) + h)


def test_fixed_point_bn_needs_an_unscaled_integer_accumulator() -> None:
    with pytest.raises(UnsupportedLayerError, match="unscaled integer accumulator"):
        convert(
            _calibrated(_StreamNet(FixedPointBN), (4, 1, 8, 8), 0),
            example_input=torch.zeros(1, 1, 8, 8),
        )


def test_stream_plus_float_value_is_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match="same grid"):
        convert(
            _calibrated(_StreamNet(nn.BatchNorm2d), (4, 1, 8, 8), 0),
            example_input=torch.zeros(1, 1, 8, 8),
        )


def test_bad_clamp_attributes_are_graph_errors() -> None:
    model = _calibrated(
        models.create("bireal_resnet20", residual="int", width=2), (4, 1, 28, 28), 0, 1
    )
    graph = convert(model)
    op = next(o for o in graph.ops if o.type == "add_i32")
    for bad in ([5, 4], [0.0, 1], [-(2**31) - 1, 0], "x"):
        op.attrs["clamp"] = bad
        with pytest.raises(GraphError, match="clamp must be"):
            graph.validate()


def test_real_mode_evaluates_the_fixed_point_stream_without_rounding_the_accumulators() -> None:
    """Real mode (the warm-up): the convolutions are real-valued, so FixedPointBN evaluates
    ``floor(BN(u) 2^f + 1/2) 2^-f`` on ``u`` itself. Oracle: ``F.batch_norm`` with the running
    statistics, rounded half up on the grid (the exact form would round ``u`` to an integer first,
    and on ``|u| < 1`` give a different value almost everywhere)."""
    from bitflow.nn import set_real_mode

    model = models.create("bireal_resnet20", width=4, residual="int").eval()
    fbn = [m for m in model.modules() if isinstance(m, FixedPointBN)]
    set_real_mode(model, True)
    assert not any(m.exact for m in fbn)
    bn = fbn[3]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.05, 0.2)
        u = torch.rand(2, bn.num_features, 5, 5, generator=torch.Generator().manual_seed(0)) - 0.5
        want = (
            torch.floor(
                torch.nn.functional.batch_norm(
                    u, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
                )
                * 2.0**bn.frac
                + 0.5
            )
            * 2.0**-bn.frac
        )
        assert torch.equal(bn(u), want)
        set_real_mode(model, False)  # binary again: the exact form, which rounds u first
        assert all(m.exact for m in fbn)
        assert not torch.equal(bn(u), want)


@pytest.mark.parametrize("kernels", N.available_kernels())
@pytest.mark.parametrize("o", [1, 13, 64, 70])
def test_int_stream_equals_the_ops_one_by_one(kernels: str, o: int) -> None:
    """IntStream (the engine's fused requant_i32 -> add_i32 -> threshold_bits) gives the ops'
    integers and bits: one to three operands, requantized or not, wide and narrow multipliers,
    clamped and unclamped, both threshold directions with ties, any thread count, as a binary
    convolution's epilogue; and the ops' overflow error where an unclamped value leaves int32."""
    rng = np.random.default_rng(o)
    shape = (2, 5, 3, o)
    xs = [rng.integers(-5000, 5000, size=shape).astype(np.int32) for _ in range(3)]
    rq = [
        (
            rng.integers(-(2**33), 2**33, size=o).astype(np.int64),
            rng.integers(-(2**40), 2**40, size=o).astype(np.int64),
            24,
            None,
            None,
        ),
        (
            rng.integers(-(2**20), 2**20, size=o).astype(np.int64),
            rng.integers(-(2**30), 2**30, size=o).astype(np.int64),
            12,
            -3000,
            3000,
        ),
        None,
    ]
    thr = rng.integers(-200, 200, size=o).astype(np.int32)
    d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)

    def unfused(idx: list[int], lo: int | None, hi: int | None) -> np.ndarray:
        vals = [xs[k] if rq[k] is None else N.requant_i32(xs[k], *rq[k]) for k in idx]  # type: ignore[misc]
        return vals[0] if len(vals) == 1 else N.add_i32(vals, lo, hi)

    old = N._set_grain_ns(0.0)
    try:
        for idx in ([0], [2, 0], [1, 2], [0, 1, 2], [2, 1, 0]):
            for lo, hi in ((-2000, 2000), (None, None)):
                y = unfused(idx, lo, hi)
                bits = N.threshold_bits(y, thr, d)
                for keep in (True, False):
                    ist = N.IntStream(
                        o,
                        [rq[k] for k in idx],
                        lo,
                        hi,
                        thr=thr,
                        direction=d,
                        keep_y=keep,
                        kernels=kernels,
                    )
                    for threads in (1, 3):
                        got = ist([xs[k] for k in idx], threads)
                        if keep:
                            assert (
                                got[0].tobytes() == y.tobytes()
                                and got[1].tobytes() == bits.tobytes()
                            )
                        else:
                            assert got.tobytes() == bits.tobytes()
                plain = N.IntStream(o, [rq[k] for k in idx], lo, hi, kernels=kernels)
                assert plain([xs[k] for k in idx], 2).tobytes() == y.tobytes()
        # as the epilogue of a binary convolution: operand 1 is its int32 output
        xb = pack_bits(rng.random((2, 7, 6, 37)) < 0.5)
        wb = pack_bits(rng.random((o, 3, 3, 37)) < 0.5)
        layer = N.BinaryLayer(wb, 37, (1, 1), (1, 1), 0, kernels=kernels)
        acc = layer(xb, 1)
        other = rng.integers(-5000, 5000, size=acc.shape).astype(np.int32)
        want = N.add_i32([other, N.requant_i32(acc, *rq[0])], -2000, 2000)  # type: ignore[misc]
        ist = N.IntStream(o, [None, rq[0]], -2000, 2000, thr=thr, direction=d, kernels=kernels)
        for threads in (1, 3):
            y, b = ist.after(layer, xb, [other], 1, threads)
            assert y.tobytes() == want.tobytes()
            assert b.tobytes() == N.threshold_bits(want, thr, d).tobytes()
    finally:
        N._set_grain_ns(old)
    # overflow: an unclamped requantization or sum outside int32 is the ops' error
    big = np.full(shape, 2**30, np.int32)
    with pytest.raises(ValueError, match="overflows int32"):
        N.requant_i32(big, np.full(o, 4, np.int64), np.zeros(o, np.int64), 0)
    with pytest.raises(ValueError, match="overflows int32"):
        N.IntStream(o, [(np.full(o, 4, np.int64), np.zeros(o, np.int64), 0, None, None)])([big])
    with pytest.raises(ValueError, match="overflows int32"):
        N.IntStream(o, [None, None])([big, big])
    assert N.IntStream(o, [None, None], -5, 5)([big, big]).max() == 5

"""MBBN conversion: multi-bit thresholds (BatchShift generalised to 2^M - 1 steps), bit planes,
and bit-exactness of converted MBBN models on the reference executor and the native engine.

Oracles: exact decimal arithmetic (60 digits) for the threshold rules; the quantizers' own
``decompose`` for boundaries; ``MBitConv2d.integer_output`` / ``MBitLinear.integer_output``
(PyTorch's integer convolution of the odd levels, Eq. 8) for the engine accumulators; the
PyTorch model's levels at every quantized layer input (forward pre-hooks) for the planes.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, getcontext
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bitflow import models
from bitflow.convert import UnsupportedLayerError, convert, load_graph, verify
from bitflow.convert import batchshift as bs
from bitflow.convert._mbbn import quantizer_boundaries
from bitflow.engine import Engine, available_kernels
from bitflow.engine.check import compare_with_reference
from bitflow.ir import unpack_bits
from bitflow.ir.reference import run
from bitflow.nn import Int8Conv2d
from bitflow.nn.mbbn import MBitConv2d, MBitEncoder, MBitLinear, OddLinearQuantizer, decode

getcontext().prec = 60

# ----------------------------------------------------------------------------- exact rules


def _dec(x: float | Fraction) -> Decimal:
    if isinstance(x, Fraction):
        return Decimal(x.numerator) / Decimal(x.denominator)
    return Decimal(float(x))


def _oracle_level(
    x: float | int,
    *,
    alpha: float,
    bias: float,
    relu: bool,
    mean: float,
    var: float,
    eps: float,
    gamma: float,
    beta: float,
    boundaries: list[Fraction | None],
) -> int:
    """``2 #{l : BN(relu?(alpha x + b)) >= b_l} - L`` in 60-digit decimal arithmetic."""
    z = _dec(alpha) * _dec(x) + _dec(bias)
    if relu and z < 0:
        z = Decimal(0)
    u = _dec(gamma) * (z - _dec(mean)) / (_dec(var) + _dec(eps)).sqrt() + _dec(beta)
    q = sum(1 for b in boundaries if b is None or u >= _dec(b))
    return 2 * q - len(boundaries)


def _bn(bnp: bs.BNParams, c: int) -> dict[str, float]:
    """Channel ``c`` of ``bnp`` as :func:`_oracle_level`'s BatchNorm arguments."""
    return {
        "mean": float(bnp.mean[c]),
        "var": float(bnp.var[c]),
        "eps": float(bnp.eps),
        "gamma": float(bnp.gamma[c]),
        "beta": float(bnp.beta[c]),
    }


def _ladder(m: int, t: float = 1.0, hrelu: bool = False) -> list[Fraction | None]:
    a = (1 << m) - 1
    half = 1 << (m - 1)
    return [
        None if hrelu and j <= 0 else Fraction(2 * j) * Fraction(t) / a
        for j in range(-(half - 1), half)
    ]


@pytest.mark.parametrize("seed", range(6))
def test_level_int_thresholds_equal_exact_levels_on_every_reachable_integer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    o, n = 7, 40
    m = int(rng.integers(2, 5))
    relu = bool(seed % 2)
    bnp = bs.BNParams(
        mean=rng.normal(0, 10, o).astype(np.float32),
        var=rng.uniform(0.5, 400, o).astype(np.float32),
        eps=1e-5,
        gamma=np.array([1.3, -0.7, 0.0, 2.0, -2.5, 0.01, -0.02], np.float32),
        beta=rng.normal(0, 1, o).astype(np.float32),
    )
    alpha = rng.uniform(0.01, 0.5, o).astype(np.float32)
    bias = (rng.normal(0, 0.3, o) * (seed % 3 == 0)).astype(np.float32)
    bounds = _ladder(m, float(np.float32(rng.uniform(0.3, 2.0))), hrelu=seed == 4)
    th = bs.level_int_thresholds(
        lo=-n, hi=n, bn=bnp, boundaries=bounds, alpha=alpha, bias=bias, relu=relu
    )
    assert th.thr.shape == (o, 2**m - 1) and th.thr.dtype == np.int32
    assert np.all(np.diff(th.thr.astype(np.int64), axis=1) >= 0)  # what threshold_planes requires
    xs = np.arange(-n, n + 1)
    got = th.levels(np.repeat(xs[:, None], o, axis=1))
    for c in range(o):
        want = [
            _oracle_level(
                int(x),
                alpha=float(alpha[c]),
                bias=float(bias[c]),
                relu=relu,
                **_bn(bnp, c),
                boundaries=bounds,
            )
            for x in xs
        ]
        assert got[:, c].tolist() == want, c


def test_level_float_thresholds_equal_exact_levels_next_to_every_threshold() -> None:
    rng = np.random.default_rng(7)
    o, m = 5, 3
    bnp = bs.BNParams(
        mean=rng.normal(0, 1, o).astype(np.float32),
        var=rng.uniform(0.1, 3, o).astype(np.float32),
        eps=1e-5,
        gamma=np.array([0.8, -1.1, 0.0, 3.0, -0.2], np.float32),
        beta=rng.normal(0, 1, o).astype(np.float32),
    )
    bounds = _ladder(m)
    n_l = len(bounds)
    th = bs.level_float_thresholds(bnp, boundaries=bounds, relu=True)
    assert th.thr.shape == (o * n_l,)
    finite = th.thr[np.isfinite(th.thr)]
    # the float32 neighbours of every threshold plus random values: exactly where rounding bites
    pts = np.concatenate(
        [
            finite,
            np.nextafter(finite, np.float32(np.inf)),
            np.nextafter(finite, np.float32(-np.inf)),
            rng.normal(0, 3, 200).astype(np.float32),
        ]
    ).astype(np.float32)
    bits = th.apply(np.repeat(pts[:, None].astype(np.float64), o * n_l, axis=1)).astype(np.int64)
    got = bits.reshape(len(pts), o, n_l).sum(-1)
    for c in range(o):
        want = [
            _oracle_level(
                float(y), alpha=1.0, bias=0.0, relu=True, **_bn(bnp, c), boundaries=bounds
            )
            for y in pts
        ]
        assert got[:, c].tolist() == want, c


@pytest.mark.parametrize("relu", [False, True])
def test_float_plane_thresholds_count_the_exact_level(relu: bool) -> None:
    # oracle: _oracle_level (60-digit decimals) at every float32 threshold, its two neighbours and
    # random values, against the counting rule threshold_f32_planes applies (reference executor)
    rng = np.random.default_rng(11)
    o, m = 6, 3
    bnp = bs.BNParams(
        mean=rng.normal(0, 1, o).astype(np.float32),
        var=rng.uniform(0.1, 3, o).astype(np.float32),
        eps=1e-5,
        gamma=np.array([0.8, -1.1, 0.0, 3.0, -0.2, 1e-3], np.float32),
        beta=rng.normal(0, 1, o).astype(np.float32),
    )
    bounds = _ladder(m)
    lanes = bs.level_float_thresholds(bnp, boundaries=bounds, relu=relu)
    thr, direction = bs.float_plane_thresholds(lanes, o)
    assert thr.shape == (o, 7) and np.all(thr[:, 1:] >= thr[:, :-1])
    assert direction.tolist() == [1, -1, 1, 1, -1, 1]
    finite = thr[np.isfinite(thr)]
    pts = np.concatenate(
        [
            finite,
            np.nextafter(finite, np.float32(np.inf)),
            np.nextafter(finite, np.float32(-np.inf)),
            rng.normal(0, 3, 200).astype(np.float32),
        ]
    ).astype(np.float32)
    from bitflow.ir import Op, ValueInfo
    from bitflow.ir import reference as R

    op = Op(
        "threshold_f32_planes", "t", ["y"], ["t"], {"planes": m}, {"thr": "thr", "direction": "d"}
    )
    y = np.ascontiguousarray(np.repeat(pts[:, None], o, axis=1))
    planes = R.run_op(
        SimpleNamespace(tensors={"thr": thr, "d": direction}),
        op,
        [y],  # type: ignore[arg-type]
        [ValueInfo("float32", (o,))],
    )
    got = decode(np.stack([1 - 2 * unpack_bits(planes[i], o).astype(np.int64) for i in range(m)]))
    for c in range(o):
        want = [
            _oracle_level(
                float(v), alpha=1.0, bias=0.0, relu=relu, **_bn(bnp, c), boundaries=bounds
            )
            for v in pts
        ]
        assert got[:, c].tolist() == want, c


def test_boundaries_must_be_a_valid_ladder() -> None:
    bnp = bs.BNParams.identity(2)
    with pytest.raises(ValueError, match="2\\^M - 1 boundaries"):
        bs.level_int_thresholds(lo=-4, hi=4, bn=bnp, boundaries=[Fraction(0), Fraction(1)])
    with pytest.raises(ValueError, match="ascend"):
        bs.level_int_thresholds(
            lo=-4, hi=4, bn=bnp, boundaries=[Fraction(1), Fraction(0), Fraction(2)]
        )
    with pytest.raises(ValueError, match="inside int32"):
        bs.level_int_thresholds(lo=-4, hi=2**31 - 1, bn=bnp, boundaries=_ladder(2))


@pytest.mark.parametrize("kind", ["encoder", "odd_linear"])
@pytest.mark.parametrize(
    ("activation", "m"),
    [
        ("htanh", 1),
        ("htanh", 2),
        ("htanh", 3),
        ("htanh", 4),
        ("hrelu", 2),
        ("hrelu", 3),
        ("hrelu", 4),
    ],
)  # 1-bit HReLU is rejected
def test_quantizer_boundaries_reproduce_the_quantizer(kind: str, activation: str, m: int) -> None:
    iq = MBitEncoder(m, activation) if kind == "encoder" else OddLinearQuantizer(m, activation)
    if kind == "odd_linear":
        with torch.no_grad():
            iq.t.fill_(1.7)
    layer = MBitLinear(4, 3, input_quantizer=iq, bits_w=2)
    got_m, bounds = quantizer_boundaries("q", layer)
    assert got_m == m and len(bounds) == 2**m - 1
    u = torch.linspace(-3, 3, 20001, dtype=torch.float32)
    v, _ = iq.decompose(u)
    b = np.array([-np.inf if x is None else float(x) for x in bounds])
    q = (u.double().numpy()[:, None] >= b[None, :]).sum(1)
    far = (
        np.min(
            np.abs(u.double().numpy()[:, None] - np.where(np.isfinite(b), b, -1e9)[None, :]), axis=1
        )
        > 1e-5
    )
    assert np.array_equal((2 * q - (2**m - 1))[far], v.detach().numpy().astype(np.int64)[far])


def _f32_neighbours(b: float, n: int) -> np.ndarray:
    """The ``2n + 1`` consecutive float32 values centred on the float32 nearest ``b``."""
    c = np.float32(b)
    lo = c
    hi = c
    for _ in range(n):
        lo = np.nextafter(lo, np.float32(-np.inf))
        hi = np.nextafter(hi, np.float32(np.inf))
    out = [lo]
    while out[-1] < hi:
        out.append(np.nextafter(out[-1], np.float32(np.inf)))
    return np.array(out, np.float32)


@pytest.mark.parametrize("kind", ["encoder", "odd_linear"])
@pytest.mark.parametrize(
    ("activation", "m", "t"),
    [
        ("htanh", 1, 1.0),
        ("htanh", 2, 1.0),
        ("htanh", 3, 1.0),
        ("htanh", 4, 1.0),
        ("htanh", 4, 1.7),
        ("htanh", 5, 0.3),
        ("hrelu", 2, 1.0),
        ("hrelu", 4, 1.3),
    ],
)
def test_level_rule_equals_the_quantizer_on_float32_inputs_next_to_every_boundary(
    kind: str, activation: str, m: int, t: float
) -> None:
    """The converter's level rule (``level_float_thresholds`` with an identity BatchNorm, so the
    rule sees the float32 input ``u`` itself) against PyTorch's quantizer on the 33 float32 values
    around every boundary ``2jt/A``: exactly where float32 rounding bites.

    Regression: the rule used the real boundaries ``2jt/A``, but PyTorch computes ``y = fl(A u)``
    (encoder) or ``fl(fl(A h) / t)`` (odd linear) in float32. For ``M = 4``, ``t = 1``:
    ``fl32(-0.4) = -0.4000000059604645 < -6/15``, yet ``fl(15 * fl32(-0.4)) = -6.0`` (the exact
    product -6.0000000894 is within half an ulp, 2.4e-7, of -6), so PyTorch gives level -5 where
    the real boundary says -7."""
    iq = MBitEncoder(m, activation) if kind == "encoder" else OddLinearQuantizer(m, activation)
    if kind == "odd_linear":
        with torch.no_grad():
            iq.t.fill_(t)
    elif t != 1.0:
        pytest.skip("the encoder's range is 1")
    layer = MBitLinear(4, 3, input_quantizer=iq, bits_w=2)
    _, bounds = quantizer_boundaries("q", layer)
    n_l = len(bounds)
    lanes = bs.level_float_thresholds(bs.BNParams.identity(1), boundaries=bounds, relu=False)
    thr, direction = bs.float_plane_thresholds(lanes, 1)
    a = (1 << m) - 1
    half = 1 << (m - 1)
    tt = float(iq.clip_range().detach())
    pts = np.unique(
        np.concatenate(
            [_f32_neighbours(2 * j * tt / a, 16) for j in range(-(half - 1), half)]
            + [np.linspace(-2, 2, 401, dtype=np.float32)]
        )
    )
    assert direction.tolist() == [1]
    got = 2 * (pts[:, None] >= thr[0][None, :]).sum(1) - n_l  # threshold_f32_planes, Eq. 7
    with torch.no_grad():
        want = iq.decompose(torch.from_numpy(pts))[0].numpy().astype(np.int64)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(float(pts[i]), int(got[i]), float(want[i])) for i in bad[:5]]


def test_seed_4_chain_channel_levels_equal_pytorch_on_every_integer_near_its_thresholds() -> None:
    """The case that made ``test_random_mbbn_chain_is_bit_exact[4]`` fail (when another test file
    moved the global RNG first): channel 5 of BatchNorm ``4`` after the 4-bit x 4-bit MBitConv2d
    ``3``, feeding a 4-bit encoder (``A = 15``). Its float32 parameters, copied bit for bit:
    at the accumulator ``x = -111`` the exact BN output is ``-0.400000020766`` (60 digits below),
    2.1e-8 under the boundary ``-6/15``; PyTorch's float32 BN rounds it correctly to
    ``fl32(-0.4) = -0.4000000059604645`` and its quantizer gives ``fl(15 u) = -6.0``: level -5.
    The real-boundary rule said -7 (5 real sign mismatches there, 4 more downstream)."""
    s = float.fromhex("0x1.23456ap-8")  # scale_x * scale_w = fl32(1/15) * fl32(1/15)
    b = float.fromhex("-0x1.b9e3f2p-6")  # conv bias
    mean, var = float.fromhex("-0x1.1cb49ap-1"), float.fromhex("0x1.67e79ep+2")
    gamma, beta = float.fromhex("0x1.80e11p-1"), float.fromhex("-0x1.a53548p-2")
    bn = nn.BatchNorm1d(1).eval()
    with torch.no_grad():
        bn.running_mean.fill_(mean)
        bn.running_var.fill_(var)
        bn.weight.fill_(gamma)
        bn.bias.fill_(beta)
    layer = MBitLinear(4, 1, bits_a=4, bits_w=4)
    _, bounds = quantizer_boundaries("q", layer)
    bnp = bs.BNParams(
        mean=np.array([mean], np.float32),
        var=np.array([var], np.float32),
        eps=bn.eps,
        gamma=np.array([gamma], np.float32),
        beta=np.array([beta], np.float32),
    )
    xs = np.arange(-300, 301)
    th = bs.level_int_thresholds(
        lo=-300, hi=300, bn=bnp, boundaries=bounds, alpha=np.float32(s), bias=np.float32(b)
    )
    got = th.levels(xs[:, None])[:, 0]
    with torch.no_grad():
        u = bn(torch.from_numpy(xs.astype(np.float32))[:, None] * np.float32(s) + np.float32(b))
        want = layer.input_quantizer.decompose(u)[0][:, 0].numpy().astype(np.int64)
    # the failing point: exact BN value just below -6/15, PyTorch's float32 BN correctly rounded
    u_exact = _dec(gamma) * (_dec(s) * -111 + _dec(b) - _dec(mean)) / (
        _dec(var) + _dec(bn.eps)
    ).sqrt() + _dec(beta)
    assert Decimal(-6) / 15 - Decimal("3e-8") < u_exact < Decimal(-6) / 15
    assert float(u[xs == -111]) == float(np.float32(-0.4))
    assert (
        abs(_dec(float(np.float32(-0.4))) - u_exact)
        < Decimal(float(np.spacing(np.float32(0.4)))) / 2
    )
    assert want[xs == -111].tolist() == [-5]
    assert np.array_equal(got, want), [
        (int(x), int(g), int(w)) for x, g, w in zip(xs, got, want, strict=True) if g != w
    ]


@pytest.mark.parametrize(
    ("activation", "m"), [("htanh", 2), ("htanh", 4), ("htanh", 5), ("hrelu", 3)]
)
def test_a_bn_output_exactly_on_a_rounding_midpoint_follows_ties_to_even(
    activation: str, m: int
) -> None:
    """Each step's real-line form is the midpoint ``(pred(b') + b') / 2`` of the float32 step ``b'``,
    inclusive or strict by the parity of ``b'`` (ties to even). Built so the exact value lands ON
    the midpoint: identity BatchNorm (eps 0, var 1), ``alpha = half an ulp of b'`` (a power of
    two), ``bias = pred(b')``, so ``z(0) = pred(b')``, ``z(1)`` = the midpoint, ``z(2) = b'``.
    Oracle: the float32 that ``z(x)`` rounds to (numpy's float64 -> float32 conversion, ties to
    even; ``z`` is exact in float64 here) fed to PyTorch's quantizer."""
    iq = MBitEncoder(m, activation)
    _, bounds = quantizer_boundaries("q", MBitLinear(2, 1, input_quantizer=iq, bits_w=1))
    strict_seen = set()
    for step in bounds:
        if step is None:
            continue
        mid = step.at
        below = np.float32(float(mid))  # the midpoint is not a float32: nearest is pred or b'
        pred = below if Fraction(float(below)) < mid else np.nextafter(below, np.float32(-np.inf))
        half_ulp = mid - Fraction(float(pred))
        if half_ulp.numerator != 1 or half_ulp.denominator & (half_ulp.denominator - 1):
            continue  # below the smallest normal spacing: not a power of two
        alpha = np.float32(float(half_ulp))
        if Fraction(float(alpha)) != half_ulp:
            continue  # the step at 0: half an ulp of 0 is 2^-150, below every float32
        strict_seen.add(step.strict)
        th = bs.level_int_thresholds(
            lo=-1,
            hi=3,
            bn=bs.BNParams.identity(1),
            boundaries=bounds,
            alpha=alpha,
            bias=np.float32(pred),
        )
        xs = np.arange(-1, 4)
        z = [Fraction(float(pred)) + Fraction(float(alpha)) * int(x) for x in xs]
        assert z[2] == mid  # x = 1 lands exactly on the midpoint
        u = np.array([np.float32(float(v)) for v in z], np.float32)  # z is exact in float64
        with torch.no_grad():
            want = iq.decompose(torch.from_numpy(u))[0].numpy().astype(np.int64)
        got = th.levels(xs[:, None])[:, 0]
        assert got.tolist() == want.tolist(), (float(mid), step.strict, got, want)
    # M = 5 has steps b' of both parities (inclusive and strict midpoints); M = 2, 3, 4 only odd
    assert strict_seen == ({False, True} if m == 5 else {True})


# ----------------------------------------------------------------------------- model chains


def _randomize(model: nn.Module, x: torch.Tensor, seed: int) -> nn.Module:
    """Realistic BN running statistics (one train-mode pass, momentum 1), random affine parameters
    with both signs and exact zeros, random quantizer ranges."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, OddLinearQuantizer):
            with torch.no_grad():
                mod.t.fill_(float(torch.rand((), generator=g) * 1.5 + 0.5))
    bns = [mod for mod in model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    for mod in bns:
        mod.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
        for mod in bns:
            n = mod.num_features
            gamma = torch.rand(n, generator=g) * 3 - 1.5
            gamma[torch.rand(n, generator=g) < 0.1] = 0.0
            mod.weight.copy_(gamma)
            mod.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


@contextmanager
def _torch_seed(seed: int) -> Iterator[None]:
    """Module initialisation (which draws from torch's global generator) seeded by ``seed``, with
    the global RNG state restored afterwards: a test's model does not depend on which tests ran
    before it, and it does not change what later tests draw."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _chain(seed: int) -> tuple[nn.Module, int]:
    """A random small MBBN chain: float or int8 first conv, two MBitConv2d, one MBitLinear, float
    classifier; per layer M, K in 1..4, odd channel counts, ReLU / pools / padding / pad_value
    and quantizer method / activation drawn at random; the weights from torch seeded by
    ``seed`` (independent of the global RNG state)."""
    with _torch_seed(seed):
        return _chain_unseeded(seed)


def _chain_unseeded(seed: int) -> tuple[nn.Module, int]:
    rng = np.random.default_rng(seed)
    size = 10
    first = "int8" if seed % 3 == 2 else "float"
    c0, c1, c2, f = (int(v) for v in rng.choice([3, 5, 7, 9], 4))
    method = "quantizer" if seed % 2 else "encoder"
    act = "hrelu" if seed % 4 == 3 else "htanh"
    bits = [
        (int(rng.integers(2 if act == "hrelu" else 1, 5)), int(rng.integers(1, 5)))
        for _ in range(3)
    ]
    mods: list[nn.Module] = [
        Int8Conv2d(1, c0, 3, padding=1) if first == "int8" else nn.Conv2d(1, c0, 3, padding=1)
    ]
    if rng.random() < 0.5:
        mods.append(nn.ReLU())
    if rng.random() < 0.5:
        mods.append(nn.MaxPool2d(2, 2))
        size //= 2
    cin = c0
    for i, cout in enumerate((c1, c2)):
        pad = int(rng.integers(0, 2))
        mods += [
            nn.BatchNorm2d(cin),
            MBitConv2d(
                cin,
                cout,
                3,
                padding=pad,
                bits_a=bits[i][0],
                bits_w=bits[i][1],
                method=method,
                activation=act,
                pad_value=int(rng.integers(0, 2)),
            ),
        ]
        size = size + 2 * pad - 2
        if rng.random() < 0.5:
            mods.append(nn.ReLU())
        if i == 0 and rng.random() < 0.5 and size >= 4:
            mods.append(nn.MaxPool2d(2, 2))
            size //= 2
        cin = cout
    mods.append(nn.Flatten())
    mods += [
        nn.BatchNorm1d(cin * size * size),
        MBitLinear(
            cin * size * size,
            f,
            bits_a=bits[2][0],
            bits_w=bits[2][1],
            method=method,
            activation=act,
        ),
    ]
    if rng.random() < 0.5:
        mods.append(nn.ReLU())
    mods += [nn.BatchNorm1d(f), nn.Linear(f, 4)]
    model = nn.Sequential(*mods)
    model.in_channels, model.image_size = 1, 10  # type: ignore[assignment]
    return model, size


def _images(n: int, seed: int, size: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, size, size), dtype=np.float32)


def _levels_and_accumulators(
    model: nn.Module, x: np.ndarray
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PyTorch's integer input levels and integer accumulators (Eq. 8) of every MBBN layer."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (MBitConv2d, MBitLinear)):

            def pre(m_: nn.Module, inp: tuple[torch.Tensor], key: str = name) -> None:
                levels, _ = m_.quantized_input(inp[0])  # type: ignore[operator]
                out[key] = (levels.detach().round().to(torch.int64), m_.integer_output(inp[0]))  # type: ignore[operator]

            hooks.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return out


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return (t.permute(0, 2, 3, 1) if t.dim() == 4 else t).numpy()


@pytest.mark.parametrize("seed", range(8))
def test_random_mbbn_chain_is_bit_exact(seed: int) -> None:
    model, _ = _chain(seed)
    x = _images(24, seed)
    _randomize(model, torch.from_numpy(_images(64, 100 + seed)), seed)
    graph = convert(model)
    assert graph.mode == "bitflow"
    # 1. verify: every quantized layer input, level by level, and the predictions
    r = verify(model, graph, x, batch_size=12)
    assert r["sign_mismatches"] == 0, r
    assert r["prediction_mismatches"] <= r["near_threshold"]["samples"], r
    # 2. independent oracle: PyTorch's levels (decoded from the executor's planes, Eq. 7) and
    # PyTorch's integer accumulators against the executor's int32 outputs
    torch_side = _levels_and_accumulators(model, x)
    _, inter = run(graph, x, return_intermediates=True)  # type: ignore[misc]
    values = graph.validate()
    near = r["near_threshold"]["samples"]
    for op in graph.ops:
        if op.type not in ("bconv2d", "bconv2d_planes", "bdense", "bdense_planes"):
            continue
        levels_t, acc_t = torch_side[op.attrs["source"]]
        acc_want = _nhwc(acc_t)
        if "input_chw" not in op.attrs:
            lt = _nhwc(levels_t).reshape(len(x), -1)
        else:
            c, h, w = op.attrs["input_chw"]
            lt = levels_t.reshape(len(x), c, h, w).permute(0, 2, 3, 1).reshape(len(x), -1).numpy()
        info = values[op.inputs[0]]
        xs = inter[op.inputs[0]] if info.planes > 1 else inter[op.inputs[0]][None]
        planes = np.stack(
            [
                1
                - 2
                * unpack_bits(p_, info.channels, info.groups).reshape(len(x), -1).astype(np.int64)
                for p_ in xs
            ]
        )
        lg = decode(planes)
        if near == 0:
            assert np.array_equal(lg, lt), op.name
            assert np.array_equal(inter[op.outputs[0]], acc_want), op.name
    # 3. the native engine, every kernel set: op by op against the reference (integers and bits
    # identical), end to end the same predictions
    for k in available_kernels():
        rep = compare_with_reference(Engine(graph, kernels=k, threads=2), x, batch_size=12)[
            "reference"
        ]
        assert rep["exact_mismatches"] == 0, (k, rep)
        assert rep["prediction_mismatches"] <= near, (k, rep)


def test_mixed_precision_model_emits_planes_ops_and_survives_a_file_round_trip(
    tmp_path: Path,
) -> None:
    with _torch_seed(0):
        model = models.create(
            "mbbn_vgg_small", width=4, fc=16, bits_a=[2, 3, 1, 4, 2], bits_w=[2, 1, 3, 2, 4]
        )
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    _randomize(
        model,
        torch.from_numpy(np.random.default_rng(1).random((32, 1, 28, 28), dtype=np.float32)),
        0,
    )
    graph = convert(model)
    types = [op.type for op in graph.ops]
    # M = 3, 4, 2 integer thresholds produce planes; the 1-bit quantizer the sign bits; the float
    # first layer's 2-bit quantizer 3 float thresholds per channel -> 2 planes
    assert types.count("threshold_planes") == 3 and types.count("threshold_bits") == 1
    assert types.count("threshold_f32_planes") == 1 and "threshold_f32_bits" not in types
    first = graph.ops[0]
    assert graph.tensors[first.params["w"]].shape[0] == 4  # the float conv is not repeated
    f32 = next(op for op in graph.ops if op.type == "threshold_f32_planes")
    assert graph.tensors[f32.params["thr"]].shape == (4, 3) and f32.attrs["planes"] == 2
    thr_planes = [
        graph.tensors[op.params["thr"]].shape[1]
        for op in graph.ops
        if op.type == "threshold_planes"
    ]
    assert thr_planes == [7, 15, 3]
    path = tmp_path / "m.bfn"
    graph.save(str(path))
    g2 = load_graph(path)
    np.testing.assert_array_equal(run(g2, x), run(graph, x))
    r = verify(model, g2, x)
    assert (
        r["sign_mismatches"] == 0 and r["prediction_mismatches"] <= r["near_threshold"]["samples"]
    )


def test_int32_accumulator_bound_is_checked() -> None:
    # fan-in 40000 x (2^8 - 1)^2 = 2.6e9 > 2^31 - 1
    model = nn.Sequential(
        nn.Conv2d(1, 4, 1),
        nn.BatchNorm2d(4),
        MBitConv2d(4, 3, 1, bits_a=2, bits_w=2),
        nn.Flatten(),
        nn.BatchNorm1d(3),
        MBitLinear(3, 40000, bits_a=2, bits_w=2),
        nn.BatchNorm1d(40000),
        MBitLinear(40000, 2, bits_a=8, bits_w=8),
        nn.Linear(2, 2),
    )
    with pytest.raises(ValueError, match=r"40000 x 255 x 255 = 2601000000 does not fit the int32"):
        convert(model, example_input=torch.zeros(1, 1, 1, 1))


def test_mbbn_layers_refuse_xnor_mode_and_unknown_quantizers() -> None:
    model = models.create("mbbn_vgg_small", width=4, fc=8).eval()
    with pytest.raises(UnsupportedLayerError, match="mode='bitflow'"):
        convert(model, mode="xnor")

    class Odd(OddLinearQuantizer):
        pass

    model[3].input_quantizer = Odd(2)
    with pytest.raises(UnsupportedLayerError, match="Odd"):
        convert(model)


# ----------------------------------------------------------------------------- CLI


def _write_checkpoint(path: Path, model: nn.Module) -> None:
    from bitflow.train.checkpoint import save_checkpoint

    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "model_config": dict(model.bitflow_config),  # type: ignore[arg-type]
            "class_names": [str(i) for i in range(10)],
            "data": "fashion-mnist",
        },
    )


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)
def test_cli_convert_and_verify_an_mbbn_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bitflow.cli import main

    with _torch_seed(3):
        model = models.create("mbbn_vgg_small", width=4, fc=16, bits_a=2, bits_w=[2, 2, 3, 1, 2])
        x = torch.rand(32, 1, 28, 28)
    _randomize(model, x, 3)
    ckpt, out = tmp_path / "m.pt", tmp_path / "m.bfn"
    _write_checkpoint(ckpt, model)
    assert main(["convert", str(ckpt), "-o", str(out), "--json"]) == 0
    assert out.exists()
    assert main(["verify", str(ckpt), str(out), "--limit", "40", "--json"]) == 0
    assert '"sign_mismatches": 0' in capsys.readouterr().out


# ----------------------------------------------------------------------------- trained model


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)
@pytest.mark.parametrize("first_layer", ["float", "int8"])
def test_trained_mbbn_vgg_small_matches_on_the_full_fashion_mnist_test_set(
    first_layer: str,
) -> None:
    """1 epoch on 6000 training images (M = K = 2, width 16), then the full test set: zero level
    mismatches at every quantized layer input; with the float first layer only near-threshold
    float decisions (docs/architecture.md §3) may differ, with the int8 first layer nothing may."""
    torch.manual_seed(0)
    xtr = _idx(FASHION / "train-images-idx3-ubyte.gz")[:6000].astype(np.float32)[:, None] / 255
    ytr = _idx(FASHION / "train-labels-idx1-ubyte.gz")[:6000].astype(np.int64)
    xte = _idx(FASHION / "t10k-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255
    yte = _idx(FASHION / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    model = models.create("mbbn_vgg_small", width=16, bits_a=2, bits_w=2, first_layer=first_layer)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    order = torch.randperm(len(xtr))
    for i in range(0, len(xtr), 64):
        idx = order[i : i + 64]
        loss = nn.functional.cross_entropy(
            model(torch.from_numpy(xtr[idx])), torch.from_numpy(ytr[idx])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    graph = convert(model)
    r = verify(model, graph, xte, yte, batch_size=500)
    print(
        "verify:",
        {
            k: r[k]
            for k in (
                "accuracy_torch",
                "accuracy_integer",
                "prediction_mismatches",
                "sign_mismatches",
                "signs_compared",
                "ties",
                "float_ties",
            )
        },
        "near:",
        {k: r["near_threshold"][k] for k in ("count", "samples", "downstream")},
    )
    assert r["accuracy_torch"] > 0.6
    assert r["sign_mismatches"] == 0
    assert r["prediction_mismatches"] <= r["near_threshold"]["samples"]
    if first_layer == "int8":  # integer-only network: exact everywhere
        assert r["near_threshold"]["count"] == 0 and r["prediction_mismatches"] == 0
    assert math.isclose(
        r["accuracy_integer"],
        r["accuracy_torch"],
        abs_tol=r["near_threshold"]["samples"] / len(xte),
    )
    for k in available_kernels():
        rep = compare_with_reference(
            Engine(graph, kernels=k), xte[:2000], yte[:2000], batch_size=500
        )
        print(k, "engine accuracy (2000)", rep["accuracy"], "ms/sample", rep["ms_per_sample"])
        assert rep["reference"]["exact_mismatches"] == 0
        assert rep["reference"]["prediction_mismatches"] <= r["near_threshold"]["samples"]

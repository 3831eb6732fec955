"""Property tests of the MBBN level rules against PyTorch's own float32 quantizer.

The specification (``bitflow.convert._mbbn``): the integer (or float first-layer) threshold rule
gives, for every reachable input, the level that PyTorch's float32 quantizer (``decompose``)
assigns to the correctly rounded float32 value of the exact BatchNorm output,
``Q_torch(rn32(BN(relu?(alpha x + b))))``. The oracle here is independent of the converter: the
exact BatchNorm value in 60-digit decimal arithmetic, rounded to float32 by comparing it with the
midpoints of its float32 neighbours (ties to even), then the quantizer module itself.

Random bit widths (M = 1..8), quantizer kinds and activations, ranges ``t`` over six decades,
BatchNorm statistics of both signs with exact zeros, and BatchNorm outputs aimed at a boundary
(within a few float32 ulps of ``2jt/A`` at a reachable integer). ``BITFLOW_FUZZ_EXAMPLES`` raises
the number of examples (default 25 per test).
"""

from __future__ import annotations

import os
from decimal import Decimal, getcontext

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitflow.convert import batchshift as bs
from bitflow.convert._mbbn import quantizer_boundaries
from bitflow.nn.mbbn import MBitEncoder, MBitLinear, OddLinearQuantizer
from bitflow.nn.mbbn.quantizers import MultiBitInputQuantizer

getcontext().prec = 60
EXAMPLES = int(os.environ.get("BITFLOW_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _dec(x: float) -> Decimal:
    return Decimal(float(x))


def _rn32(d: Decimal) -> np.float32:
    """``d`` rounded to the nearest float32, ties to the even significand (exact)."""
    c = np.float32(float(d))
    cands = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    best = min(cands, key=lambda f: (abs(_dec(f) - d), int(np.array(f).view(np.uint32)) & 1))
    return np.float32(best)


def _quantizer(draw: st.DrawFn) -> MultiBitInputQuantizer:
    kind = draw(st.sampled_from(["encoder", "odd_linear"]))
    act = draw(st.sampled_from(["htanh", "hrelu"]))
    m = draw(st.integers(2 if act == "hrelu" else 1, 8))
    if kind == "encoder":
        return MBitEncoder(m, act)
    iq = OddLinearQuantizer(m, act)
    t = draw(st.floats(2.0**-10, 2.0**10, width=32))
    with torch.no_grad():
        iq.t.fill_(t)
    return iq


def _levels(iq: MultiBitInputQuantizer, u: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        v = iq.decompose(torch.from_numpy(np.ascontiguousarray(u, np.float32)))[0]
    return v.numpy().astype(np.int64)


def _real_boundaries(iq: MultiBitInputQuantizer) -> list[float]:
    a = (1 << iq.bits) - 1
    half = 1 << (iq.bits - 1)
    t = float(iq.clip_range().detach())
    return [2 * j * t / a for j in range(-(half - 1), half)]


@st.composite
def _quantizers(draw: st.DrawFn) -> MultiBitInputQuantizer:
    return _quantizer(draw)


@FUZZ
@given(iq=_quantizers(), seed=st.integers(0, 2**31))
def test_float32_steps_equal_the_quantizer(iq: MultiBitInputQuantizer, seed: int) -> None:
    """On float32 inputs (``rn32(u) = u``) the rule is the quantizer: the 17 float32 values around
    every boundary and random ones over ``[-2t, 2t]``."""
    _, bounds = quantizer_boundaries("q", MBitLinear(2, 1, input_quantizer=iq, bits_w=1))
    lanes = bs.level_float_thresholds(bs.BNParams.identity(1), boundaries=bounds)
    thr, _ = bs.float_plane_thresholds(lanes, 1)
    pts = [np.random.default_rng(seed).uniform(-2, 2, 200) * float(iq.clip_range().detach())]
    for b in _real_boundaries(iq):
        c = np.float32(b)
        pts.append(np.array([c], np.float32))
        lo = hi = c
        for _ in range(8):
            lo, hi = np.nextafter(lo, np.float32(-np.inf)), np.nextafter(hi, np.float32(np.inf))
            pts.append(np.array([lo, hi], np.float32))
    u = np.unique(np.concatenate(pts).astype(np.float32))
    got = 2 * (u[:, None] >= thr[0][None, :]).sum(1) - thr.shape[1]
    want = _levels(iq, u)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(float(u[i]).hex(), int(got[i]), int(want[i])) for i in bad[:5]]


@st.composite
def _int_case(draw: st.DrawFn) -> dict[str, object]:
    """A quantizer and one BatchNorm channel, the BN output aimed near a boundary at ``x0``."""
    iq = _quantizer(draw)
    f32 = st.floats(-4, 4, width=32)
    alpha = draw(st.floats(2.0**-10, 1.0, width=32))
    bias = draw(st.sampled_from([0.0])) if draw(st.booleans()) else draw(f32)
    mean = draw(f32)
    var = draw(st.floats(2.0**-10, 50, width=32))
    gamma = draw(st.sampled_from([0.0])) if draw(st.integers(0, 9)) == 0 else draw(f32)
    relu = draw(st.booleans())
    n = draw(st.integers(4, 150))
    x0 = draw(st.integers(-n, n))
    eps = 1e-5
    bds = _real_boundaries(iq)
    target = bds[draw(st.integers(0, len(bds) - 1))]
    # beta such that BN(x0) lies within a few float32 ulps of the boundary (or anywhere)
    z0 = max(0.0, alpha * x0 + bias) if relu else alpha * x0 + bias
    s = float(np.sqrt(np.float64(var) + eps))
    beta = np.float32(target - gamma * (z0 - mean) / s)
    for _ in range(draw(st.integers(-3, 3)) % 7):
        beta = np.nextafter(beta, np.float32(np.inf))
    if draw(st.integers(0, 4)) == 0:
        beta = np.float32(draw(f32))
    return {
        "iq": iq,
        "alpha": np.float32(alpha),
        "bias": np.float32(bias),
        "mean": np.float32(mean),
        "var": np.float32(var),
        "gamma": np.float32(gamma),
        "beta": np.float32(beta),
        "eps": eps,
        "relu": relu,
        "n": n,
    }


def _oracle_u(case: dict[str, object], z: Decimal) -> Decimal:
    if case["relu"] and z < 0:
        z = Decimal(0)
    g, mu, var, beta = (_dec(case[k]) for k in ("gamma", "mean", "var", "beta"))  # type: ignore[arg-type]
    return g * (z - mu) / (var + _dec(case["eps"])).sqrt() + beta  # type: ignore[arg-type]


@FUZZ
@given(case=_int_case())
def test_integer_level_rule_equals_the_quantizer_of_the_rounded_exact_bn(
    case: dict[str, object],
) -> None:
    """``level_int_thresholds`` on every reachable integer against ``Q_torch(rn32(BN_exact))``."""
    iq = case["iq"]
    assert isinstance(iq, MultiBitInputQuantizer)
    _, bounds = quantizer_boundaries("q", MBitLinear(2, 1, input_quantizer=iq, bits_w=1))
    n = int(case["n"])  # type: ignore[call-overload]
    bnp = bs.BNParams(
        mean=np.array([case["mean"]], np.float32),
        var=np.array([case["var"]], np.float32),
        eps=float(case["eps"]),  # type: ignore[arg-type]
        gamma=np.array([case["gamma"]], np.float32),
        beta=np.array([case["beta"]], np.float32),
    )
    th = bs.level_int_thresholds(
        lo=-n,
        hi=n,
        bn=bnp,
        boundaries=bounds,
        alpha=case["alpha"],  # type: ignore[arg-type]
        bias=case["bias"],  # type: ignore[arg-type]
        relu=bool(case["relu"]),
    )
    xs = np.arange(-n, n + 1)
    got = th.levels(xs[:, None])[:, 0]
    al, bi = _dec(case["alpha"]), _dec(case["bias"])  # type: ignore[arg-type]
    u = np.array([_rn32(_oracle_u(case, al * x + bi)) for x in xs], np.float32)
    want = _levels(iq, u)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(int(xs[i]), float(u[i]).hex(), int(got[i]), int(want[i])) for i in bad]


@FUZZ
@given(case=_int_case(), seed=st.integers(0, 2**31))
def test_float_level_rule_equals_the_quantizer_of_the_rounded_exact_bn(
    case: dict[str, object], seed: int
) -> None:
    """``level_float_thresholds`` (float first layer) on the float32 values around each of its
    thresholds and random ones against ``Q_torch(rn32(BN_exact(y)))``."""
    iq = case["iq"]
    assert isinstance(iq, MultiBitInputQuantizer)
    _, bounds = quantizer_boundaries("q", MBitLinear(2, 1, input_quantizer=iq, bits_w=1))
    bnp = bs.BNParams(
        mean=np.array([case["mean"]], np.float32),
        var=np.array([case["var"]], np.float32),
        eps=float(case["eps"]),  # type: ignore[arg-type]
        gamma=np.array([case["gamma"]], np.float32),
        beta=np.array([case["beta"]], np.float32),
    )
    lanes = bs.level_float_thresholds(bnp, boundaries=bounds, relu=bool(case["relu"]))
    thr, direction = bs.float_plane_thresholds(lanes, 1)
    finite = thr[0][np.isfinite(thr[0])]
    ys = [np.random.default_rng(seed).normal(0, 5, 64).astype(np.float32), finite]
    for f in finite:
        lo = hi = np.float32(f)
        for _ in range(2):
            lo, hi = np.nextafter(lo, np.float32(-np.inf)), np.nextafter(hi, np.float32(np.inf))
            ys.append(np.array([lo, hi], np.float32))
    y = np.unique(np.concatenate(ys).astype(np.float32))
    passed = (y[:, None] >= thr[0]) if direction[0] > 0 else (y[:, None] <= thr[0])
    got = 2 * passed.sum(1) - thr.shape[1]
    u = np.array([_rn32(_oracle_u(case, _dec(v))) for v in y], np.float32)
    want = _levels(iq, u)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [
        (float(y[i]).hex(), float(u[i]).hex(), int(got[i]), int(want[i])) for i in bad
    ]

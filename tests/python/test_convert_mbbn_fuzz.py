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
import pytest
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


# ----------------------------------------------------------------------------- whole chains

# A chain whose float32 arithmetic between the integer accumulator and the quantizer is exact up
# to one final rounding: odd-linear quantizers with dyadic scales ``t / A = 2^-k`` (so
# ``acc * scale_x * scale_w`` is exact), zero layer biases, BatchNorm with ``eps = 0``,
# ``var = 1``, ``mean = 0`` and ``gamma = +-2^g`` (so PyTorch's ``x * gamma + beta`` is
# ``rn32`` of the exact value, FMA or not). Then PyTorch's level IS ``Q_torch(rn32(BN_exact))``
# at every reachable accumulator: no ties (the converter's own count must be 0) and no sign
# mismatch is legitimate. The BatchNorm shifts ``beta`` are aimed so that the most common
# accumulator of each channel on the test images lands within a few ulps of a quantizer
# boundary: every step's float32 rounding is exercised on real data. Channel counts 1..33,
# M and K 1..6, both activations, pools, padding, pad values.


@st.composite
def _chains(draw: st.DrawFn) -> dict[str, object]:
    act = draw(st.sampled_from(["htanh", "hrelu"]))
    chans = [draw(st.sampled_from([1, 2, 3, 5, 7, 9, 33])) for _ in range(3)]
    f = draw(st.sampled_from([1, 3, 5]))
    size = draw(st.integers(6, 9))
    layers = []
    for _ in range(3):
        m = draw(st.integers(2 if act == "hrelu" else 1, 6))
        k = draw(st.integers(1, 6))
        layers.append(
            {
                "m": m,
                "k": k,
                "kx": draw(st.integers(-1, 1)),
                "kw": draw(st.integers(0, 3)),
                "relu": draw(st.booleans()),
                "pad": draw(st.integers(0, 1)),
                "pad_value": draw(st.integers(0, 1)),
                "pool": draw(st.booleans()),
            }
        )
    return {
        "act": act,
        "chans": chans,
        "f": f,
        "size": size,
        "layers": layers,
        "seed": draw(st.integers(0, 2**31)),
    }


def _dyadic_quantizers(layer: torch.nn.Module, spec: dict[str, int]) -> None:
    """Ranges ``t = A 2^-e`` so that the scales ``t / A`` are powers of two (exact in float32)."""
    iq, wq = layer.input_quantizer, layer.weight_quantizer
    a, b = (1 << spec["m"]) - 1, (1 << spec["k"]) - 1
    e = (a.bit_length() - 1) + spec["kx"]  # t = A 2^-e near 1..4
    with torch.no_grad():
        iq.t.fill_(a * 2.0**-e)  # type: ignore[union-attr, operator]
        wmax = float(layer.weight.detach().abs().max())  # type: ignore[union-attr, operator]
        ew = int(np.floor(np.log2(b / wmax))) + spec["kw"]
        wq.t.fill_(b * 2.0**-ew)  # type: ignore[union-attr, operator]
        if layer.bias is not None:  # type: ignore[union-attr]
            layer.bias.zero_()  # type: ignore[union-attr, operator]


def _build_chain(spec: dict[str, object]) -> torch.nn.Module:
    from torch import nn

    from bitflow.nn.mbbn import MBitConv2d

    chans = spec["chans"]
    assert isinstance(chans, list)
    layers = spec["layers"]
    assert isinstance(layers, list)
    size = int(spec["size"])  # type: ignore[call-overload]
    c0 = chans[0]
    mods: list[nn.Module] = [nn.Conv2d(1, c0, 3, padding=1), nn.BatchNorm2d(c0)]
    cin = c0
    for i, cout in enumerate(chans[1:]):
        sp = dict(layers[i])
        if size - 2 < 1:
            sp["pad"] = 1  # keep at least one pixel
        conv = MBitConv2d(
            cin,
            cout,
            3,
            padding=sp["pad"],
            bits_a=sp["m"],
            bits_w=sp["k"],
            method="quantizer",
            activation=spec["act"],
            pad_value=sp["pad_value"],
        )
        _dyadic_quantizers(conv, sp)
        mods.append(conv)
        size = size + 2 * sp["pad"] - 2
        if sp["relu"]:
            mods.append(nn.ReLU())
        if sp["pool"] and size >= 2:
            mods.append(nn.MaxPool2d(2, 2))
            size //= 2
        mods.append(nn.BatchNorm2d(cout))
        cin = cout
    sp = layers[2]
    mods.pop()  # the BatchNorm before the linear layer acts on the flattened features
    mods += [nn.Flatten(), nn.BatchNorm1d(cin * size * size)]
    lin = MBitLinear(
        cin * size * size,
        int(spec["f"]),  # type: ignore[call-overload]
        bits_a=sp["m"],
        bits_w=sp["k"],
        method="quantizer",
        activation=spec["act"],
    )
    _dyadic_quantizers(lin, sp)
    mods += [lin, nn.BatchNorm1d(int(spec["f"])), nn.Linear(int(spec["f"]), 3)]  # type: ignore[call-overload]
    model = nn.Sequential(*mods)
    model.in_channels, model.image_size = 1, int(spec["size"])  # type: ignore[assignment, call-overload]
    return model


def _aim(model: torch.nn.Module, x: torch.Tensor, rng: np.random.Generator) -> None:
    """Exact-arithmetic BatchNorms before every M-bit layer fed by an integer accumulator, their
    ``beta`` aimed at a boundary for the channel's most common input (see the comment above)."""
    from torch import nn

    mods = list(model)
    for i, bn in enumerate(mods):
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or i + 1 >= len(mods):
            continue
        layer = mods[i + 1]
        if not isinstance(layer, MBitLinear) and type(layer).__name__ != "MBitConv2d":
            continue
        seen: dict[str, torch.Tensor] = {}
        h = bn.register_forward_pre_hook(
            lambda _m, inp, seen=seen: seen.__setitem__("y", inp[0].detach())
        )
        with torch.no_grad():
            model.eval()(x)
        h.remove()
        y = seen["y"]
        per = y.transpose(0, 1).reshape(y.shape[1], -1) if y.dim() == 4 else y.t()
        iq = layer.input_quantizer
        assert isinstance(iq, MultiBitInputQuantizer)
        bds = _real_boundaries(iq)
        first = 0 if iq.activation == "htanh" else len(bds) // 2 + 1
        integer_fed = i > 1  # mods[1] follows the float first conv: leave it to near-threshold
        with torch.no_grad():
            for c in range(per.shape[0]):
                if not integer_fed:
                    bn.running_mean[c], bn.running_var[c] = float(rng.normal(0, 0.3)), 1.0
                    bn.weight[c], bn.bias[c] = float(rng.normal(0, 2)), float(rng.normal(0, 0.5))
                    continue
                bn.eps = 0.0
                bn.running_mean[c], bn.running_var[c] = 0.0, 1.0
                g = (
                    0.0
                    if rng.random() < 0.1
                    else float(rng.choice([-1, 1])) * 2.0 ** rng.integers(-2, 3)
                )
                bn.weight[c] = g
                vals, counts = torch.unique(per[c], return_counts=True)
                pick = (
                    int(torch.argmax(counts))
                    if rng.random() < 0.7
                    else int(rng.integers(len(vals)))
                )
                target = bds[int(rng.integers(first, len(bds)))] if first < len(bds) else 0.0
                beta = np.float32(target - g * float(vals[pick]))
                for _ in range(int(rng.integers(0, 4))):
                    beta = np.nextafter(beta, np.float32(np.inf if rng.random() < 0.5 else -np.inf))
                bn.bias[c] = float(beta) if rng.random() < 0.85 else float(rng.normal(0, 1))


@pytest.mark.slow  # ~1 min per chain (tie windows of up to 63 boundaries per channel)
@settings(
    max_examples=max(4, EXAMPLES // 3),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=_chains())
def test_exact_arithmetic_chains_with_aimed_batchnorms_match_pytorch_level_for_level(
    spec: dict[str, object],
) -> None:
    from bitflow.convert import convert, verify
    from bitflow.engine import Engine, available_kernels
    from bitflow.engine.check import compare_with_reference

    seed = int(spec["seed"])  # type: ignore[call-overload]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_chain(spec)
    rng = np.random.default_rng(seed)
    size = int(spec["size"])  # type: ignore[call-overload]
    x = rng.random((16, 1, size, size), dtype=np.float32)
    _aim(model, torch.from_numpy(x), rng)
    graph = convert(model.eval())
    ties = {op.name: op.attrs["ties"] for op in graph.ops if "ties" in op.attrs}
    assert all(v == 0 for v in ties.values()), ties  # PyTorch = rn32(exact): nothing to tie
    r = verify(model, graph, x, batch_size=16)
    assert r["sign_mismatches"] == 0, {k: r[k] for k in ("sign_mismatches_by_layer", "ties")}
    for k in available_kernels():
        rep = compare_with_reference(Engine(graph, kernels=k, threads=1), x, batch_size=16)
        assert rep["reference"]["exact_mismatches"] == 0, (k, rep["reference"])

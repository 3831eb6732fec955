"""MBBN encoding, quantizers and layers (bitflow.nn.mbbn).

Oracles, independent of the code under test:

- levels/planes: Python integers and ``bin()`` digits of ``q = (v + 2^M - 1) / 2`` (Eq. 7);
- Eq. 8 / Eq. 17-18: the plain int64 dot product ``np.dot`` of the levels;
- packed bits: bit-by-bit Python integer arithmetic; the native engine's ``threshold_planes`` and
  ``bgemm_planes`` (when built) for the shared plane convention;
- Eq. 10: the sines themselves; Eq. 13: autograd through the (smooth) sines, and the two lines
  of Eq. 13 typed out for M = 2;
- odd-level quantizer: brute force nearest odd level in float64; gradients in closed form;
- layers: ``F.conv2d`` / ``F.linear`` in float64 on the quantized tensors, an int64 im2col
  product of the levels, and branch-by-branch ``{-1,+1}`` convolutions of numpy-encoded planes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bounds import U64, assert_within, gamma
from hypothesis import given, settings
from hypothesis import strategies as st

from bitflow.nn import BinaryConv2d, MBitConv2d, MBitLinear
from bitflow.nn import mbbn as M
from bitflow.nn import quantizers as Q

BITS = st.integers(1, 8)


def rand_levels(rng: np.random.Generator, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform random odd levels of a ``bits``-bit code: ``2q - A`` for ``q`` in ``0..A``."""
    a = 2**bits - 1
    return 2 * rng.integers(0, a + 1, size=shape, dtype=np.int64) - a


def int_conv2d(
    x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, pad_value: float = 0.0
) -> torch.Tensor:
    """Cross-correlation of integer-valued tensors in int64 via im2col (no F.conv2d)."""
    xp = F.pad(x.double(), (padding,) * 4, value=pad_value)
    n, _, hp, wp = xp.shape
    o, _, kh, kw = w.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    cols = F.unfold(xp, (kh, kw), stride=stride).round().to(torch.int64)
    out = torch.matmul(w.double().round().to(torch.int64).reshape(o, -1), cols)
    return out.reshape(n, o, ho, wo)


# ============================================================================ levels and planes


@pytest.mark.parametrize("bits", range(1, 9))
def test_encode_decode_round_trip_all_levels(bits: int) -> None:
    a = 2**bits - 1
    levels = np.arange(-a, a + 1, 2)
    assert list(levels) == M.odd_levels(bits)
    planes = M.encode(levels, bits)
    assert planes.shape == (bits, levels.size)
    for j, v in enumerate(levels):
        q = (int(v) + a) // 2
        digits = bin(q)[2:].zfill(bits)[::-1]  # digits[m] = bit m of q
        assert [int(p) for p in planes[:, j]] == [1 if d == "1" else -1 for d in digits]
    np.testing.assert_array_equal(M.decode(planes), levels)
    t = torch.tensor(levels, dtype=torch.float32).reshape(-1, 1)
    tp = M.encode(t, bits)
    assert tp.dtype == torch.float32 and tp.shape == (bits, t.shape[0], 1)
    torch.testing.assert_close(M.decode(tp), t, rtol=0, atol=0)
    np.testing.assert_array_equal(
        M.unsigned_to_levels(M.levels_to_unsigned(levels, bits), bits), levels
    )


@given(
    bits=BITS,
    seed=st.integers(0, 2**32 - 1),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
)
@settings(max_examples=40, deadline=None)
def test_round_trip_random_arrays(bits: int, seed: int, shape: list[int]) -> None:
    v = rand_levels(np.random.default_rng(seed), bits, tuple(shape))
    np.testing.assert_array_equal(M.decode(M.encode(v, bits)), v)


def test_encode_rejects_bad_levels() -> None:
    with pytest.raises(ValueError, match="even"):
        M.encode(np.array([1, 0, 3]), 2)
    with pytest.raises(ValueError, match="outside"):
        M.encode(np.array([5]), 2)
    with pytest.raises(ValueError, match="integer-valued"):
        M.encode(np.array([0.5]), 2)
    with pytest.raises(ValueError, match="NaN"):
        M.encode(np.array([np.nan]), 2)
    with pytest.raises(ValueError, match="bits"):
        M.encode(np.array([1]), 0)
    with pytest.raises(ValueError, match="bits"):
        M.encode(np.array([1]), M.MAX_BITS + 1)
    with pytest.raises(TypeError, match="bits"):
        M.encode(np.array([1]), 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="-1 and \\+1"):
        M.decode(np.array([[1, 0]]))
    with pytest.raises(ValueError, match="-1 and \\+1"):
        M.pack_planes(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="0..3"):
        M.unsigned_to_levels(np.array([4]), 2)


@given(n=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_pack_bits_matches_bitwise_oracle(n: int, seed: int) -> None:
    bits01 = np.random.default_rng(seed).integers(0, 2, size=(2, n))
    packed = M.pack_bits(bits01)
    assert packed.dtype == np.uint64 and packed.shape == (2, -(-n // 64))
    for r in range(2):
        for w in range(packed.shape[1]):
            expect = sum(
                int(bits01[r, i]) << (i - 64 * w) for i in range(64 * w, min(n, 64 * w + 64))
            )
            assert int(packed[r, w]) == expect


@given(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_xnor_popcount_is_pm1_dot(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.choice([-1, 1], size=n), rng.choice([-1, 1], size=n)
    got = M.xnor_popcount(M.pack_planes(a), M.pack_planes(b), n)
    assert int(got) == int(np.dot(a, b))


@given(bits_x=BITS, bits_w=BITS, n=st.integers(1, 150), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=120, deadline=None)
def test_eq8_decomposition_equals_integer_dot(bits_x: int, bits_w: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rand_levels(rng, bits_x, (3, n))
    w = rand_levels(rng, bits_w, (2, n))
    np.testing.assert_array_equal(M.encoded_dot(x, w, bits_x, bits_w), x @ w.T)
    assert int(M.encoded_dot(x[0], w[0], bits_x, bits_w)) == int(np.dot(x[0], w[0]))


@pytest.mark.parametrize("bits_x", range(1, 9))
@pytest.mark.parametrize("bits_w", range(1, 9))
def test_eq8_all_m_k_extreme_levels(bits_x: int, bits_w: int) -> None:
    # Every (M, K) in 1..8 deterministically, including the extremes +-(2^M - 1) where a plane
    # convention error (e.g. a swapped top plane) would show most.
    a, b = 2**bits_x - 1, 2**bits_w - 1
    x = np.array([a, -a, 1, -1, a, 1] * 11 + [a])  # length 67: crosses a word boundary
    w = np.array([b, b, -1, 1, -b, -b] * 11 + [-b])
    assert int(M.encoded_dot(x, w, bits_x, bits_w)) == int(np.dot(x, w))


@given(bits_x=BITS, bits_w=BITS, n=st.integers(1, 150), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=80, deadline=None)
def test_eq17_18_zero_one_encoding_equals_integer_dot(
    bits_x: int, bits_w: int, n: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    qx = rng.integers(0, 2**bits_x, size=n)
    qw = rng.integers(0, 2**bits_w, size=n)
    assert M.unsigned_plane_dot(qx, qw, bits_x, bits_w) == int(np.dot(qx, qw))  # Eq. 6
    vx, vw = 2 * qx - (2**bits_x - 1), 2 * qw - (2**bits_w - 1)  # Eq. 17 times (2^M - 1)
    assert M.zero_one_dot(qx, qw, bits_x, bits_w) == int(np.dot(vx, vw))  # Eq. 18 summed
    assert int(M.encoded_dot(vx, vw, bits_x, bits_w)) == int(np.dot(vx, vw))  # Eq. 19


def test_speedup_theory_eq16() -> None:
    # Eq. 16 at the paper's setting N = 8192, gamma = 1.91, beta = gamma/2, L = 64:
    # S_22 = 8192*1.91 / (4*(1.91 + 2*128) + 3*0.955) = 15646.72 / 1034.505 = 15.1248..., the
    # paper's "~15.13x".
    # float64, positive terms only: each side at most 8 roundings (and the decimals' own)
    assert M.speedup_theory(2, 2, 8192) == pytest.approx(
        15646.72 / 1034.505, rel=2 * gamma(10, U64), abs=0
    )
    assert abs(M.speedup_theory(2, 2, 8192) - 15.13) < 0.01
    s = [M.speedup_theory(m, m, 8192) for m in range(1, 7)]
    assert all(a > b for a, b in zip(s, s[1:], strict=False))
    assert M.speedup_theory(2, 3, 8192) == M.speedup_theory(3, 2, 8192)
    with pytest.raises(ValueError):
        M.speedup_theory(2, 2, 0)


def test_accumulator_bound() -> None:
    assert M.accumulator_bound(576, 2, 2) == 576 * 3 * 3
    assert M.accumulator_bound(4096, 8, 8) == 4096 * 255 * 255


@pytest.mark.native
def test_plane_convention_matches_native_engine() -> None:
    nat = pytest.importorskip("bitflow._native", reason="native extension not built")
    rng = np.random.default_rng(7)
    # bgemm_planes on our packed planes equals the integer product of the levels.
    for bits_x, bits_w, n in ((1, 1, 64), (2, 3, 130), (4, 2, 257), (6, 6, 100)):
        x = rand_levels(rng, bits_x, (5, n))
        w = rand_levels(rng, bits_w, (7, n))
        a = np.ascontiguousarray(M.pack_planes(M.encode(x, bits_x)))
        b = np.ascontiguousarray(M.pack_planes(M.encode(w, bits_w)))
        got = nat.bgemm_planes(a, b, n, kernels="ref")
        np.testing.assert_array_equal(np.asarray(got), x @ w.T)
        np.testing.assert_array_equal(M.plane_gemm(a, b, n), x @ w.T)
    # threshold_planes with thresholds 1..L on acc = q produces exactly our planes of 2q - L.
    for bits in (1, 2, 3, 5):
        levels = 2**bits - 1
        q = np.arange(levels + 1, dtype=np.int32)
        acc = np.ascontiguousarray(np.tile(q, (3, 1)).T)  # [q, 3 channels]
        thr = np.ascontiguousarray(np.tile(np.arange(1, levels + 1, dtype=np.int32), (3, 1)))
        out = np.asarray(nat.threshold_planes(acc, thr, np.ones(3, dtype=np.int8)))
        ours = M.pack_planes(M.encode(np.tile(2 * q - levels, (3, 1)).T, bits))
        np.testing.assert_array_equal(out, ours)


@pytest.mark.native
def test_threshold_f32_planes_counts_passed_thresholds() -> None:
    # oracle: q = #{l : not y < thr_l} (dir +1) / #{l : not y > thr_l} (dir -1) in numpy, planes =
    # our encode of 2q - L; a NaN passes every threshold (the top level, like bitpack's +1)
    nat = pytest.importorskip("bitflow._native")
    rng = np.random.default_rng(3)
    for bits in (1, 2, 3, 8):
        levels = 2**bits - 1
        c = 70
        thr = np.sort(rng.normal(0, 1, (c, levels)).astype(np.float32), axis=1)
        thr[0, :] = -np.inf
        thr[1, -1] = np.inf
        d = np.where(rng.random(c) < 0.5, 1, -1).astype(np.int8)
        y = rng.normal(0, 1.2, (4, 5, c)).astype(np.float32)
        y[0, 0, :3] = np.nan
        y[1, 1, :] = thr[np.arange(c), rng.integers(0, levels, c)]  # exactly on a threshold
        out = np.asarray(nat.threshold_f32_planes(y, thr, d))
        q = np.where(d > 0, (~(y[..., None] < thr)).sum(-1), (~(y[..., None] > thr)).sum(-1))
        ours = M.pack_planes(M.encode(2 * q - levels, bits))
        np.testing.assert_array_equal(out, ours if bits > 1 else ours.reshape(out.shape))
    with pytest.raises(ValueError, match="sorted"):
        nat.threshold_f32_planes(
            np.zeros((2, 3), np.float32), np.array([[1, 0, 2]] * 3, np.float32), np.ones(3, np.int8)
        )
    with pytest.raises(ValueError, match="NaN"):
        nat.threshold_f32_planes(
            np.zeros((2, 3), np.float32), np.full((3, 3), np.nan, np.float32), np.ones(3, np.int8)
        )
    with pytest.raises(ValueError, match="2\\^M - 1"):
        nat.threshold_f32_planes(
            np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), np.ones(3, np.int8)
        )


# ============================================================================ Table I, Eq. 10-13


def test_htanh_hrelu_values_and_gradients() -> None:
    x = torch.tensor(
        [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True
    )
    torch.testing.assert_close(
        M.htanh(x), torch.tensor([-1.0, -1, -0.5, 0, 0.5, 1, 1], dtype=torch.float64)
    )
    (g,) = torch.autograd.grad(M.htanh(x).sum(), x)
    torch.testing.assert_close(g, ((x >= -1) & (x <= 1)).double())
    torch.testing.assert_close(
        M.hrelu(x), torch.tensor([0.0, 0, 0, 0, 0.5, 1, 1], dtype=torch.float64)
    )
    (g,) = torch.autograd.grad(M.hrelu(x).sum(), x)
    torch.testing.assert_close(g, ((x >= 0) & (x <= 1)).double())


def test_table_ii_two_bit_states() -> None:
    enc = M.MBitEncoder(bits=2)
    x = torch.tensor([-1.0, -0.9, -0.5, -0.1, 0.1, 0.5, 0.9, 1.0, 0.0, 2 / 3 + 1e-6])
    v, s = enc.decompose(x)
    assert float(s) == pytest.approx(1 / 3)
    # Table II: [-1,-2/3] -> -1, (-2/3,0] -> -1/3, (0,2/3) -> 1/3, [2/3,1] -> 1 (levels x3);
    # the boundary 0 goes up here (sign(0) = +1).
    assert v.tolist() == [-3, -3, -1, -1, 1, 1, 3, 3, 1, 3]
    planes = enc.planes(x)
    # Table II encoded states {high, low}: -1 -> {-1,-1}, -1/3 -> {-1,+1}, 1/3 -> {+1,-1}, 1 -> {+1,+1}
    assert planes[:, 2].tolist() == [1, -1] and planes[:, 4].tolist() == [-1, 1]
    assert planes[:, 0].tolist() == [-1, -1] and planes[:, 6].tolist() == [1, 1]


@given(bits=BITS, x=st.floats(-1.0, 1.0, allow_nan=False))
@settings(max_examples=300, deadline=None)
def test_ladder_equals_eq10_sines_off_boundaries(bits: int, x: float) -> None:
    a = 2**bits - 1
    y = a * x
    if abs(y / 2 - round(y / 2)) < 1e-6:  # A x (near) even: a level boundary, sin = 0
        return
    t = torch.tensor([x], dtype=torch.float64)
    got = M.MBitEncoder(bits).planes(t)
    torch.testing.assert_close(got, M.encoder_sine(t, bits), rtol=0, atol=0)


def test_encoder_sine_is_literal_eq11_for_two_bits() -> None:
    x = torch.linspace(-0.99, 0.99, 199, dtype=torch.float64)
    s = M.encoder_sine(x, 2)
    sgn = lambda t: torch.where(t >= 0, 1.0, -1.0).double()  # noqa: E731
    torch.testing.assert_close(s[1], sgn(torch.sin(0.75 * math.pi * x)))  # phi_2^2
    torch.testing.assert_close(s[0], sgn(-torch.sin(1.5 * math.pi * x)))  # phi_2^1


def test_eq13_gradient_two_bits_closed_form() -> None:
    x = torch.linspace(-1.3, 1.3, 261, dtype=torch.float64, requires_grad=True)
    g_out = torch.linspace(-1, 1, 261, dtype=torch.float64)
    v = M.MBitEncodeFn.apply(x, 2, "sine")
    (g,) = torch.autograd.grad((v * g_out).sum(), x)
    inside = (x.detach().abs() <= 1).double()
    xd = x.detach()
    # Algorithm 1: plane m receives 2^m g_v; Eq. 13: phi_2^2' = 3/4 pi cos(3/4 pi x),
    # phi_2^1' = -3/2 pi cos(3/2 pi x), zero outside [-1, 1].
    expect = (
        g_out
        * inside
        * (
            2 * 0.75 * math.pi * torch.cos(0.75 * math.pi * xd)
            + 1 * (-1.5 * math.pi) * torch.cos(1.5 * math.pi * xd)
        )
    )
    torch.testing.assert_close(g, expect)


@pytest.mark.parametrize("bits", range(1, 9))
def test_eq13_gradient_is_derivative_of_the_sines(bits: int) -> None:
    a = 2**bits - 1
    x = torch.linspace(-0.999, 0.999, 101, dtype=torch.float64, requires_grad=True)
    # Oracle: autograd through the smooth sines of Eq. 10 (without the sign).
    smooth = torch.stack(
        [
            (1 if m == bits - 1 else -1) * torch.sin(a * math.pi * x / 2 ** (m + 1))
            for m in range(bits)
        ]
    )
    gp = torch.randn(bits, 101, dtype=torch.float64, generator=torch.Generator().manual_seed(bits))
    (expect,) = torch.autograd.grad((smooth * gp).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    planes = M.MBitPlanesFn.apply(x2, bits)
    (got,) = torch.autograd.grad((planes * gp).sum(), x2)
    torch.testing.assert_close(got, expect)
    # The fused levels backward equals the per-plane backward with g_{c_m} = 2^m g_v.
    gv = torch.randn(101, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + bits))
    x3 = x.detach().clone().requires_grad_(True)
    (fused,) = torch.autograd.grad((M.MBitEncodeFn.apply(x3, bits, "sine") * gv).sum(), x3)
    x4 = x.detach().clone().requires_grad_(True)
    (unfused,) = torch.autograd.grad((M.decode(M.MBitPlanesFn.apply(x4, bits)) * gv).sum(), x4)
    torch.testing.assert_close(fused, unfused)
    # And the forward values agree: decode(planes) = ladder levels.
    torch.testing.assert_close(
        M.decode(M.MBitPlanesFn.apply(x.detach(), bits)), M.odd_ladder(a * x.detach(), a)
    )


def test_encoder_ste_gradient_and_activation_gate() -> None:
    x = torch.tensor(
        [-1.5, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], dtype=torch.float64, requires_grad=True
    )
    enc = M.MBitEncoder(bits=3, gradient="ste")
    v, s = enc.decompose(x)
    (g,) = torch.autograd.grad((v * s).sum(), x)
    torch.testing.assert_close(
        g, ((x.detach() >= -1) & (x.detach() <= 1)).double()
    )  # d(v/A)/dx = 1 inside
    enc = M.MBitEncoder(bits=3, activation="hrelu", gradient="ste")
    x2 = x.detach().clone().requires_grad_(True)
    v, s = enc.decompose(x2)
    assert set(v.tolist()) <= {1.0, 3.0, 5.0, 7.0}  # HReLU: only the upper half of the levels
    (g,) = torch.autograd.grad((v * s).sum(), x2)
    torch.testing.assert_close(g, ((x2.detach() >= 0) & (x2.detach() <= 1)).double())


def test_quantizer_option_errors() -> None:
    with pytest.raises(ValueError, match="constant"):
        M.MBitEncoder(bits=1, activation="hrelu")
    with pytest.raises(ValueError, match="activation"):
        M.MBitEncoder(bits=2, activation="relu")
    with pytest.raises(ValueError, match="gradient"):
        M.MBitEncoder(bits=2, gradient="cosine")
    with pytest.raises(ValueError, match="init_range"):
        M.OddLinearQuantizer(bits=2, init_range=0.0)
    with pytest.raises(ValueError, match="method"):
        M.make_quantizers(2, 2, method="magic")
    with pytest.raises(ValueError, match="bits"):
        M.MBitWeight(bits=0)


def test_quantizers_registered_with_bits() -> None:
    names = Q.list_quantizers()
    for name, cls in (
        ("mbit_encoder", M.MBitEncoder),
        ("odd_linear", M.OddLinearQuantizer),
        ("mbit_weight", M.MBitWeight),
        ("odd_linear_weight", M.OddLinearWeight),
    ):
        assert name in names
        q = Q.get(name)
        assert isinstance(q, cls) and q.bits >= 1 and q.name == name
    assert isinstance(Q.get("mbit_weight"), Q.WeightQuantizer)
    assert isinstance(Q.get("mbit_encoder"), Q.InputQuantizer)


# ============================================================================ weights


def test_mbit_weight_one_bit_is_eq14() -> None:
    w = torch.tensor([[-1.5, -0.2, 0.0, -0.0, 0.3, 2.0]], dtype=torch.float64, requires_grad=True)
    v, s = M.MBitWeight(bits=1).decompose(w)
    # sign(HTanh(w)) with sign(0) = sign(-0.0) = +1; no scale (1 / (2^1 - 1) = 1)
    assert v.tolist() == [[-1, -1, 1, 1, 1, 1]] and s.tolist() == [1.0]
    (g,) = torch.autograd.grad(v.sum(), w)
    torch.testing.assert_close(g, (w.detach().abs() <= 1).double())


@given(bits=st.integers(2, 8), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_mbit_weight_k_bits_nearest_odd_level(bits: int, seed: int) -> None:
    b = 2**bits - 1
    w = torch.from_numpy(
        np.random.default_rng(seed).uniform(-1.3, 1.3, size=(3, 17))
    ).requires_grad_(True)
    v, s = M.MBitWeight(bits).decompose(w)
    y = b * np.clip(w.detach().numpy(), -1, 1)
    lv = np.array(M.odd_levels(bits), dtype=np.float64)
    nearest = lv[np.argmin(np.abs(y[..., None] - lv) - 1e-9 * lv, axis=-1)]  # ties -> upper level
    np.testing.assert_array_equal(v.detach().numpy(), nearest)
    torch.testing.assert_close(s, torch.full((3,), 1.0 / b, dtype=torch.float64))
    (g,) = torch.autograd.grad(v.sum(), w)
    torch.testing.assert_close(g, b * (w.detach().abs() <= 1).double())


def test_mbit_weight_init_latent_rescales_only_multibit() -> None:
    torch.manual_seed(0)
    c1 = MBitConv2d(8, 4, 3, bits_a=2, bits_w=1)
    assert float(c1.weight.detach().abs().max()) < 0.5  # PyTorch default init, bound 1/sqrt(72)
    c3 = MBitConv2d(8, 4, 3, bits_a=2, bits_w=3)
    assert float(c3.weight.detach().abs().max()) == pytest.approx(1.0)


# ============================================================================ odd-linear (Algorithm 2)


@given(bits=BITS, t=st.floats(0.05, 4.0), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_odd_linear_levels_brute_force(bits: int, t: float, seed: int) -> None:
    a = 2**bits - 1
    x = np.random.default_rng(seed).uniform(-1.5 * t, 1.5 * t, size=64)
    v = M.odd_linear_levels(torch.from_numpy(x), torch.tensor(t, dtype=torch.float64), bits)
    y = a * np.clip(x, -t, t) / t
    lv = np.array(M.odd_levels(bits), dtype=np.float64)
    dist = np.abs(y[:, None] - lv)
    keep = np.sort(dist, axis=1)[:, 1] - np.sort(dist, axis=1)[:, 0] > 1e-9  # skip exact ties
    nearest = lv[np.argmin(dist, axis=1)]
    np.testing.assert_array_equal(v.detach().numpy()[keep], nearest[keep])
    assert len(np.unique(v.detach().numpy())) <= 2**bits


def test_odd_linear_has_2_pow_k_levels_eq15_has_zero() -> None:
    # Eq. 15 as printed, K = 2: round(clamp(x/t) * (2^(K-1) - 1)) * d gives {-d, 0, d}: 3 levels
    # including 0, which no {-1,+1} code represents (encode rejects even levels). The odd-level
    # quantizer gives the 2^K = 4 levels of Table II.
    x = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    eq15 = torch.unique(torch.round(x.clamp(-1, 1) * (2 ** (2 - 1) - 1)))
    assert eq15.tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="even"):
        M.encode(eq15.numpy(), 2)
    v = M.odd_linear_levels(x, torch.tensor(1.0, dtype=torch.float64), 2)
    assert torch.unique(v).tolist() == [-3.0, -1.0, 1.0, 3.0]


def test_odd_linear_gradients_closed_form() -> None:
    bits, a = 3, 7
    q = M.OddLinearQuantizer(bits=bits, init_range=0.8).double()
    x = torch.tensor(
        [-2.0, -0.79, -0.3, 0.05, 0.33, 0.7, 1.5], dtype=torch.float64, requires_grad=True
    )
    v, s = q.decompose(x)
    xq = v * s
    g_out = torch.tensor([0.5, -1.0, 2.0, 1.0, -0.25, 3.0, 1.5], dtype=torch.float64)
    gx, gt = torch.autograd.grad((xq * g_out).sum(), (x, q.t))
    xd, t = x.detach(), 0.8
    inside = (xd.abs() <= t).double()
    torch.testing.assert_close(gx, g_out * inside)  # dQ/dx = 1[|x| <= t]
    # dQ/dt = v/A - x/t inside, v/A outside (STE through the rounding)
    dqdt = v.detach() / a - inside * xd / t
    torch.testing.assert_close(gt, (g_out * dqdt).sum())
    torch.testing.assert_close(s, torch.tensor(t / a, dtype=torch.float64))


def test_odd_linear_weight_per_channel_range() -> None:
    torch.manual_seed(1)
    layer = MBitConv2d(3, 5, 3, bits_a=2, bits_w=3, method="quantizer", per_channel=True)
    t = layer.weight_quantizer.t
    assert t.shape == (5,)
    torch.testing.assert_close(t.detach(), layer.weight.detach().abs().flatten(1).amax(1))
    v, s = layer.quantized_weight()
    assert float(v.detach().abs().max()) == 7 and bool((v.detach().remainder(2) == 1).all())
    torch.testing.assert_close(s, t.detach() / 7)
    per_tensor = MBitConv2d(3, 5, 3, bits_a=2, bits_w=3, method="quantizer")
    assert per_tensor.weight_quantizer.t.shape == (1,)


# ============================================================================ layers


@pytest.mark.parametrize("method", ["encoder", "quantizer"])
@pytest.mark.parametrize(
    ("bits_a", "bits_w", "stride", "padding", "pad_value"),
    [(2, 2, 1, 1, 0), (3, 2, 2, 1, 0), (1, 4, 1, 0, 0), (4, 1, 1, 2, 1), (2, 3, 2, 1, 1)],
)
def test_conv_exact_transformation_to_branches(
    method: str, bits_a: int, bits_w: int, stride: int, padding: int, pad_value: int
) -> None:
    torch.manual_seed(bits_a * 10 + bits_w)
    layer = MBitConv2d(
        6,
        5,
        3,
        stride=stride,
        padding=padding,
        bias=False,
        bits_a=bits_a,
        bits_w=bits_w,
        method=method,
        pad_value=pad_value,
    )
    x = torch.randn(2, 6, 7, 7) * 0.8
    y = layer(x)
    vx, sx = layer.quantized_input(x)
    vw, sw = layer.quantized_weight()
    a = 2**bits_a - 1
    # 1. the integer accumulation is exact: int64 im2col of the levels
    acc = int_conv2d(vx.detach(), vw.detach(), stride, padding, pad_value=a if pad_value else 0.0)
    torch.testing.assert_close(layer.integer_output(x), acc, rtol=0, atol=0)
    # 2. the layer equals float64 F.conv2d of the quantized tensors (the QNN of Algorithm 2)
    xq, wq = (vx * sx).double(), (vw * sw.view(-1, 1, 1, 1)).double()
    if pad_value:
        xq, pad = F.pad(xq, (padding,) * 4, value=float(a * sx.detach())), 0
    else:
        pad = padding
    # y = fl(acc fl(sx sw)) with the exact integer acc (2 roundings); the oracle convolves the
    # float32-rounded sx v_x and sw v_w (1 rounding each) in float64: both within gamma_2 (plus
    # float64 sums) of acc sx sw, so gamma_5 conv(|xq|, |wq|) apart
    assert_within(
        y,
        F.conv2d(xq, wq, None, stride, pad),
        gamma(5) * F.conv2d(xq.abs(), wq.abs(), None, stride, pad),
        empirical=(1e-6, 1e-6),
    )  # measured 9.9e-7 at |y| <= 15
    # 3. the M x K multi-branch binary network, built here from numpy-encoded planes: every branch
    #    a {-1,+1} convolution, planes padded with 0 (pad_value 0) or +1 (pad_value 1)
    cx = torch.from_numpy(M.encode(vx.detach().numpy(), bits_a)).double()
    dw = torch.from_numpy(M.encode(vw.detach().numpy(), bits_w)).double()
    total = torch.zeros_like(acc, dtype=torch.float64)
    for m in range(bits_a):
        xm = F.pad(cx[m], (padding,) * 4, value=1.0) if pad_value else cx[m]
        for k in range(bits_w):
            total += 2 ** (m + k) * F.conv2d(xm, dw[k], None, stride, 0 if pad_value else padding)
    torch.testing.assert_close(total.round().to(torch.int64), acc, rtol=0, atol=0)
    # 4. the layer's own branch forward is bit-identical to its fused forward
    assert torch.equal(layer.forward_branches(x), y.detach())


@pytest.mark.parametrize("method", ["encoder", "quantizer"])
def test_linear_exact_transformation(method: str) -> None:
    torch.manual_seed(5)
    layer = MBitLinear(40, 6, bias=False, bits_a=3, bits_w=2, method=method)
    x = torch.randn(4, 40)
    vx, sx = layer.quantized_input(x)
    vw, sw = layer.quantized_weight()
    acc = vx.detach().round().to(torch.int64) @ vw.detach().round().to(torch.int64).T
    torch.testing.assert_close(layer.integer_output(x), acc, rtol=0, atol=0)
    assert torch.equal(layer.forward_branches(x), layer(x).detach())
    # as the conv case: gamma_5 (|vx sx| @ |vw sw|^T)
    xq, wq = (vx * sx).double(), (vw * sw[:, None]).double()
    assert_within(layer(x), F.linear(xq, wq), gamma(5) * F.linear(xq.abs(), wq.abs()))
    np.testing.assert_array_equal(
        M.encoded_dot(vx.detach().numpy(), vw.detach().numpy(), 3, 2), acc.numpy()
    )


def test_float64_accumulation_beyond_2_pow_24() -> None:
    torch.manual_seed(2)
    # fan_in 4096 with 8-bit x 8-bit: 4096 * 255 * 255 = 266,342,400 >= 2^24 -> float64.
    layer = MBitLinear(4096, 3, bits_a=8, bits_w=8, method="quantizer")
    # Training with autograd: float32 (speed; a gradient step does not need the last bit).
    assert layer.training and layer.accumulate_dtype == torch.float32
    layer.eval()
    assert layer.accumulator_bound() == 4096 * 255 * 255 and layer.accumulate_dtype == torch.float64
    layer.train()
    with torch.no_grad():  # no autograd: exact even in training mode
        assert layer.accumulate_dtype == torch.float64
    layer.eval()
    assert "accumulate=float64" in repr(layer)
    x = torch.randn(2, 4096)
    vx, _ = layer.quantized_input(x)
    vw, _ = layer.quantized_weight()
    exact = vx.detach().to(torch.int64) @ vw.detach().to(torch.int64).T
    torch.testing.assert_close(layer.integer_output(x), exact, rtol=0, atol=0)
    small = MBitLinear(64, 3, bits_a=2, bits_w=2)  # 64 * 3 * 3 = 576 < 2^24
    assert small.accumulate_dtype == torch.float32


def test_mbit_conv_is_drop_in_for_one_bit_quantizers() -> None:
    torch.manual_seed(3)
    ref = BinaryConv2d(4, 3, 3, padding=1, input_quantizer="ste_sign", weight_quantizer="xnor")
    mb = MBitConv2d(4, 3, 3, padding=1, input_quantizer="ste_sign", weight_quantizer="xnor")
    mb.load_state_dict(ref.state_dict())
    assert (mb.bits_a, mb.bits_w) == (1, 1)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(mb(x), ref(x), rtol=0, atol=0)


def test_layer_gradients_reach_input_weights_and_ranges() -> None:
    torch.manual_seed(4)
    layer = MBitConv2d(4, 3, 3, padding=1, bits_a=3, bits_w=3, method="quantizer")
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    layer(x).square().sum().backward()
    for g in (
        x.grad,
        layer.weight.grad,
        layer.input_quantizer.t.grad,
        layer.weight_quantizer.t.grad,
    ):
        assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


@pytest.mark.parametrize("kind", ["encoder", "odd_linear"])
@pytest.mark.parametrize("activation", ["htanh", "hrelu"])
@pytest.mark.parametrize("bits", [2, 3, 5])
def test_boundaries_give_the_levels(kind: str, activation: str, bits: int) -> None:
    # Converter contract: v = 2 #{l : x >= boundaries[l]} - A, checked in float64 away from the
    # boundaries (within float rounding of a boundary either side is legitimate).
    q = (
        M.MBitEncoder(bits, activation)
        if kind == "encoder"
        else M.OddLinearQuantizer(bits, activation, init_range=1.7)
    )
    q = q.double()
    b = q.boundaries()
    a = 2**bits - 1
    assert b.shape == (a,) and bool((b[1:] >= b[:-1]).all())
    x = torch.from_numpy(np.random.default_rng(bits).uniform(-2.5, 2.5, size=4000))
    finite = b[torch.isfinite(b)]
    x = x[(x[:, None] - finite[None, :]).abs().min(dim=1).values > 1e-9]
    v, s = q.decompose(x)
    count = (x[:, None] >= b[None, :]).sum(dim=1)
    torch.testing.assert_close(v.detach(), (2 * count - a).double(), rtol=0, atol=0)
    torch.testing.assert_close(s.detach(), q.scale().detach().double())


def test_output_scale_is_what_multiplies_the_integer_result() -> None:
    torch.manual_seed(6)
    layer = MBitConv2d(3, 4, 3, padding=1, bias=False, bits_a=3, bits_w=2, method="quantizer")
    with torch.no_grad():
        layer.input_quantizer.t.fill_(1.3)
    x = torch.randn(2, 3, 5, 5)
    s = layer.output_scale()
    assert s is not None and s.shape == (4,)
    expect = layer.integer_output(x).double() * s.double().view(1, -1, 1, 1)
    # fl(acc fl(sx sw)) against acc s (s: the float32 sx sw): at most 2 roundings of |acc| s
    assert_within(layer(x), expect, gamma(2) * expect.abs())
    torch.testing.assert_close(s, 1.3 / 7 * layer.weight_quantizer.t.detach().expand(4) / 3)


def test_bias_is_added_after_the_scaled_integer_result() -> None:
    torch.manual_seed(8)
    layer = MBitConv2d(3, 4, 3, padding=1, bits_a=2, bits_w=2)  # bias=True: drop-in for nn.Conv2d
    assert layer.bias is not None
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
    x = torch.randn(2, 3, 5, 5)
    s = layer.output_scale()
    assert s is not None
    expect = layer.integer_output(x).double() * s.double().view(
        1, -1, 1, 1
    ) + layer.bias.detach().double().view(1, -1, 1, 1)
    # 2 roundings of acc s (as above) and one of the sum: gamma_3 (|acc| s + |b|)
    mag = layer.integer_output(x).double().abs() * s.double().view(1, -1, 1, 1)
    assert_within(
        layer(x), expect, gamma(3) * (mag + layer.bias.detach().double().abs().view(1, -1, 1, 1))
    )
    assert torch.equal(layer.forward_branches(x), layer(x).detach())

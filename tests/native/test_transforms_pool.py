"""Output transforms (thresholds, planes, scale+bias) and max pooling against numpy/torch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_oracles import pack_bits, random_pm, unpack_pm

from bitflow import _native

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.native

INT32_MIN = np.iinfo(np.int32).min


def test_threshold_bits_rule_and_constants() -> None:
    rng = np.random.default_rng(0)
    o = 130
    acc = rng.integers(-50, 50, size=(2, 3, o), dtype=np.int32)
    thr = rng.integers(-50, 50, size=o, dtype=np.int32)
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    # constants as the caller expresses them: +1 always / -1 always
    thr[0], direction[0] = INT32_MIN, 1
    thr[1], direction[1] = INT32_MIN, -1
    got = _native.threshold_bits(acc, thr, direction)
    assert got.shape == (2, 3, 3) and got.dtype == np.uint64
    plus = np.where(direction > 0, acc >= thr, acc <= thr)
    np.testing.assert_array_equal(unpack_pm(got, o), np.where(plus, 1.0, -1.0))
    np.testing.assert_array_equal(got, pack_bits(np.where(plus, 1, -1)))
    assert np.all(unpack_pm(got, o)[..., 0] == 1) and np.all(unpack_pm(got, o)[..., 1] == -1)


I32 = np.iinfo(np.int32)


@pytest.mark.parametrize("o", [1, 7, 8, 9, 31, 63, 64, 65, 127, 128, 129, 200, 333])
def test_threshold_bits_range_kernels_equal_ref(fast_kernels: str, o: int) -> None:
    """The optimized fused thresholds (ThresholdBitsFn: 8 / 16 channels per step, a masked
    partial group) equal the reference bit for bit at group and word edges, odd channel
    counts, bit 63 of the last word, int32 extremes in the accumulators and the bounds, and
    leave the padding bits 0."""
    rng = np.random.default_rng(o)
    rows = 5
    acc = rng.integers(-60, 60, size=(rows, o)).astype(np.int32)
    acc[0] = rng.choice([I32.min, I32.max, 0, -1, 1], size=o)
    thr = rng.integers(-50, 50, size=o).astype(np.int32)
    d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    lo = np.where(d > 0, thr, I32.min).astype(np.int32)
    hi = np.where(d > 0, I32.max, thr).astype(np.int32)
    lo[0], hi[0] = I32.min, I32.max  # constant +1 (gamma = 0 with beta >= 0)
    # the last channel -1 in row 1 (bit (o - 1) % 64 of the last word; bit 63 when 64 | o)
    acc[1, o - 1] = I32.min if d[o - 1] > 0 else I32.max
    ref = _native.threshold_bits_range(acc, lo, hi, "ref")
    want = (acc < lo) | (acc > hi)
    np.testing.assert_array_equal(unpack_pm(ref, o) < 0, want)
    got = _native.threshold_bits_range(acc, lo, hi, fast_kernels)
    np.testing.assert_array_equal(got, ref, err_msg=fast_kernels)
    if o % 64:
        assert np.all(got[:, -1] >> np.uint64(o % 64) == 0)  # padding bits 0
    if o > 1:
        assert (got[1, -1] >> np.uint64((o - 1) % 64)) & np.uint64(1) == 1  # last channel -1


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
def test_threshold_planes_identity(planes: int) -> None:
    rng = np.random.default_rng(planes)
    L, o = 2**planes - 1, 70
    acc = rng.integers(-40, 40, size=(3, 4, o), dtype=np.int32)
    thr = np.sort(rng.integers(-40, 40, size=(o, L), dtype=np.int32), axis=1)
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    got = _native.threshold_planes(acc, thr, direction)
    assert got.shape == (planes, 3, 4, 2) and got.dtype == np.uint64
    # oracle: q counts thresholds on the +1 side
    q = np.where(direction > 0, (acc[..., None] >= thr).sum(-1), (acc[..., None] <= thr).sum(-1))
    c = np.stack([unpack_pm(got[m], o) for m in range(planes)])
    value = np.tensordot(2.0 ** np.arange(planes), c, axes=1)
    np.testing.assert_array_equal(value, 2 * q - L)  # sum_m 2^m c_m = 2q - L
    for m in range(planes):
        np.testing.assert_array_equal(c[m], np.where((q >> m) & 1 == 1, 1.0, -1.0))


def test_threshold_planes_monotone_in_acc() -> None:
    # the encoded level is non-decreasing in acc for direction +1 and non-increasing for -1
    acc = np.arange(-20, 21, dtype=np.int32)[:, None].repeat(2, axis=1)
    thr = np.array([[-9, -3, 0, 2, 5, 5, 11], [-9, -3, 0, 2, 5, 5, 11]], dtype=np.int32)
    got = _native.threshold_planes(acc, thr, np.array([1, -1], dtype=np.int8))
    c = np.stack([unpack_pm(got[m], 2) for m in range(3)])
    level = np.tensordot([1.0, 2.0, 4.0], c, axes=1)
    assert np.all(np.diff(level[:, 0]) >= 0) and np.all(np.diff(level[:, 1]) <= 0)
    assert level[0, 0] == -7 and level[-1, 0] == 7 and level[0, 1] == 7 and level[-1, 1] == -7


def test_threshold_f32_bits() -> None:
    rng = np.random.default_rng(5)
    o = 67
    y = rng.standard_normal((4, o)).astype(np.float32)
    thr = rng.standard_normal(o).astype(np.float32)
    y[0, :5] = thr[:5]  # ties: +1 for both directions
    y[1, 0] = np.nan
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    got = _native.threshold_f32_bits(y, thr, direction)
    with np.errstate(invalid="ignore"):
        minus = np.where(direction > 0, y < thr, y > thr)  # NaN: neither -> +1
    np.testing.assert_array_equal(unpack_pm(got, o), np.where(minus, -1.0, 1.0))
    assert np.all(unpack_pm(got, o)[0, :5] == 1.0) and unpack_pm(got, o)[1, 0] == 1.0


def test_scale_bias_two_roundings() -> None:
    rng = np.random.default_rng(6)
    acc = rng.integers(-(2**24), 2**24, size=(5, 33), dtype=np.int32)
    scale = rng.standard_normal(33).astype(np.float32)
    bias = rng.standard_normal(33).astype(np.float32)
    got = _native.scale_bias(acc, scale, bias)
    # numpy float32 ufuncs round the product and the sum separately
    expect = np.add(np.multiply(acc.astype(np.float32), scale), bias)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expect)


POOLS = [  # h, w, kernel, stride, padding
    (6, 6, 2, None, 0),
    (7, 5, 3, 2, 1),
    (9, 8, (3, 2), (2, 1), (1, 0)),
    (5, 5, 3, 1, 1),
    (13, 13, 3, 2, 0),
]


def _torch_pool(x_nhwc: np.ndarray, kernel, stride, padding) -> np.ndarray:
    xt = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    y = F.max_pool2d(xt, kernel, stride=stride if stride is not None else kernel, padding=padding)
    return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("case", POOLS)
def test_maxpool_bits_equals_torch(case: tuple) -> None:
    h, w, kernel, stride, padding = case
    rng = np.random.default_rng(h * w)
    c = 100
    x = random_pm(rng, (2, h, w, c))
    px = pack_bits(x)
    expect_max = _torch_pool(x, kernel, stride, padding)
    expect_min = -_torch_pool(-x, kernel, stride, padding)
    got_and = _native.maxpool_bits(px, kernel, stride, padding, "and")
    got_or = _native.maxpool_bits(px, kernel, stride, padding, op="or")
    np.testing.assert_array_equal(unpack_pm(got_and, c), expect_max)
    np.testing.assert_array_equal(unpack_pm(got_or, c), expect_min)
    assert np.all(got_and[..., -1] >> np.uint64(c % 64) == 0)  # padding bits stay 0


@pytest.mark.parametrize("case", POOLS)
def test_maxpool_i32_f32_equal_torch(case: tuple) -> None:
    h, w, kernel, stride, padding = case
    rng = np.random.default_rng(h + w)
    xi = rng.integers(-(2**31), 2**31 - 1, size=(2, h, w, 5), dtype=np.int64).astype(np.int32)
    # float64 holds every int32 exactly
    expect_i = _torch_pool(xi.astype(np.float64), kernel, stride, padding).astype(np.int32)
    np.testing.assert_array_equal(_native.maxpool_i32(xi, kernel, stride, padding), expect_i)
    xf = rng.standard_normal((2, h, w, 5)).astype(np.float32)
    xf[0, 1, 1, 0] = np.nan
    xf[1, 0, 0, 1] = -np.inf
    np.testing.assert_array_equal(
        _native.maxpool_f32(xf, kernel, stride, padding), _torch_pool(xf, kernel, stride, padding)
    )


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 1),
    st.integers(0, 2**32 - 1),
)
def test_maxpool_property(h: int, w: int, k: int, s: int, p: int, seed: int) -> None:
    if 2 * p > k or h + 2 * p < k or w + 2 * p < k:
        return
    x = np.random.default_rng(seed).standard_normal((1, h, w, 3)).astype(np.float32)
    np.testing.assert_array_equal(_native.maxpool_f32(x, k, s, p), _torch_pool(x, k, s, p))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    "shape", [(3, 5, 17, 19), (2, 3, 4, 16), (1, 3, 3, 33), (2, 3, 5, 1), (1, 3, 2, 47)]
)
def test_quantize_u8_nhwc_equals_numpy(kernels: str, threads: int, shape: tuple) -> None:
    """clip(rint(float32(x * 255)), 0, 255) in NHWC: ties (k + 0.5) / 255 round half to even,
    out-of-range values clip, -0.0 gives 0; NaN / inf raise. 3-channel images take the AVX-512
    rows with an AVX-512 set (16 pixels a step: widths around 16, masked tails)."""
    rng = np.random.default_rng(threads + sum(shape))
    x = rng.uniform(-0.2, 1.2, size=shape).astype(np.float32)
    flat = x.reshape(-1)
    ties = ((np.arange(256) + 0.5) / 255).astype(np.float32)
    k = min(ties.size, flat.size - 4)
    flat[:k] = ties[:k]
    flat[k : k + 4] = [-0.0, 0.0, 1.0, 1e30]
    want = np.clip(np.rint(x.transpose(0, 2, 3, 1) * np.float32(255)), 0, 255).astype(np.uint8)
    old = _native._set_grain_ns(0.0)
    try:
        got = _native.quantize_u8_nhwc(x, threads, kernels)
    finally:
        _native._set_grain_ns(old)
    np.testing.assert_array_equal(got, want)
    for bad in (np.nan, np.inf, 1e38):
        for pos in ((0, 0, 0, 0), tuple(d - 1 for d in shape)):
            y = x.copy()
            y[pos] = bad
            with pytest.raises(ValueError, match="NaN or infinity"):
                _native.quantize_u8_nhwc(y, threads, kernels)

"""Float and uint8 x int8 first/last layers: ref vs torch/numpy, kernels vs ref."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from native_oracles import ALL_KERNELS

from bitflow import _native

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.native

U = 2.0**-24  # unit roundoff of float32


def _conv_f64(x: np.ndarray, w: np.ndarray, stride, padding) -> np.ndarray:
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float64))
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2)).astype(np.float64))
    return F.conv2d(xt, wt, stride=stride, padding=padding).numpy().transpose(0, 2, 3, 1)


def _bound(x: np.ndarray, w: np.ndarray, stride, padding) -> np.ndarray:
    """Error bound of a float32 dot product of length K in any order: K u sum|x w| (+ bias
    rounding, covered by the factor 2). Higham, Accuracy and Stability, Eq. 3.5."""
    k = w.shape[1] * w.shape[2] * w.shape[3]
    return 2 * k * U * _conv_f64(np.abs(x), np.abs(w), stride, padding) + 1e-30


CONVS = [  # n, h, w, c, o, k, stride, padding
    (1, 11, 11, 3, 8, 3, 1, 1),
    (2, 15, 13, 3, 17, 5, 2, 2),
    (1, 8, 8, 20, 5, 1, 1, 0),
    (3, 9, 10, 1, 4, (3, 2), (2, 1), (0, 1)),
    # packed-kernel tile edges (16-channel blocks, 6-row AVX2 tiles): O = 33 and 16, M = 35 / 7
    (1, 7, 5, 4, 33, 3, 1, 1),
    (1, 1, 7, 130, 16, 1, 1, 0),
]


@pytest.mark.parametrize("case", CONVS)
def test_conv2d_f32_all_kernels(case: tuple) -> None:
    n, h, w, c, o, k, stride, padding = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(o)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((o, kh, kw, c)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    exact = _conv_f64(x, wt, stride, padding) + bias
    bound = _bound(x, wt, stride, padding) + 2 * U * np.abs(exact)
    ref = _native.conv2d_f32(x, wt, bias, stride, padding, kernels="ref")
    assert ref.dtype == np.float32 and ref.shape == exact.shape
    assert np.all(np.abs(ref - exact) <= bound)
    for ks in _native.available_kernels():
        one = _native.conv2d_f32(x, wt, bias, stride, padding, kernels=ks, threads=1)
        two = _native.conv2d_f32(x, wt, bias, stride, padding, kernels=ks, threads=2)
        np.testing.assert_array_equal(one, two)  # thread count never changes a float result
        assert np.all(np.abs(one - exact) <= bound), ks
    no_bias = _native.conv2d_f32(x, wt, None, stride, padding)
    assert np.all(np.abs(no_bias - (exact - bias)) <= bound + 2 * U * np.abs(bias))


@pytest.mark.parametrize("k", [1, 15, 16, 17, 100, 363])
def test_dense_f32_all_kernels(k: int) -> None:
    rng = np.random.default_rng(k)
    x = rng.standard_normal((5, k)).astype(np.float32)
    w = rng.standard_normal((9, k)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64).T + b
    bound = 2 * k * U * (
        np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    ) + 2 * U * np.abs(exact)
    for ks in _native.available_kernels():
        got = _native.dense_f32(x, w, b, kernels=ks, threads=2)
        assert got.shape == (5, 9) and np.all(np.abs(got - exact) <= bound), ks
    # the reference is sequential float32 summation: reproduce it exactly in numpy
    seq = np.zeros((5, 9), dtype=np.float32)
    for i in range(k):
        seq = seq + np.multiply(x[:, i : i + 1], w[:, i][None, :])
    np.testing.assert_array_equal(_native.dense_f32(x, w, b, kernels="ref"), seq + b)


@pytest.mark.parametrize("case", CONVS + [(2, 7, 7, 30, 6, 3, 1, 1), (1, 6, 6, 64, 5, 3, 2, 1)])
def test_conv2d_u8i8_exact(case: tuple) -> None:
    n, h, w, c, o, k, stride, padding = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(c + o)
    x = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    wt = rng.integers(-128, 128, size=(o, kh, kw, c), dtype=np.int8)
    x[0, 0, 0, :] = 255
    wt[0, ...] = -128  # extreme products
    expect = _conv_f64(x.astype(np.float64), wt.astype(np.float64), stride, padding)
    expect = np.rint(expect).astype(np.int64)  # float64 is exact: |sum| < 2^53
    for ks in _native.available_kernels():
        for threads in (1, 2):
            got = _native.conv2d_u8i8(x, wt, stride, padding, kernels=ks, threads=threads)
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, expect, err_msg=ks)


# Tile edges of the packed int8 GEMMs (igemm_packed: 16-channel blocks; the AVX2 kernel's
# 6-row tiles over int16 pairs of K, AVX-512 VNNI's 4-row tiles over 4 bytes of K), as 1x1
# convolutions of an [1, 1, M, K] image so that M, N = O and K are set directly:
# M around 6 and the driver's row blocks, N around 8 / 16 / 32 / 48, K odd and around 2 / 4.
U8_EDGES = [  # M, N, K
    (1, 1, 1),
    (5, 7, 2),
    (6, 8, 3),
    (7, 9, 4),
    (11, 15, 5),
    (12, 16, 15),
    (13, 17, 16),
    (19, 31, 17),
    (37, 33, 33),
    (64, 48, 127),
    (97, 96, 363),
    (211, 49, 1023),
]


@pytest.mark.parametrize("edge", U8_EDGES)
def test_u8i8_packed_tile_edges_equal_ref(fast_kernels: str, edge: tuple) -> None:
    """Every optimized set (packed int8 GEMM where it has one) equals the reference and the
    exact int64 product at tile edges, including the extreme products 255 * -128 and
    255 * 127 over the whole K (a saturating int16 pair sum would show here: 2 * 255 * 127 >
    32767), for 1, 2 and 3 threads."""
    m, o, k = edge
    rng = np.random.default_rng(m * 1000 + o * 10 + k)
    x = rng.integers(0, 256, size=(1, 1, m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(o, 1, 1, k), dtype=np.int8)
    x[0, 0, 0, :] = 255
    w[0] = -128
    if o > 1:
        w[o - 1] = 127
    if m > 1:
        x[0, 0, m - 1, :] = 255
    exact = x[0, 0].astype(np.int64) @ w[:, 0, 0, :].astype(np.int64).T
    ref = _native.conv2d_u8i8(x, w, (1, 1), (0, 0), kernels="ref")
    np.testing.assert_array_equal(ref[0, 0], exact)
    for threads in (1, 2, 3):
        got = _native.conv2d_u8i8(x, w, (1, 1), (0, 0), kernels=fast_kernels, threads=threads)
        np.testing.assert_array_equal(got, ref, err_msg=f"{fast_kernels} threads={threads}")
    # the prepared layer (the engine's fused first layer) runs the same packed kernel
    layer = _native.Int8ConvLayer(w, (1, 1), (0, 0), kernels=fast_kernels)
    np.testing.assert_array_equal(layer(x, 2), ref)


def test_peak_probe_positive() -> None:
    for ks in _native.available_kernels():
        assert _native.peak_probe(ks, 0.01) > 1e8
    assert set(_native.available_kernels()) <= set(ALL_KERNELS)


def _round_f32(q: Fraction) -> np.float32:
    """The float32 nearest to the rational q (ties to even): the float64 nearest to q, then the
    float32 among its neighbours that is closest to q exactly (no double-rounding error)."""
    f = np.float32(float(q))
    cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    best = min(
        cands,
        key=lambda c: (abs(Fraction(float(c)) - q), int(np.array(c).view(np.uint32)) & 1),
    )
    return np.float32(best)


def test_packed_sgemm_is_one_fma_per_k_in_order() -> None:
    """The packed float GEMMs' contract (kernels.h, SgemmPackedFn): the sum is taken in order
    k = 0..K-1 with one fused multiply-add per k (a single rounding of a*b + s), then the bias
    is added. Oracle: that recurrence in exact rational arithmetic, rounded to float32 once per
    step - a kernel that rounds the product separately, or sums in another order, differs."""
    rng = np.random.default_rng(5)
    n, h, w, c, o = 1, 1, 7, 24, 17  # a pointwise conv: M = 7 rows (6-row tile + 1), O = 17
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((o, 1, 1, c)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    want = np.zeros((n, h, w, o), np.float32)
    for j in range(w):
        for q in range(o):
            s = np.float32(0.0)
            for k in range(c):
                s = _round_f32(
                    Fraction(float(x[0, 0, j, k])) * Fraction(float(wt[q, 0, 0, k]))
                    + Fraction(float(s))
                )
            want[0, 0, j, q] = np.float32(s + bias[q])
    tested = 0
    for ks in _native.available_kernels():
        if _native.kernel_info(ks)["sgemm_packed"] is None:
            continue
        got = _native.conv2d_f32(x, wt, bias, 1, (0, 0), kernels=ks)
        assert got.tobytes() == want.tobytes(), ks
        tested += 1
    if tested == 0:
        pytest.skip("no packed float GEMM on this CPU")


# The gathered (implicit-GEMM) fixed-point convolution (ops.h PreparedU8Conv; the AVX-512 VNNI
# set's igemm_u8i8_gather_6x48): taken when padding every kernel row's kw * C bytes to whole
# groups of 4 costs at most a quarter more products, 4 * kh * ceil(kw * C / 4) * 4 <= 5 * K.
# Shapes around its edges: C = 1..8 (runs ending inside a group: the group's extra bytes read
# the next pixel or the image's end), strides 1-4, paddings 0-3 (the zero border), output rows
# around the 6- and 4-row tiles, O around the 16-channel blocks and the 48 / 64-channel column
# tiles, batch 2 (rows crossing images), 1-3 threads.
GATHER_CONVS = [  # n, h, w, c, o, (kh, kw), stride, padding
    (1, 23, 23, 3, 96, (11, 11), 4, 2),  # AlexNet conv1 geometry
    (2, 16, 17, 3, 64, (7, 7), 2, 3),  # ResNet stem geometry
    (2, 9, 8, 3, 65, (7, 7), 2, 3),
    (1, 12, 13, 1, 49, (4, 4), 1, 2),
    (2, 7, 9, 4, 17, (2, 3), 2, 1),
    (1, 6, 11, 5, 97, (3, 4), 1, 0),
    (2, 5, 5, 8, 1, (3, 3), 1, 1),
    (1, 9, 10, 2, 48, (5, 5), 3, 1),
    (1, 4, 29, 16, 130, (1, 1), 1, 0),
    (2, 13, 3, 6, 16, (2, 2), 1, 0),
]


@pytest.mark.parametrize("case", GATHER_CONVS)
def test_conv2d_u8i8_gather_equals_ref(fast_kernels: str, case: tuple) -> None:
    n, h, w, c, o, (kh, kw), stride, padding = case
    assert 4 * kh * (-(-kw * c // 4)) * 4 <= 5 * kh * kw * c  # the gathered form is taken
    rng = np.random.default_rng(h * 100 + c * 10 + o)
    x = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    wt = rng.integers(-128, 128, size=(o, kh, kw, c), dtype=np.int8)
    x[0, 0, :, :] = 255
    x[-1, -1, :, :] = 255  # the last bytes of the image, next to the over-read slack
    wt[0] = -128
    wt[-1] = 127
    expect = np.rint(
        _conv_f64(x.astype(np.float64), wt.astype(np.float64), (stride, stride), (padding, padding))
    ).astype(np.int64)
    ref = _native.conv2d_u8i8(x, wt, stride, padding, kernels="ref")
    np.testing.assert_array_equal(ref, expect)
    for threads in (1, 2, 3):
        got = _native.conv2d_u8i8(x, wt, stride, padding, kernels=fast_kernels, threads=threads)
        np.testing.assert_array_equal(got, ref, err_msg=f"{fast_kernels} threads={threads}")
    layer = _native.Int8ConvLayer(wt, (stride, stride), (padding, padding), kernels=fast_kernels)
    np.testing.assert_array_equal(layer(x, 2), ref)


@pytest.mark.parametrize(
    "case",
    [
        (1, 9, 8, 3, 64, (7, 7), 2, 3),  # a stem
        (2, 7, 7, 64, 33, (1, 1), 1, 0),  # a 1x1 shortcut (rows read in place)
        (1, 5, 6, 17, 130, (3, 3), 1, 1),
        (1, 4, 4, 5, 1, (2, 3), (1, 2), (0, 1)),
    ],
)
def test_prepared_float_conv_equals_conv2d_f32(kernels: str, case: tuple) -> None:
    """The engine's prepared float convolution (weights packed once) and its float-stream form
    equal conv2d_f32 / FloatStream.after_conv2d bit for bit, with and without bias."""
    n, h, w, c, o, (kh, kw), stride, padding = case
    st2 = stride if isinstance(stride, tuple) else (stride, stride)
    pd2 = padding if isinstance(padding, tuple) else (padding, padding)
    rng = np.random.default_rng(h * 7 + o)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((o, kh, kw, c)).astype(np.float32)
    for bias in (rng.standard_normal(o).astype(np.float32), None):
        want = _native.conv2d_f32(x, wt, bias, st2, pd2, kernels=kernels, threads=1)
        layer = _native._Conv2dF32Layer(wt, bias, st2, pd2, kernels=kernels)
        for threads in (1, 3):
            assert layer(x, threads).tobytes() == want.tobytes()
        stage = (
            rng.standard_normal(o).astype(np.float32),
            rng.standard_normal(o).astype(np.float32),
        )
        fs = _native.FloatStream(o, [False], [[stage]], kernels=kernels)
        ref = fs.after_conv2d(x, wt, bias, st2, pd2, kernels, 2)
        assert fs.after_conv2d_layer(layer, x, 2).tobytes() == ref.tobytes()


@pytest.mark.parametrize(
    "case",
    [
        (1, 5, 6, 3, 17, (3, 3), 2, 1),  # stem-like: 3 channels, stride 2, zero border
        (2, 4, 3, 2, 64, (2, 3), 1, (1, 2)),  # batch 2, a 4 x 64 column tile, rows crossing images
        (1, 3, 7, 1, 5, (3, 1), (1, 2), 0),
    ],
)
def test_spatial_float_conv_packed_kernels_sum_in_order(case: tuple) -> None:
    """Every packed float GEMM, through im2col rows (AVX2) or rows gathered in place from a
    zero-bordered copy (AVX-512 sgemm_gather_4x48), sums each output in order k = 0..K-1 over
    the (i, j, c) taps with one rounding per fused multiply-add, then adds the bias: equal bit
    for bit to that sequence computed exactly (rational arithmetic, one rounding per step)."""
    n, h, w, c, o, (kh, kw), stride, padding = case
    sh, sw = stride if isinstance(stride, tuple) else (stride, stride)
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    rng = np.random.default_rng(h * 31 + o)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((o, kh, kw, c)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), np.float32)
    xp[:, ph : ph + h, pw : pw + w] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    want = np.zeros((n, ho, wo, o), np.float32)
    wrows = wt.reshape(o, -1)
    for b, oh, ow in itertools.product(range(n), range(ho), range(wo)):
        row = xp[b, oh * sh : oh * sh + kh, ow * sw : ow * sw + kw].reshape(-1)
        for q in range(o):
            s = np.float32(0.0)
            for k in range(row.size):
                s = _round_f32(
                    Fraction(float(row[k])) * Fraction(float(wrows[q, k])) + Fraction(float(s))
                )
            want[b, oh, ow, q] = np.float32(s + bias[q])
    tested = 0
    for ks in _native.available_kernels():
        if _native.kernel_info(ks)["sgemm_packed"] is None:
            continue
        for threads in (1, 2):
            got = _native.conv2d_f32(x, wt, bias, (sh, sw), (ph, pw), kernels=ks, threads=threads)
            assert got.tobytes() == want.tobytes(), (ks, threads)
        tested += 1
    if tested == 0:
        pytest.skip("no packed float GEMM on this CPU")

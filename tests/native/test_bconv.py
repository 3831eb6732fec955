"""Binary convolution (single and planes) against torch.nn.functional.conv2d on +-1 values."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_oracles import pack_bits, random_pm

from bitflow import _native

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.native


def _torch_conv(
    x: np.ndarray,
    w: np.ndarray,
    stride: int | tuple[int, int],
    padding: tuple[int, int],
    pad_value: int,
) -> np.ndarray:
    """NHWC x, OHWC w (real values) -> NHWC int64 via F.conv2d in float64 (exact for integers)."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float64))
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2)).astype(np.float64))
    ph, pw = padding
    if pad_value == 1:
        xt = F.pad(xt, (pw, pw, ph, ph), value=1.0)
        y = F.conv2d(xt, wt, stride=stride)
    else:
        y = F.conv2d(xt, wt, stride=stride, padding=padding)
    return y.numpy().transpose(0, 2, 3, 1).round().astype(np.int64)


CASES = [
    # n, h, w, c, o, kh, kw, stride, padding
    (1, 5, 5, 3, 4, 3, 3, 1, (1, 1)),
    (2, 7, 6, 65, 5, 3, 3, 2, (1, 1)),
    (3, 6, 9, 64, 9, 2, 3, (2, 1), (0, 2)),
    (1, 9, 7, 130, 6, 5, 5, 1, (2, 2)),
    (2, 4, 5, 1, 3, 1, 1, 1, (0, 0)),
    (1, 8, 8, 200, 17, 1, 1, 2, (1, 0)),
    (2, 5, 3, 33, 8, 3, 1, 1, (2, 0)),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("pad_value", [0, 1])
def test_bconv2d_ref_equals_torch(case: tuple, pad_value: int) -> None:
    n, h, w, c, o, kh, kw, stride, padding = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))  # replayable, unlike hash()
    x, wt = random_pm(rng, (n, h, w, c)), random_pm(rng, (o, kh, kw, c))
    got = _native.bconv2d(
        pack_bits(x),
        pack_bits(wt),
        c,
        stride=stride,
        padding=padding,
        pad_value=pad_value,
        kernels="ref",
    )
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _torch_conv(x, wt, stride, padding, pad_value))


@pytest.mark.parametrize("case", CASES)
def test_bconv2d_kernels_equal_ref(fast_kernels: str, case: tuple) -> None:
    n, h, w, c, o, kh, kw, stride, padding = case
    rng = np.random.default_rng(17 + zlib.crc32(repr(case).encode()))
    px, pw_ = pack_bits(random_pm(rng, (n, h, w, c))), pack_bits(random_pm(rng, (o, kh, kw, c)))
    for pad_value, threads in itertools.product((0, 1), (1, 2)):
        ref = _native.bconv2d(px, pw_, c, stride, padding, pad_value, kernels="ref")
        got = _native.bconv2d(
            px, pw_, c, stride, padding, pad_value, kernels=fast_kernels, threads=threads
        )
        np.testing.assert_array_equal(got, ref)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=st.integers(1, 140),
    o=st.integers(1, 10),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    sh=st.integers(1, 2),
    sw=st.integers(1, 2),
    ph=st.integers(0, 2),
    pw=st.integers(0, 2),
    pad_value=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**32 - 1),
)
def test_bconv2d_property_all_kernels(
    n: int,
    h: int,
    w: int,
    c: int,
    o: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    pad_value: int,
    seed: int,
) -> None:
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = np.random.default_rng(seed)
    x, wt = random_pm(rng, (n, h, w, c)), random_pm(rng, (o, kh, kw, c))
    expect = _torch_conv(x, wt, (sh, sw), (ph, pw), pad_value)
    for ks in _native.available_kernels():
        got = _native.bconv2d(
            pack_bits(x), pack_bits(wt), c, (sh, sw), (ph, pw), pad_value, kernels=ks, threads=2
        )
        np.testing.assert_array_equal(got, expect, err_msg=ks)


@pytest.mark.parametrize("pa,pw", [(1, 1), (2, 1), (1, 2), (2, 3)])
@pytest.mark.parametrize("pad_value", [0, 1])
def test_bconv2d_planes_equals_level_conv(kernels: str, pa: int, pw: int, pad_value: int) -> None:
    # Planes c_i with value v = sum_i 2^i c_i; zero padding = value 0 in every plane, so the
    # oracle is one conv of the levels (bilinearity, MBBN Eq. 8). pad_value=1: each plane
    # is padded with +1, i.e. the level 2^Pa - 1.
    rng = np.random.default_rng(100 * pa + pw + pad_value)
    n, h, w, c, o, k = 2, 6, 5, 70, 5, 3
    cx = random_pm(rng, (pa, n, h, w, c))
    cw = random_pm(rng, (pw, o, k, k, c))
    vx = np.tensordot(2.0 ** np.arange(pa), cx.astype(np.float64), axes=1)
    vw = np.tensordot(2.0 ** np.arange(pw), cw.astype(np.float64), axes=1)
    if pad_value == 1:
        vx = np.pad(vx, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=2**pa - 1)
        expect = _torch_conv(vx, vw, 1, (0, 0), 0)
    else:
        expect = _torch_conv(vx, vw, 1, (1, 1), 0)
    for threads in (1, 2):
        got = _native.bconv2d_planes(
            pack_bits(cx), pack_bits(cw), c, 1, 1, pad_value, kernels=kernels, threads=threads
        )
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("c", [128, 100])
def test_bconv2d_many_row_blocks_threads(c: int) -> None:
    # M = 4 * 32 * 32 = 4096 im2col rows of 18 (c=128) or 15 (c=100, bit-dense) words is
    # several 128 KiB row blocks: the fused per-block path runs on 1, 2 and 3 threads.
    rng = np.random.default_rng(c)
    x, wt = random_pm(rng, (4, 32, 32, c)), random_pm(rng, (8, 3, 3, c))
    expect = _torch_conv(x, wt, 1, (1, 1), 0)
    px, pw_ = pack_bits(x), pack_bits(wt)
    for ks in _native.available_kernels():
        for threads in (1, 2, 3):
            got = _native.bconv2d(px, pw_, c, 1, 1, 0, kernels=ks, threads=threads)
            np.testing.assert_array_equal(got, expect, err_msg=f"{ks} threads={threads}")


def test_concurrent_python_threads_share_the_module() -> None:
    # The GIL is released while computing; several Python threads calling at once must each
    # get their own correct result.
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    jobs = []
    for i in range(8):
        x, wt = random_pm(rng, (2, 9, 9, 70)), random_pm(rng, (5 + i, 3, 3, 70))
        jobs.append((pack_bits(x), pack_bits(wt), _torch_conv(x, wt, 1, (1, 1), 0)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_native.bconv2d, px, pw_, 70, 1, 1, 0, "", 2) for px, pw_, _ in jobs]
        for fut, (_, _, expect) in zip(futures, jobs, strict=True):
            np.testing.assert_array_equal(fut.result(), expect)


@settings(max_examples=15, deadline=None)
@given(
    pa=st.integers(1, 3),
    pw=st.integers(1, 3),
    h=st.integers(2, 7),
    c=st.integers(1, 130),
    k=st.integers(1, 3),
    s=st.integers(1, 2),
    p=st.integers(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_bconv2d_planes_property(
    pa: int, pw: int, h: int, c: int, k: int, s: int, p: int, seed: int
) -> None:
    if h + 2 * p < k:
        return
    rng = np.random.default_rng(seed)
    cx, cw = random_pm(rng, (pa, 2, h, h + 1, c)), random_pm(rng, (pw, 3, k, k, c))
    vx = np.tensordot(2.0 ** np.arange(pa), cx.astype(np.float64), axes=1)
    vw = np.tensordot(2.0 ** np.arange(pw), cw.astype(np.float64), axes=1)
    expect = _torch_conv(vx, vw, s, (p, p), 0)
    for ks in _native.available_kernels():
        got = _native.bconv2d_planes(
            pack_bits(cx), pack_bits(cw), c, s, p, 0, kernels=ks, threads=2
        )
        np.testing.assert_array_equal(got, expect, err_msg=ks)


# Tile edges of the packed-weight binary GEMMs (bgemm_packed: 32-channel blocks, split in
# 16-channel halves by the AVX2 kernel; 2- and 4-row tiles; byte-counter runs of 31 words in
# the AVX2 kernel): odd M, O on both sides of 16 / 32 / 48, K words 1, 31, 32, 33, 63 and a
# channel count that is not a multiple of 64. Each activation / weight bit is drawn
# independently (all 64 bits of a full word random), so every popcount value occurs.
PACKED_EDGES = [
    # n, h, w, c, o
    (1, 1, 1, 64, 1),
    (1, 3, 5, 64, 15),
    (1, 1, 7, 31 * 64, 16),
    (1, 3, 1, 32 * 64, 17),
    (1, 5, 1, 33 * 64, 33),
    (2, 3, 3, 100, 47),
    (1, 1, 3, 63 * 64, 49),
    (1, 4, 4, 130, 64),
]


@pytest.mark.parametrize("case", PACKED_EDGES)
def test_bconv2d_packed_tile_edges_equal_ref(fast_kernels: str, case: tuple) -> None:
    n, h, w, c, o = case
    rng = np.random.default_rng(23 + zlib.crc32(repr(case).encode()))
    x, wt = random_pm(rng, (n, h, w, c)), random_pm(rng, (o, 1, 1, c))
    # an all-equal and an all-different weight row for pixel 0: popcount 0 and full K bits
    wt[0, 0, 0] = x[0, 0, 0]
    wt[o - 1, 0, 0] = -x[0, 0, 0] if o > 1 else x[0, 0, 0]
    px, pw_ = pack_bits(x), pack_bits(wt)
    for threads in (1, 2, 3):
        ref = _native.bconv2d(px, pw_, c, 1, (0, 0), 0, kernels="ref")
        got = _native.bconv2d(px, pw_, c, 1, (0, 0), 0, kernels=fast_kernels, threads=threads)
        np.testing.assert_array_equal(got, ref)
        # the same channels through a 3x3 convolution (im2col rows, padding corrections)
        w3 = np.repeat(pw_, 9, axis=1).reshape(o, 3, 3, -1)
        ref3 = _native.bconv2d(px, w3, c, 1, (1, 1), 0, kernels="ref")
        got3 = _native.bconv2d(px, w3, c, 1, (1, 1), 0, kernels=fast_kernels, threads=threads)
        np.testing.assert_array_equal(got3, ref3)
    assert ref[0, 0, 0, 0] == c  # sum of c products +1 * +1 (the rows are equal)
    if o > 1:
        assert ref[0, 0, 0, o - 1] == -c


# The gathered (implicit-GEMM) binary convolution (AVX-512 bgemm_gather_4x32): taken for
# whole-word taps (C a multiple of 64) with a spatial kernel. Rows are read in place from a
# zero-bordered copy of the input, so the cases cover the border (paddings 0-2, both
# pad_values), strides, batch 2 (rows crossing images), output rows around the 4-row tile and
# the 96-row blocks, O around the 8-lane vectors and 32-channel blocks, 1-3 threads, and the
# fused forms the engine runs (threshold + pool; float-stream epilogue via run_epilogue).
GATHER_CASES = [
    # n, h, w, c, o, kh, kw, stride, padding
    (1, 56, 5, 64, 64, 3, 3, 1, (1, 1)),
    (2, 7, 9, 64, 33, 3, 3, 1, (1, 1)),
    (1, 9, 11, 128, 31, 3, 3, 2, (1, 1)),
    (2, 5, 6, 192, 65, 2, 3, (2, 1), (0, 2)),
    (1, 13, 13, 64, 1, 5, 5, 1, (2, 2)),
    (3, 4, 4, 128, 32, 3, 1, 1, (2, 0)),
    (1, 10, 3, 64, 97, 1, 3, (1, 2), (0, 1)),
]


@pytest.mark.parametrize("case", GATHER_CASES)
def test_bconv2d_gather_equals_ref(fast_kernels: str, case: tuple) -> None:
    n, h, w, c, o, kh, kw, stride, padding = case
    rng = np.random.default_rng(31 + zlib.crc32(repr(case).encode()))
    x, wt = random_pm(rng, (n, h, w, c)), random_pm(rng, (o, kh, kw, c))
    wt[0] = 1  # an all-+1 filter: padded taps (+1 bits in the copy) must be corrected
    px, pw_ = pack_bits(x), pack_bits(wt)
    for pad_value in (0, 1):
        ref = _native.bconv2d(px, pw_, c, stride, padding, pad_value, kernels="ref")
        np.testing.assert_array_equal(ref, _torch_conv(x, wt, stride, padding, pad_value))
        for threads in (1, 2, 3):
            got = _native.bconv2d(
                px, pw_, c, stride, padding, pad_value, kernels=fast_kernels, threads=threads
            )
            np.testing.assert_array_equal(got, ref, err_msg=f"pad_value={pad_value} t={threads}")
        # the prepared layer: int32 output, and fused threshold + max-pool (bits)
        st2 = stride if isinstance(stride, tuple) else (stride, stride)
        layer = _native.BinaryLayer(pw_, c, st2, padding, pad_value, kernels=fast_kernels)
        np.testing.assert_array_equal(layer(px, 2), ref)
        thr = rng.integers(-kh * kw * c // 4, kh * kw * c // 4, o).astype(np.int32)
        d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
        pool = {"pool_kernel": (2, 2), "pool_stride": (2, 2), "pool_padding": (0, 0)}
        ok_pool = ref.shape[1] >= 2 and ref.shape[2] >= 2
        kw_ = pool if ok_pool else {}
        fused = _native.BinaryLayer(
            pw_, c, st2, padding, pad_value, thr=thr, direction=d, kernels=fast_kernels, **kw_
        )
        ref_layer = _native.BinaryLayer(
            pw_, c, st2, padding, pad_value, thr=thr, direction=d, kernels="ref", **kw_
        )
        for threads in (1, 3):
            np.testing.assert_array_equal(fused(px, threads), ref_layer(px, 1))


# Paired last words (the prepared layer on sets with bgemm_gather, PreparedBconv.pairs): a
# pixel's last word holds r = C mod 64 <= 32 bits (C = 96: 32), and the last words of the
# horizontally adjacent taps (j, j + 1) share one word, read in place from a copy of the input
# with that pair word per pixel. Cases: AlexNet's conv2 (96 channels, 5x5 pad 2), C < 64 (no
# whole words), r = 1 and r = 32, odd and even kw (an odd kw's last tap alone: its own word,
# not the pair word, which would add the next pixel's bits), strides, no padding, batch 2,
# both pad values, 1-3 threads, int32 and the fused threshold + pool.
PAIR_CASES = [
    # n, h, w, c, o, kh, kw, stride, padding
    (1, 27, 27, 96, 192, 5, 5, 1, (2, 2)),
    (2, 7, 9, 32, 33, 3, 3, 1, (1, 1)),
    (1, 9, 11, 65, 31, 3, 2, 2, (1, 1)),
    (2, 6, 7, 160, 40, 2, 4, (2, 1), (0, 2)),
    (1, 8, 6, 17, 9, 3, 3, 1, (0, 0)),
    (2, 5, 5, 96, 64, 1, 3, (1, 2), (0, 1)),
    (1, 11, 10, 20, 8, 3, 5, 1, (1, 2)),
]


@pytest.mark.parametrize("case", PAIR_CASES)
def test_prepared_layer_paired_last_words_equal_ref(case: tuple) -> None:
    n, h, w, c, o, kh, kw, stride, padding = case
    if "avx512" not in _native.available_kernels():
        pytest.skip("the paired-word layout needs the AVX-512 gather kernel")
    rng = np.random.default_rng(47 + zlib.crc32(repr(case).encode()))
    x, wt = random_pm(rng, (n, h, w, c)), random_pm(rng, (o, kh, kw, c))
    wt[0] = 1  # an all-+1 filter: padded taps (zero words in the copy) must be corrected
    px, pw_ = pack_bits(x), pack_bits(wt)
    st2 = stride if isinstance(stride, tuple) else (stride, stride)
    for pad_value in (0, 1):
        want = _torch_conv(x, wt, stride, padding, pad_value)
        layer = _native.BinaryLayer(pw_, c, st2, padding, pad_value, kernels="avx512")
        assert layer.weight_layout == "pairs", case
        for threads in (1, 2, 3):
            np.testing.assert_array_equal(
                layer(px, threads), want, err_msg=f"{pad_value} {threads}"
            )
        thr = rng.integers(-kh * kw * c // 4, kh * kw * c // 4 + 1, o).astype(np.int32)
        d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
        kw_ = {}
        if want.shape[1] >= 2 and want.shape[2] >= 2:
            kw_ = {"pool_kernel": (2, 2), "pool_stride": (2, 2), "pool_padding": (0, 0)}
        fused = _native.BinaryLayer(
            pw_, c, st2, padding, pad_value, thr=thr, direction=d, kernels="avx512", **kw_
        )
        ref = _native.BinaryLayer(
            pw_, c, st2, padding, pad_value, thr=thr, direction=d, kernels="ref", **kw_
        )
        assert ref.weight_layout != "pairs"
        for threads in (1, 3):
            np.testing.assert_array_equal(fused(px, threads), ref(px, 1))


@pytest.mark.parametrize(
    "c,o,pool",
    [
        (64, 20, ((3, 3), (2, 2), (1, 1))),
        (256, 33, ((3, 3), (2, 2), (0, 0))),
        (96, 16, ((2, 3), (1, 2), (1, 0))),
    ],
)
def test_prepared_layer_int32_pool_equals_ref(
    fast_kernels: str, c: int, o: int, pool: tuple
) -> None:
    """The prepared layer's int32 max-pool (conv -> pool with int32 out, and the flat threshold
    that follows it: AlexNet's conv5) on every set against the ref set: channel counts around
    the 16-lane vectors, padded windows (padded taps skipped, as PyTorch does)."""
    rng = np.random.default_rng(c * 1000 + o)
    x, wt = random_pm(rng, (2, 9, 8, c)), random_pm(rng, (o, 3, 3, c))
    px, pw_ = pack_bits(x), pack_bits(wt)
    kw_ = {"pool_kernel": pool[0], "pool_stride": pool[1], "pool_padding": pool[2]}
    fast = _native.BinaryLayer(pw_, c, (1, 1), (1, 1), 0, kernels=fast_kernels, **kw_)
    ref = _native.BinaryLayer(pw_, c, (1, 1), (1, 1), 0, kernels="ref", **kw_)
    want = ref(px, 1)
    assert want.dtype == np.int32
    for threads in (1, 3):
        np.testing.assert_array_equal(fast(px, threads), want)
    flat = want.shape[1] * want.shape[2] * o
    thr = rng.integers(-200, 200, flat).astype(np.int32)
    d = np.where(rng.random(flat) < 0.5, 1, -1).astype(np.int8)
    fast_t = _native.BinaryLayer(
        pw_, c, (1, 1), (1, 1), 0, kernels=fast_kernels, thr=thr, direction=d, **kw_
    )
    ref_t = _native.BinaryLayer(
        pw_, c, (1, 1), (1, 1), 0, kernels="ref", thr=thr, direction=d, **kw_
    )
    np.testing.assert_array_equal(fast_t(px, 2), ref_t(px, 1))

"""Binary GEMM (single and MBBN planes): ref vs a +-1 matmul, every kernel vs ref at tile edges."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_oracles import pack_bits, random_pm, unpack_pm

from bitflow import _native

pytestmark = pytest.mark.native

K_BITS = (1, 31, 32, 33, 63, 64, 65, 255, 256, 257, 511, 512, 513)


def _pm_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.int64) @ b.astype(np.int64).T).astype(np.int32)


@pytest.mark.parametrize("k", K_BITS)
def test_bgemm_ref_equals_pm_matmul(k: int) -> None:
    rng = np.random.default_rng(k)
    a, b = random_pm(rng, (5, k)), random_pm(rng, (6, k))
    got = _native.bgemm(pack_bits(a), pack_bits(b), k, kernels="ref")
    assert got.dtype == np.int32 and got.shape == (5, 6)
    np.testing.assert_array_equal(got, _pm_matmul(a, b))


@pytest.mark.parametrize("k", K_BITS)
def test_bgemm_kernel_equals_ref_at_tile_edges(fast_kernels: str, k: int) -> None:
    rng = np.random.default_rng(1000 + k)
    # M, N around the 2x4 / 4x4 tiles and the 32-row column blocks of the driver.
    top63 = 0
    for m, n in [(1, 1), (3, 5), (4, 4), (5, 9), (8, 33), (13, 7)]:
        # all 64 bits of every word (high 2**64: bit 63 is set in about half the words)
        a = rng.integers(0, 2**64, size=(m, -(-k // 64)), dtype=np.uint64)
        b = rng.integers(0, 2**64, size=(n, -(-k // 64)), dtype=np.uint64)
        top63 += int(np.count_nonzero(a[:, :-1] >> np.uint64(63))) + int(
            np.count_nonzero(b[:, :-1] >> np.uint64(63))
        )
        a[:, -1] = pack_bits(random_pm(rng, (m, k)))[:, -1]  # zero padding bits in the last word
        b[:, -1] = pack_bits(random_pm(rng, (n, k)))[:, -1]
        ref = _native.bgemm(a, b, k, kernels="ref")
        for threads in (1, 2):
            got = _native.bgemm(a, b, k, kernels=fast_kernels, threads=threads)
            np.testing.assert_array_equal(
                got, ref, err_msg=f"{fast_kernels} m={m} n={n} t={threads}"
            )
    assert top63 > 0 or k <= 64  # full words with bit 63 set were exercised


def test_bgemm_large_blocks_threads(kernels: str) -> None:
    # Several A blocks and B blocks (M > 128 KiB / row bytes, N > 32): identical for 1..3 threads.
    rng = np.random.default_rng(7)
    k = 64 * 9 + 5
    a, b = random_pm(rng, (300, k)), random_pm(rng, (70, k))
    pa, pb = pack_bits(a), pack_bits(b)
    expect = _pm_matmul(a, b)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(
            _native.bgemm(pa, pb, k, kernels=kernels, threads=threads), expect
        )


def test_bgemm_empty_rows() -> None:
    a = np.zeros((0, 2), dtype=np.uint64)
    b = np.zeros((3, 2), dtype=np.uint64)
    assert _native.bgemm(a, b, 100).shape == (0, 3)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 700), st.integers(0, 2**32 - 1))
def test_bgemm_property_all_kernels(m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = random_pm(rng, (m, k)), random_pm(rng, (n, k))
    expect = _pm_matmul(a, b)
    for ks in _native.available_kernels():
        np.testing.assert_array_equal(
            _native.bgemm(pack_bits(a), pack_bits(b), k, kernels=ks), expect
        )


def _levels(
    rng: np.random.Generator, planes: int, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Random plane values c [P, ...] in {-1, +1} and the level v = sum_m 2^m c_m."""
    c = random_pm(rng, (planes, *shape))
    v = np.tensordot(2.0 ** np.arange(planes), c.astype(np.float64), axes=1)
    return c, v


@pytest.mark.parametrize("pa,pw", [(1, 1), (2, 1), (1, 3), (2, 2), (3, 2)])
def test_bgemm_planes_equals_level_matmul(kernels: str, pa: int, pw: int) -> None:
    # Bilinearity: sum_ij 2^(i+j) x_i . w_j = (sum_i 2^i x_i) . (sum_j 2^j w_j)  (MBBN Eq. 8).
    rng = np.random.default_rng(pa * 10 + pw)
    k = 130
    ca, va = _levels(rng, pa, (7, k))
    cb, vb = _levels(rng, pw, (9, k))
    expect = (va @ vb.T).astype(np.int64)
    for threads in (1, 2):
        got = _native.bgemm_planes(
            pack_bits(ca), pack_bits(cb), k, kernels=kernels, threads=threads
        )
        assert got.shape == (7, 9)
        np.testing.assert_array_equal(got, expect)


def test_bgemm_planes_single_plane_equals_bgemm() -> None:
    rng = np.random.default_rng(3)
    a, b = random_pm(rng, (4, 100)), random_pm(rng, (5, 100))
    np.testing.assert_array_equal(
        _native.bgemm_planes(pack_bits(a)[None], pack_bits(b)[None], 100),
        _native.bgemm(pack_bits(a), pack_bits(b), 100),
    )


@pytest.mark.parametrize("kw", [1023, 1024, 1025])
def test_bgemm_long_rows_and_extreme_popcounts(kernels: str, kw: int) -> None:
    # Kw = 1023 is the largest row whose pair popcount (<= 64 * Kw) fits a 16-bit field of
    # the packed AVX-512 epilogue; 1024 and 1025 take the 64-bit epilogue. All-different
    # rows reach the extreme dot -k_bits, identical rows +k_bits.
    k = 64 * kw
    rng = np.random.default_rng(kw)
    a = rng.integers(0, 2**64, size=(6, kw), dtype=np.uint64)  # all 64 bits, bit 63 included
    b = rng.integers(0, 2**64, size=(5, kw), dtype=np.uint64)
    assert (a[2] >> np.uint64(63)).any() and (b[3] >> np.uint64(63)).any()
    a[0] = np.uint64(2**64 - 1)
    b[0] = 0
    b[1] = a[1]
    expect = _native.bgemm(a, b, k, kernels="ref")
    assert expect[0, 0] == -k and expect[1, 1] == k
    np.testing.assert_array_equal(_native.bgemm(a, b, k, kernels=kernels, threads=2), expect)
    # the +-1 oracle for one row pair
    assert expect[2, 3] == int(unpack_pm(a[2], k) @ unpack_pm(b[3], k))

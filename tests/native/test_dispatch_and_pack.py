"""CPU features, kernel dispatch, and bit packing against the numpy oracle."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_oracles import ALL_KERNELS, pack_bits, unpack_pm

from bitflow import _native

pytestmark = pytest.mark.native

FEATURES = "popcnt avx2 fma avx512f avx512bw avx512vl avx512vpopcntdq avx512vnni avxvnni neon dotprod".split()


def test_cpu_features_keys_and_consistency() -> None:
    f = _native.cpu_features()
    assert sorted(f) == sorted(FEATURES)
    assert all(isinstance(v, bool) for v in f.values())
    # /proc/cpuinfo is an independent source on Linux (flag names differ slightly).
    if os.path.exists("/proc/cpuinfo"):
        flags = set()
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        for ours, linux in [
            ("popcnt", "popcnt"),
            ("avx2", "avx2"),
            ("avx512f", "avx512f"),
            ("avx512vpopcntdq", "avx512_vpopcntdq"),
            ("avx512vnni", "avx512_vnni"),
        ]:
            assert f[ours] == (linux in flags), ours


def test_available_kernels_order_and_default() -> None:
    avail = _native.available_kernels()
    compiled = _native.compiled_kernels()
    assert avail[0] == "ref"
    assert set(avail) <= set(compiled) <= set(ALL_KERNELS)
    # Best last: the order follows ALL_KERNELS.
    assert avail == [k for k in ALL_KERNELS if k in avail]
    env = os.environ.get("BITFLOW_KERNELS")
    assert _native.default_kernels() == (env if env else "auto")
    f = _native.cpu_features()
    assert ("avx512" in avail) == (
        "avx512" in compiled
        and f["avx512f"]
        and f["avx512bw"]
        and f["avx512vl"]
        and f["avx512vpopcntdq"]
        and f["avx512vnni"]
    )
    for k in [*avail, "auto"]:
        info = _native.kernel_info(k)
        assert info["name"] == k and str(info["bgemm"]).startswith("bgemm_")
    # "auto" on this CPU is the per-op selection for its features
    auto = _native.kernel_info("auto")
    assert _native.compose_kernels(_native.cpu_features()) == auto
    if avail[-1] in (
        "avx512",
        "avx2",
        "neon",
    ):  # the best tier is fully eligible: auto uses its GEMM
        assert auto["bgemm"] == _native.kernel_info(avail[-1])["bgemm"]


X86 = {"popcnt": True, "avx2": True, "fma": True}
AVX512_BASE = {**X86, "avx512f": True, "avx512bw": True, "avx512vl": True}


@pytest.mark.skipif("avx512" not in _native.compiled_kernels(), reason="x86 kernels not compiled")
def test_per_op_selection_rules() -> None:
    """Kernels are chosen per op: AVX-512F/BW/VL without VPOPCNTDQ / VNNI still gets the
    AVX-512 bitpack, threshold and float GEMMs, with the AVX2 popcount and int8 GEMMs (and
    no packed kernel of a set whose plain kernel was not chosen)."""
    no_vpop = _native.compose_kernels(AVX512_BASE)
    assert no_vpop["bitpack_f32"] == "bitpack_f32__avx512"
    assert no_vpop["threshold_bits"] == "threshold_bits__avx512"
    assert (
        no_vpop["sgemm"] == "sgemm_4x4__avx512fma"
        and no_vpop["sgemm_packed"] == "sgemm_4x48__avx512fma"
    )
    assert no_vpop["bgemm"] == "bgemm_2x4__avx2" and no_vpop["bgemm_packed"] == "bgemm_2x16__avx2"
    assert (
        no_vpop["igemm_u8i8"] == "igemm_u8i8_2x4__avx2"
        and no_vpop["igemm_packed"] == "igemm_u8i8_6x16__avx2"
    )
    vnni = _native.compose_kernels({**AVX512_BASE, "avx512vnni": True})
    assert (
        vnni["igemm_packed"] == "igemm_u8i8_6x48__avx512vnni" and vnni["bgemm"] == "bgemm_2x4__avx2"
    )
    vpop = _native.compose_kernels({**AVX512_BASE, "avx512vpopcntdq": True})
    assert vpop["bgemm_packed"] == "bgemm_4x32__avx512vpopcnt"
    assert vpop["igemm_u8i8"] == "igemm_u8i8_2x4__avx2"
    full = _native.compose_kernels({**AVX512_BASE, "avx512vpopcntdq": True, "avx512vnni": True})
    # every op of the full AVX-512 set (names as spelled in kernels/x86/kernel_sets__x86.cc)
    assert full == {
        "name": "auto",
        "bgemm": "bgemm_4x4__avx512vpopcnt",
        "sgemm": "sgemm_4x4__avx512fma",
        "igemm_u8i8": "igemm_u8i8_4x4__avx512vnni",
        "bitpack_f32": "bitpack_f32__avx512",
        "threshold_bits": "threshold_bits__avx512",
        "bgemm_packed": "bgemm_4x32__avx512vpopcnt",
        "igemm_packed": "igemm_u8i8_6x48__avx512vnni",
        "sgemm_packed": "sgemm_4x48__avx512fma",
        "bgemm_gather": "bgemm_gather_4x32__avx512vpopcnt",
        "igemm_gather": "igemm_u8i8_gather_6x48__avx512vnni",
        "sgemm_gather": "sgemm_gather_4x48__avx512fma",
    }
    # the implicit-GEMM (gathered-row) kernels follow their op's selection
    assert (
        vnni["igemm_gather"] == "igemm_u8i8_gather_6x48__avx512vnni"
        and vnni["bgemm_gather"] is None
    )
    assert (
        vpop["bgemm_gather"] == "bgemm_gather_4x32__avx512vpopcnt" and vpop["igemm_gather"] is None
    )
    assert vpop["sgemm_gather"] == "sgemm_gather_4x48__avx512fma"
    # kernel_info() refuses a set this CPU cannot run, so the set's own names are only
    # readable where it is eligible (CI machines may have AVX2 only)
    if "avx512" in _native.available_kernels():
        assert full == {**_native.kernel_info("avx512"), "name": "auto"}
    avx2 = _native.compose_kernels(X86)
    assert avx2 == {
        **_native.kernel_info("avx2"),
        "name": "auto",
        "threshold_bits": "threshold_bits__avx2",
        "bgemm_packed": "bgemm_2x16__avx2",
        "igemm_packed": "igemm_u8i8_6x16__avx2",
        "sgemm_packed": "sgemm_6x16__avx2fma",
    }
    assert _native.compose_kernels({"popcnt": True})["bgemm"] == "bgemm_4x4__scalar"
    assert _native.compose_kernels({}) == {**_native.kernel_info("ref"), "name": "auto"}
    with pytest.raises(ValueError, match="nosuch"):
        _native.compose_kernels({"nosuch": True})


def test_unknown_kernel_set_raises() -> None:
    a = np.zeros((1, 1), dtype=np.uint64)
    with pytest.raises(ValueError, match="nosuch"):
        _native.bgemm(a, a, 1, kernels="nosuch")
    for k in ALL_KERNELS:
        if k not in _native.available_kernels():
            with pytest.raises(ValueError, match=k):
                _native.bgemm(a, a, 1, kernels=k)


def _run_with_env(value: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BITFLOW_KERNELS=value)
    return subprocess.run(
        [sys.executable, "-c", "from bitflow import _native; print(_native.default_kernels())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_env_var_forces_default() -> None:
    r = _run_with_env("ref")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ref"
    assert _run_with_env("auto").stdout.strip() == "auto"
    bad = _run_with_env("bogus")
    assert bad.returncode != 0
    assert "BITFLOW_KERNELS" in bad.stderr and "bogus" in bad.stderr


def test_bitpack_f32_matches_oracle_and_sign_rules(kernels: str) -> None:
    rng = np.random.default_rng(1)
    for c in (1, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 96, 130, 257):
        x = rng.standard_normal((3, 2, c)).astype(np.float32)
        got = _native.bitpack(x, kernels=kernels, threads=2)
        assert got.dtype == np.uint64 and got.shape == (3, 2, -(-c // 64))
        np.testing.assert_array_equal(got, pack_bits(x))
        np.testing.assert_array_equal(unpack_pm(got, c), np.where(x < 0, -1.0, 1.0))
    # sign(0) = +1 for both zeros; NaN packs to 0 (+1); -inf to 1.
    x = np.array([[0.0, -0.0, np.nan, -np.inf, np.inf, -1e-45]], dtype=np.float32)
    assert int(_native.bitpack(x, kernels=kernels)[0, 0]) == 0b101000
    # the same special values in a full 64-wide word and in the tail of a longer row
    row = np.ones((1, 200), dtype=np.float32)
    row[0, [3, 70, 150, 199]] = [-0.0, np.nan, -np.inf, -1e-45]
    np.testing.assert_array_equal(_native.bitpack(row, kernels=kernels), pack_bits(row))
    assert pack_bits(row)[0, 3] == np.uint64(1) << np.uint64(199 - 192)


def test_bitpack_int32_and_threads() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(-5, 5, size=(17, 100), dtype=np.int32)
    ref = pack_bits(x)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(_native.bitpack(x, threads=threads), ref)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_bitpack_roundtrip_property(c: int, rows: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((rows, c)).astype(np.float32)
    packed = _native.bitpack(x)
    # padding bits of the last word are zero
    if c % 64:
        assert np.all(packed[:, -1] >> np.uint64(c % 64) == 0)
    np.testing.assert_array_equal(unpack_pm(packed, c), np.where(x < 0, -1.0, 1.0))

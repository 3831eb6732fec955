"""Encoded multi-bit GEMM speed vs float32 GEMM (MBBN paper Sec. V.D, Eq. 16, Fig. 7).

For every ``M`` (activation planes) and ``K`` (weight planes) the encoded GEMM
``out = sum_{i<M} sum_{j<K} 2^(i+j) (k - 2 popcount(a_i XOR b_j))`` runs on the native engine
(``bitflow._native.bgemm_planes``; weights packed offline, activations given as packed planes,
as the previous layer's ``threshold_planes`` produces them). The float32 baselines multiply
float32 matrices of the same shapes (random normal values, not the encoded levels: a dense GEMM's
time does not depend on the values) in the same run with numpy (OpenBLAS sgemm) and
``torch.matmul`` (MKL). The table
prints the measured ratio ``t_float / t_encoded`` beside the paper's theoretical ``S_MK``
(Eq. 16, ``gamma = 1.91``, ``beta = gamma / 2``, ``L = 64``, ``N`` = the dot length).

Shapes: a large square GEMM (``--size``, default 4096: rows = cols = depth) for ``M, K`` in 1..6
(Fig. 7), and the im2col GEMM shapes of ResNet-18 (ImageNet 224x224, batch 1) and of the
28x28 VGG-small (width 32, batch 1) for a few ``(M, K)``; im2col itself is not timed.

The float baselines run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed from this
process's environment (before numpy loads OpenBLAS), so OpenBLAS picks its kernel from the CPU;
the script reports the kernel that ran (threadpoolctl). One thread everywhere by default.

Correctness: every encoded result is checked on sample rows against the numpy reference
``bitflow.nn.mbbn.plane_gemm`` and against the int64 product of the levels.

Run: ``nice .venv/bin/python benchmarks/bench_mbbn_gemm.py [--size 4096] [--reps 3]``.
"""

from __future__ import annotations

import os

# Before anything imports numpy/torch: OpenBLAS reads these once, when the library loads.
_REMOVED = {
    k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
}

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from bitflow import _native  # noqa: E402
from bitflow.nn.mbbn import plane_gemm, speedup_theory  # noqa: E402

# (name, rows = output positions, cols = output channels, depth = kh*kw*cin)
RESNET18_224 = [
    ("resnet18 conv2_x 3x3 64->64 @56", 56 * 56, 64, 9 * 64),
    ("resnet18 conv3_x 3x3 128->128 @28", 28 * 28, 128, 9 * 128),
    ("resnet18 conv4_x 3x3 256->256 @14", 14 * 14, 256, 9 * 256),
    ("resnet18 conv5_x 3x3 512->512 @7", 7 * 7, 512, 9 * 512),
]
VGG_SMALL_28 = [
    ("vgg_small conv2 3x3 32->32 @28", 28 * 28, 32, 9 * 32),
    ("vgg_small conv3 3x3 32->64 @14", 14 * 14, 64, 9 * 32),
    ("vgg_small conv4 3x3 64->64 @14", 14 * 14, 64, 9 * 64),
    ("vgg_small conv5 3x3 64->128 @7", 7 * 7, 128, 9 * 64),
    ("vgg_small fc 1152->256", 1, 256, 1152),
]
LAYER_BITS = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (4, 2), (2, 4)]


def timeit(fn: Callable[[], Any], reps: int, min_time: float = 0.0) -> float:
    """Median seconds of ``reps`` samples after one warm-up call; a sample repeats the call until
    ``min_time`` has passed (for very short calls). Both sides of every ratio use it."""
    fn()
    samples = []
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        samples.append(dt / n)
    return float(np.median(samples))


def random_levels(rng: np.random.Generator, bits: int, shape: tuple[int, int]) -> np.ndarray:
    a = 2**bits - 1
    return (2 * rng.integers(0, a + 1, size=shape, dtype=np.int64) - a).astype(np.int64)


def pack_levels(v: np.ndarray, bits: int) -> np.ndarray:
    """Packed planes ``uint64 [bits, rows, ceil(depth/64)]`` of odd levels (engine convention),
    built with the engine's own ``bitpack`` (bit = value < 0) on the {-1,+1} planes."""
    a = 2**bits - 1
    q = (v + a) // 2
    planes = [np.where((q >> m) & 1, 1, -1).astype(np.int32) for m in range(bits)]
    return np.ascontiguousarray(
        np.stack([np.asarray(_native.bitpack(np.ascontiguousarray(p))) for p in planes])
    )


def check(
    out: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    depth: int,
    va: np.ndarray,
    vb: np.ndarray,
    rows: list[int],
) -> None:
    ref = plane_gemm(a[:, rows], b, depth)
    exact = va[rows] @ vb.T
    if not (np.array_equal(out[rows], ref) and np.array_equal(ref, exact)):
        raise SystemExit("encoded GEMM disagrees with the numpy reference / integer product")


def float_baselines(
    rows: int, cols: int, depth: int, reps: int, rng: np.random.Generator
) -> tuple[float, float]:
    x = rng.standard_normal((rows, depth), dtype=np.float32)
    w = rng.standard_normal((depth, cols), dtype=np.float32)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    min_time = 0.05
    t_np = timeit(lambda: x @ w, reps, min_time)
    t_torch = timeit(lambda: torch.matmul(tx, tw), reps, min_time)
    return t_np, t_torch


_OPERANDS: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
_ENCODE_TIME: dict[tuple[int, int, int], float] = {}


def operand(
    rows: int, depth: int, bits: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(levels, packed planes)`` of a random ``rows x depth`` operand, cached per shape and bits."""
    key = (rows, depth, bits)
    if key not in _OPERANDS:
        if len(_OPERANDS) > 16:
            _OPERANDS.clear()
        v = random_levels(rng, bits, (rows, depth))
        _OPERANDS[key] = (v, pack_levels(v, bits))
    return _OPERANDS[key]


def encode_time(rows: int, depth: int, m_bits: int, reps: int, rng: np.random.Generator) -> float:
    """Seconds the engine needs to produce ``M`` packed activation planes from int32 accumulators
    (``threshold_planes`` with ``2^M - 1`` thresholds per channel), cached per shape and ``M``."""
    key = (rows, depth, m_bits)
    if key not in _ENCODE_TIME:
        acc = np.ascontiguousarray(rng.integers(-100, 100, size=(rows, depth), dtype=np.int32))
        thr = np.ascontiguousarray(
            np.tile(np.arange(2**m_bits - 1, dtype=np.int32) * 3 - 50, (depth, 1))
        )
        direction = np.ones(depth, dtype=np.int8)
        _ENCODE_TIME[key] = timeit(
            lambda: _native.threshold_planes(acc, thr, direction), reps, 0.02
        )
    return _ENCODE_TIME[key]


def encoded_time(
    rows: int,
    cols: int,
    depth: int,
    m_bits: int,
    k_bits: int,
    reps: int,
    threads: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """``(seconds of bgemm_planes, seconds of encoding the activation planes)``; checks the result."""
    va, a = operand(rows, depth, m_bits, rng)
    vb, b = operand(cols, depth, k_bits, rng)
    if (rows, depth) == (cols, depth) and m_bits == k_bits:
        # distinct operands even for square shapes with M = K
        vb = random_levels(rng, k_bits, (cols, depth))
        b = pack_levels(vb, k_bits)
    out = np.asarray(_native.bgemm_planes(a, b, depth, threads=threads))
    check(out, a, b, depth, va, vb, sorted({0, rows // 2, rows - 1}))
    t = timeit(lambda: _native.bgemm_planes(a, b, depth, threads=threads), reps, 0.05)
    return t, encode_time(rows, depth, m_bits, max(1, reps // 2), rng)


def blas_report() -> list[str]:
    lines = []
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            lines.append(
                f"numpy BLAS: {info.get('internal_api')} {info.get('version')} kernel={info.get('architecture')} "
                f"threads(max)={info.get('num_threads')} ({os.path.basename(info.get('filepath', ''))})"
            )
    cap = torch.backends.cpu.get_cpu_capability()
    lines.append(
        f"torch: {torch.__version__}, BLAS=MKL available={torch.backends.mkl.is_available()}, CPU capability={cap}"
    )
    lines.append(f"bitflow native: {_native.kernel_info()}")
    removed = ", ".join(f"{k}={v}" for k, v in _REMOVED.items()) or "none were set"
    lines.append(f"removed from this process's environment: {removed}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4096, help="square GEMM size (rows = cols = depth)")
    p.add_argument(
        "--max-bits", type=int, default=6, help="M, K in 1..max-bits for the square GEMM"
    )
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (their median counts)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--no-layers", action="store_true", help="skip the ResNet-18 / VGG-small layer shapes"
    )
    a = p.parse_args(argv)
    if a.size < 64 or a.max_bits < 1 or a.max_bits > 8 or a.reps < 1 or a.threads < 1:
        p.error("need --size >= 64, 1 <= --max-bits <= 8, --reps >= 1, --threads >= 1")
    rng = np.random.default_rng(0)
    torch.set_num_threads(a.threads)
    with threadpool_limits(limits=a.threads, user_api="blas"):
        for line in blas_report():
            print(line)
        print(
            f"threads={a.threads}, median of reps={a.reps}, times exclude packing the weights (offline)"
        )
        n = a.size
        flops = 2.0 * n**3
        print(
            f"\nsquare {n}x{n}x{n}; the float32 baselines are re-measured before every M row (drift on a shared machine)"
        )
        print(
            f"{'M':>2} {'K':>2} {'encoded ms':>11} {'binMAC/s':>9} {'enc. acts ms':>12} {'vs numpy':>9} {'vs torch':>9} "
            f"{'vs torch+enc':>12} {f'S_MK(N={n})':>12} {'S_MK(8192)':>10}"
        )
        for m_bits in range(1, a.max_bits + 1):
            t_np, t_torch = float_baselines(n, n, n, a.reps, rng)
            print(
                f"   float32: numpy {t_np * 1e3:.1f} ms ({flops / t_np / 1e9:.1f} GFLOP/s), "
                f"torch.matmul {t_torch * 1e3:.1f} ms ({flops / t_torch / 1e9:.1f} GFLOP/s)"
            )
            for k_bits in range(1, a.max_bits + 1):
                t, t_enc = encoded_time(n, n, n, m_bits, k_bits, a.reps, a.threads, rng)
                macs = m_bits * k_bits * float(n) ** 3
                print(
                    f"{m_bits:>2} {k_bits:>2} {t * 1e3:>11.2f} {macs / t:>9.2e} {t_enc * 1e3:>12.2f} {t_np / t:>9.2f} "
                    f"{t_torch / t:>9.2f} {t_torch / (t + t_enc):>12.2f} {speedup_theory(m_bits, k_bits, n):>12.2f} "
                    f"{speedup_theory(m_bits, k_bits, 8192):>10.2f}"
                )
                sys.stdout.flush()
        if not a.no_layers:
            print(
                "\nlayer GEMMs (im2col shapes, batch 1): rows x cols x depth; ratio = float32 time / encoded time"
            )
            print(
                f"{'layer':<36} {'shape':>16} {'np ms':>8} {'torch ms':>8}  "
                + "  ".join(f"{m}x{k}:np/torch/S" for m, k in LAYER_BITS)
            )
            for name, rows, cols, depth in RESNET18_224 + VGG_SMALL_28:
                reps = max(a.reps, 5)
                f_np, f_torch = float_baselines(rows, cols, depth, reps, rng)
                cells = []
                for m_bits, k_bits in LAYER_BITS:
                    t, _ = encoded_time(rows, cols, depth, m_bits, k_bits, reps, a.threads, rng)
                    cells.append(
                        f"{f_np / t:5.1f}/{f_torch / t:5.1f}/{speedup_theory(m_bits, k_bits, depth):5.1f}"
                    )
                print(
                    f"{name:<36} {f'{rows}x{cols}x{depth}':>16} {f_np * 1e3:>8.3f} {f_torch * 1e3:>8.3f}  "
                    + "  ".join(cells)
                )
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

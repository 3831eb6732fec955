"""Kernel benchmark of the native bit engine (not a test; run by hand, alone, with nice).

    nice .venv/bin/python benchmarks/bench_kernels.py            # every eligible optimized ISA
    nice .venv/bin/python benchmarks/bench_kernels.py --kernels avx512 --threads 1 --reps 30

For every kernel set it first measures the peak of a register-resident xor + popcount + add
loop (``_native.peak_probe``: binary MACs per second of thread CPU time), then times the
binary layers of AlexNet (conv2..conv5 as binary convs, FC6/FC7 as binary GEMMs) at batch 1
and 16 for 1 and 2 threads. A "layer" call includes packing the float32 input
(``bitpack``) and the im2col inside ``bconv2d``; the "kernel" column times ``bconv2d`` /
``bgemm`` alone on packed input. Binary MACs = N * Ho * Wo * O * kh * kw * C (conv) or
N * K * O (dense). Reported: median / min / max wall-clock MAC/s over --reps runs after
--warmup runs, the median CPU-time MAC/s for one thread (robust to other processes sharing
the core), the ratio of the single-thread CPU-time rate to the probe peak, and the speed-up
of 2 threads over 1 (wall clock). The float32 and uint8 x int8 first layers (AlexNet conv1)
are timed too, in multiply-adds per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from bitflow import _native

# name, H, W, C, O, k, stride, padding   (AlexNet binary convolutions, as in the task brief)
CONVS = [
    ("conv2", 27, 27, 96, 192, 5, 1, 2),
    ("conv3", 13, 13, 192, 384, 3, 1, 1),
    ("conv4", 13, 13, 384, 256, 3, 1, 1),
    ("conv5", 13, 13, 256, 256, 3, 1, 1),
]
DENSES = [("fc6", 9216, 4096), ("fc7", 4096, 4096)]


@dataclass
class Row:
    kernels: str
    layer: str
    batch: int
    threads: int
    macs: int
    layer_median: float
    layer_min: float
    layer_max: float
    kernel_median: float
    cpu_median: float
    peak_ratio: float
    speedup_2t: float


def _time(fn: Callable[[], object], reps: int, warmup: int) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _layers(rng: np.random.Generator, batch: int):
    for name, h, w, c, o, k, s, p in CONVS:
        xf = rng.standard_normal((batch, h, w, c)).astype(np.float32)
        wp = _native.bitpack(rng.standard_normal((o, k, k, c)).astype(np.float32))
        macs = batch * h * w * o * k * k * c  # stride 1, "same" padding: Ho = H, Wo = W

        def layer(ks: str, t: int, xf=xf, wp=wp, c=c, s=s, p=p) -> object:
            return _native.bconv2d(
                _native.bitpack(xf, threads=t), wp, c, s, p, 0, kernels=ks, threads=t
            )

        xp = _native.bitpack(xf)

        def kernel(ks: str, t: int, xp=xp, wp=wp, c=c, s=s, p=p) -> object:
            return _native.bconv2d(xp, wp, c, s, p, 0, kernels=ks, threads=t)

        yield name, macs, layer, kernel
    for name, k_in, o in DENSES:
        xf = rng.standard_normal((batch, k_in)).astype(np.float32)
        wp = _native.bitpack(rng.standard_normal((o, k_in)).astype(np.float32))
        xp = _native.bitpack(xf)

        def layer(ks: str, t: int, xf=xf, wp=wp, k_in=k_in) -> object:
            return _native.bgemm(_native.bitpack(xf, threads=t), wp, k_in, kernels=ks, threads=t)

        def kernel(ks: str, t: int, xp=xp, wp=wp, k_in=k_in) -> object:
            return _native.bgemm(xp, wp, k_in, kernels=ks, threads=t)

        yield name, batch * k_in * o, layer, kernel


def bench_binary(
    kernel_sets: list[str], batches: list[int], threads: list[int], reps: int, warmup: int
) -> tuple[list[Row], dict[str, float]]:
    rng = np.random.default_rng(0)
    rows: list[Row] = []
    peaks: dict[str, float] = {}
    for ks in kernel_sets:
        peaks[ks] = _native.peak_probe(ks, 0.5)
        print(
            f"\n== {ks}: {_native.kernel_info(ks)['bgemm']}, peak probe "
            f"{peaks[ks]:.3g} binary MACs/s per core (thread CPU time)"
        )
        print(
            f"{'layer':6} {'N':>3} {'thr':>3} {'layer med':>10} {'min':>9} {'max':>9} "
            f"{'kernel med':>10} {'cpu med':>9} {'/peak':>6} {'2t/1t':>6}"
        )
        for batch in batches:
            for name, macs, layer, kernel in _layers(rng, batch):
                one_thread_wall = None
                for t in threads:
                    wall, cpu = _time(partial(layer, ks, t), reps, warmup)
                    kwall, _ = _time(partial(kernel, ks, t), reps, warmup)
                    med = macs / statistics.median(wall)
                    cpu_rate = macs / statistics.median(cpu) if t == 1 else float("nan")
                    if t == 1:
                        one_thread_wall = statistics.median(wall)
                    speedup = (
                        one_thread_wall / statistics.median(wall)
                        if one_thread_wall is not None and t > 1
                        else float("nan")
                    )
                    row = Row(
                        ks,
                        name,
                        batch,
                        t,
                        macs,
                        med,
                        macs / max(wall),
                        macs / min(wall),
                        macs / statistics.median(kwall),
                        cpu_rate,
                        cpu_rate / peaks[ks] if t == 1 else float("nan"),
                        speedup,
                    )
                    rows.append(row)
                    print(
                        f"{name:6} {batch:3d} {t:3d} {row.layer_median:10.3g} {row.layer_min:9.3g} "
                        f"{row.layer_max:9.3g} {row.kernel_median:10.3g} {row.cpu_median:9.3g} "
                        f"{row.peak_ratio:6.2f} {row.speedup_2t:6.2f}",
                        flush=True,
                    )
    return rows, peaks


def bench_first_layer(kernel_sets: list[str], reps: int, warmup: int) -> None:
    """AlexNet conv1 (224x224x3 -> 64, 11x11, stride 4, pad 2) in float32 and uint8 x int8."""
    rng = np.random.default_rng(1)
    xf = rng.standard_normal((1, 224, 224, 3)).astype(np.float32)
    wf = rng.standard_normal((64, 11, 11, 3)).astype(np.float32)
    xq = rng.integers(0, 256, size=xf.shape, dtype=np.uint8)
    wq = rng.integers(-128, 128, size=wf.shape, dtype=np.int8)
    macs = 55 * 55 * 64 * 11 * 11 * 3
    print("\n== first layer (AlexNet conv1, batch 1, 1 thread), multiply-adds/s, median")
    for ks in ["ref", *kernel_sets]:
        f32 = partial(_native.conv2d_f32, xf, wf, None, 4, 2, kernels=ks)
        u8 = partial(_native.conv2d_u8i8, xq, wq, 4, 2, kernels=ks)
        wall_f, _ = _time(f32, max(3, reps // 5), 1)
        wall_q, _ = _time(u8, max(3, reps // 5), 1)
        info = _native.kernel_info(ks)
        print(
            f"{ks:7} {info['sgemm']:24} {macs / statistics.median(wall_f):9.3g}   "
            f"{info['igemm_u8i8']:28} {macs / statistics.median(wall_q):9.3g}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    eligible = [k for k in _native.available_kernels() if k != "ref"]
    ap.add_argument(
        "--kernels", nargs="+", default=eligible, help=f"kernel sets (eligible: {eligible} + ref)"
    )
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    unknown = [k for k in args.kernels if k not in _native.available_kernels()]
    if unknown:
        ap.error(f"not eligible here: {unknown} (eligible: {_native.available_kernels()})")
    print(f"cpu features: {_native.cpu_features()}")
    rows, peaks = bench_binary(
        args.kernels, args.batch, sorted(set(args.threads)), args.reps, args.warmup
    )
    bench_first_layer([k for k in args.kernels if k != "ref"], args.reps, args.warmup)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peaks": peaks, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

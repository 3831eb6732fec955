"""Thread scaling and per-step fraction of the popcount peak of the native engine, with the
settings interleaved so that load from other processes hits every setting alike.

    .venv/bin/python benchmarks/bench_threads.py                      # bitflow_alexnet, int8 first layer
    .venv/bin/python benchmarks/bench_threads.py --model bitflow_alexnet --first-layer float --rounds 40

For each batch size, ``--rounds`` rounds each time one whole-model call per thread count
(in a rotating order); the report gives medians, the speed-up of every thread count over
one thread (ratios of medians from the same rounds), and per fused step of the engine's
plan the median time and, for binary layers, binary MACs/s and the fraction of the peak
probe (``_native.peak_probe``, one thread, measured before and after the rounds: median);
for binary dense layers also the weight bytes streamed per second against a memory-read
probe (numpy sum over a 64 MiB array, the read bandwidth of one thread, same run): at batch 1
such a layer reads every weight once, so the read bandwidth is its bound.
The per-step times come from separate rounds of step-by-step calls (the same plan).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bitflow import _native as N
from bitflow.bench import _binary_layers, parse_int_list, zoo_model
from bitflow.engine import Engine


def _steps_once(e: Engine, x: np.ndarray) -> list[float]:
    env = {e.graph.input.name: e._prepare(x)}
    out = []
    for s in e._plan:  # the engine's own loop (Engine.run), timed per step
        t0 = time.perf_counter()
        env.update(s.outputs(s.fn([env[v] for v in s.srcs])))
        out.append(time.perf_counter() - t0)
        for v in s.free:
            del env[v]
    return out


def read_bandwidth(rounds: int = 7) -> float:
    """Bytes per second of one thread summing a 64 MiB int64 array (median of rounds)."""
    a = np.ones(8 << 20, dtype=np.int64)
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t0)
    return a.nbytes / float(np.median(ts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="bitflow_alexnet")
    p.add_argument("--first-layer", default="int8", choices=("int8", "float"))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--kernels", default="auto")
    a = p.parse_args(argv)
    threads = parse_int_list(a.threads, "--threads")
    kwargs: dict[str, Any] = {"first_layer": "int8"} if a.first_layer == "int8" else {}
    graph, _ = zoo_model(a.model, **kwargs)
    layers = _binary_layers(graph)
    macs = {d["name"]: d["binary_macs"] for d in layers}
    dense_bytes = {d["name"]: d["packed_weight_bytes"] for d in layers if d["type"] == "bdense"}
    engines = {t: Engine(graph, kernels=a.kernels, threads=t) for t in threads}
    peaks = [N.peak_probe(a.kernels, 0.3)]
    bws = [read_bandwidth()]
    info = N.kernel_info(a.kernels)
    print(
        f"{a.model} ({a.first_layer} first layer), kernels {a.kernels}: bgemm {info['bgemm_packed'] or info['bgemm']}, "
        f"igemm {info['igemm_packed'] or info['igemm_u8i8']}; {a.rounds} interleaved rounds"
    )
    report = []
    for batch in parse_int_list(a.batch, "--batch"):
        spec = graph.input
        x = np.random.default_rng(0).random(
            (batch, spec.channels, spec.height, spec.width), dtype=np.float32
        )
        for e in engines.values():  # warm-up (weights in cache, helper threads started)
            for _ in range(3):
                e.logits(x)
        whole: dict[int, list[float]] = {t: [] for t in threads}
        steps: dict[int, list[list[float]]] = {t: [] for t in threads}
        for r in range(a.rounds):
            order = threads[r % len(threads) :] + threads[: r % len(threads)]
            for t in order:
                t0 = time.perf_counter()
                engines[t].logits(x)
                whole[t].append(time.perf_counter() - t0)
            for t in order:
                steps[t].append(_steps_once(engines[t], x))
        report.append((batch, whole, steps))
    peaks.append(N.peak_probe(a.kernels, 0.3))
    bws.append(read_bandwidth())
    peak, bw = float(np.median(peaks)), float(np.median(bws))
    print(
        f"peak probe {peak:.3g} binary MACs/s (one thread; runs: {', '.join(f'{v:.3g}' for v in peaks)})"
    )
    print(
        f"read bandwidth {bw / 1e9:.1f} GB/s (one thread; runs: {', '.join(f'{v / 1e9:.1f}' for v in bws)})"
    )
    for batch, whole, steps in report:
        base = float(np.median(whole[threads[0]]))
        cells = []
        for t in threads:
            med = float(np.median(whole[t]))
            cells.append(f"{t} thr {med * 1e3:.3f} ms (x{base / med:.2f})")
        print(f"batch {batch}: " + ", ".join(cells))
        plan = engines[threads[0]]._plan
        for i, s in enumerate(plan):
            name = s.ops[0]
            row = []
            for t in threads:
                med = float(np.median([st[i] for st in steps[t]]))
                extra = ""
                if name in macs:
                    rate = macs[name] * batch / med
                    extra = f" {rate:.3g} MAC/s = {rate / (peak * t):.0%} of {t}x peak"
                if name in dense_bytes and batch == 1:
                    gbs = dense_bytes[name] / med
                    extra += f", weights {gbs / 1e9:.1f} GB/s = {gbs / bw:.0%} of 1-thread read bw"
                row.append(f"{t} thr {med * 1e3:7.3f} ms{extra}")
            print(f"   {'+'.join(s.ops)[:40]:40s} " + " | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

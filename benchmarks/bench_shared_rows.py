"""MCN-1 with its ``K`` equal rows per map computed once (``bitflow.convert._rows``) against the
same graph with the rows expanded (``K`` times the popcount work), one engine each, in the
same run with the two interleaved round by round (load from other processes hits both alike).

    .venv/bin/python benchmarks/bench_shared_rows.py
    .venv/bin/python benchmarks/bench_shared_rows.py --model mcn1_xnor_wrn --widths 16,16,32,64 --depth 20

Prints the weight bytes of each graph, the median ms per call for each batch size (1 thread)
and the speed-up of sharing (ratio of medians), and checks that both give the same logits.
Random weights (the speed does not depend on them). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bitflow.bench import parse_int_list
from bitflow.convert import convert, expand_shared_rows
from bitflow.engine import Engine
from bitflow.models import create


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="mcn1_xnor_wrn")
    p.add_argument("--widths", default="8,8,16,32", help="maps per stage (x K planes)")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--batch", default="1,16")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--kernels", default="auto")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    kw: dict[str, object] = {"in_channels": 1, "image_size": a.image_size}
    kw["widths"] = parse_int_list(a.widths, "--widths")
    if "wrn" in a.model:
        kw["depth"] = a.depth
    shared = convert(create(a.model, **kw).eval())
    full = expand_shared_rows(shared)
    graphs = {"shared": shared, "expanded": full}
    for name, g in graphs.items():
        wbytes = sum(
            g.tensors[t].nbytes for op in g.ops for r, t in op.params.items() if r in ("w", "index")
        )
        print(f"{name:>9}: {len(g.ops)} ops, {wbytes:,} bytes of binary weights + gather indices")
    engines = {k: Engine(g, kernels=a.kernels, threads=1) for k, g in graphs.items()}
    rng = np.random.default_rng(0)
    for b in parse_int_list(a.batch, "--batch"):
        x = rng.random((b, 1, a.image_size, a.image_size), dtype=np.float32)
        outs = {k: e.logits(x) for k, e in engines.items()}
        assert np.array_equal(outs["shared"], outs["expanded"]), "the two graphs differ"
        times: dict[str, list[float]] = {k: [] for k in engines}
        for r in range(a.rounds):
            for k in sorted(engines, reverse=bool(r % 2)):
                t0 = time.perf_counter()
                engines[k].logits(x)
                times[k].append(time.perf_counter() - t0)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        print(
            f"batch {b:>3}: shared {med['shared']:.3f} ms, expanded {med['expanded']:.3f} ms, "
            f"speed-up {med['expanded'] / med['shared']:.2f}x (medians of {a.rounds} rounds, "
            f"kernels {engines['shared'].info()['kernels']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Deploy speed of every survey method: the engine against the method's full-precision twin in
PyTorch fp32, one process, batch 1, 1 thread, interleaved rounds (issue 12's "engine ms per
image and speed-up over the FP twin in the same run", without the training: speed does not
depend on trained weights).

For each backbone and method: the backbone built with the method (random weights, BatchNorm
statistics from three forward passes on random images so that thresholds take both
directions), ``methods.convert``, the engine (``threads=1``) and the twin (``TWINS``, PyTorch,
``torch.set_num_threads(1)``) timed interleaved with :func:`bitflow.bench.measure_interleaved`;
reported: median ms of both, the ratio, the deploy form, the ``.bfn`` bytes, the CPU. Writes
``--output`` (JSON) and prints a markdown table.

    nice .venv/bin/python benchmarks/bench_survey_deploy.py --output benchmarks/results/survey_deploy/run.json

Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitflow import methods
from bitflow.analysis.reproduce_survey import TWINS, cpu_name
from bitflow.bench import measure_interleaved
from bitflow.engine import Engine
from bitflow.models import create

SHAPE = {"num_classes": 10, "in_channels": 1, "image_size": 28}


def _calibrated(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 28, 28))
    return model.eval()


def bench(backbone: str, names: list[str], repeat: int, rounds: int) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    xt = torch.from_numpy(x)
    twin = create(TWINS[backbone], **SHAPE).eval()
    rows: list[dict[str, Any]] = []
    for name in names:
        model = _calibrated(methods.build_model(backbone, name, **SHAPE), 1)
        if name == "xnorpp":  # pools after per-position scales need one BatchNorm direction
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.weight.abs_()
        try:
            graph = methods.convert(model)
        except Exception as e:  # noqa: BLE001 - the table says why a row did not deploy
            rows.append(
                {"backbone": backbone, "method": name, "error": str(e).split("; supported")[0]}
            )
            continue
        eng = Engine(graph, threads=1)
        with torch.no_grad():
            t = measure_interleaved(
                {"engine": partial(eng.logits, x), "torch": partial(twin, xt)},
                repeat=repeat,
                warmup=5,
                rounds=rounds,
            )
        rows.append(
            {
                "backbone": backbone,
                "method": name,
                "deploy": methods.get_method(name).deploy,
                "ops": sorted({op.type for op in graph.ops}),
                "bfn_bytes": len(graph.to_bytes()),
                "engine_ms": t["engine"].median_ms,
                "torch_fp32_ms": t["torch"].median_ms,
                "speedup": t["torch"].median_ms / t["engine"].median_ms,
            }
        )
        print(
            f"{backbone} {name}: {rows[-1]['engine_ms']:.3f} ms, {rows[-1]['speedup']:.1f}x",
            file=sys.stderr,
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| backbone | method | deploy form | .bfn bytes | engine ms | PyTorch fp32 twin ms | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['backbone']} | {r['method']} | {r['error']} | - | - | - | - |")
            continue
        out.append(
            f"| {r['backbone']} | {r['method']} | {r['deploy']} | {r['bfn_bytes']} | "
            f"{r['engine_ms']:.3f} | {r['torch_fp32_ms']:.3f} | {r['speedup']:.1f}x |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbones", default="bitflow_vgg_small,bireal_resnet20")
    p.add_argument("--methods", default=None, help="comma-separated (default: all)")
    p.add_argument("--repeat", type=int, default=40)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--output", default=None)
    a = p.parse_args(argv)
    names = a.methods.split(",") if a.methods else methods.list_methods()
    t0 = time.time()
    rows = [r for b in a.backbones.split(",") for r in bench(b, names, a.repeat, a.rounds)]
    result = {
        "cpu": cpu_name(),
        "repeat": a.repeat,
        "rounds": a.rounds,
        "seconds": time.time() - t0,
        "rows": rows,
    }
    text = table(rows)
    print(f"CPU: {result['cpu']}; batch 1, 1 thread, medians of {a.repeat} interleaved calls\n")
    print(text)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps(result, indent=1) + "\n")
        Path(a.output).with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

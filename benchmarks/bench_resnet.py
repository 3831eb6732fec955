"""Bi-Real ResNet-18 (224x224, 1000 classes, random weights, randomized BatchNorm statistics) on
the native engine against baselines that compute the same function from the same graph
(:mod:`bitflow.bench`): PyTorch fp32 (float32 convolutions of +-1 values), ONNX Runtime fp32 (the
graph's ONNX export) and int8 (its binary layers as ConvInteger / MatMulInteger), and OpenVINO's
binary network (BinaryConvolution nodes, FakeQuantize binarization, float stem / downsample
convolutions / adds / pools), all in one run (issue 10 section 5). Every run checks each baseline
against the engine (``checks.same_function`` in the JSON); OpenVINO is skipped with a note for the
integer residual stream (no exact int64 requantization in its CPU plugin).

    nice .venv/bin/python benchmarks/bench_resnet.py                       # every variant, 1-2 threads, batch 1 and 16
    nice .venv/bin/python benchmarks/bench_resnet.py --variants float --threads 1 --batch 1 --repeat 20

Every (threads, batch) setting times the runtimes interleaved (``--rounds`` rounds of
``repeat / rounds`` calls each; medians over all calls) so that a busy machine slows them alike;
the speed-ups are ratios within one setting of one run. The bars (1 thread, batch 1, the faster
variant): engine >= 1.5x OpenVINO BNN, >= 3x ORT int8, >= 10x PyTorch fp32.

A model variant is one entry of ``VARIANTS`` (zoo options of ``bireal_resnet18``): the published
float stem and a fixed-point (uint8 x int8) stem, both with the float residual stream; and the integer
residual stream of issue 10 section 3 (``"int"``: int8 stem, int32 stream, binary downsample). (``bitflow bench --model bireal_resnet18 --model-arg residual=int`` likewise.) JSON of every variant goes to ``--output``, a text summary to stdout. Not
collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bitflow.bench import BASELINES, bench_zoo, clean_blas_env, format_report, parse_int_list

MODEL = "bireal_resnet18"
VARIANTS: dict[str, dict[str, Any]] = {
    "float": {"residual": "float"},  # float32 residual stream, float stem (Bi-Real as published)
    "float-int8stem": {
        "residual": "float",
        "first_layer": "int8",
    },  # fixed-point stem conv (uint8 x int8)
    "int": {"residual": "int"},  # fixed-point residual stream: every value an integer (int8 stem)
}
BARS = {
    "openvino_bnn": 1.5,
    "ort_int8": 3.0,
    "torch_fp32": 10.0,
}  # engine speed-up, 1 thread, batch 1


def bars(results: dict[str, dict[str, Any]]) -> list[str]:
    """The bars at 1 thread, batch 1 for every variant (the faster one first), met or missed;
    speed-ups are ratios of medians measured interleaved in the same setting."""
    rows = {
        name: next((r for r in res["settings"] if r["threads"] == 1 and r["batch"] == 1), None)
        for name, res in results.items()
    }
    rows = {k: r for k, r in rows.items() if r is not None}
    if not rows:
        return ["(no 1-thread batch-1 setting measured: bars not judged)"]
    out = []
    for name in sorted(rows, key=lambda k: rows[k]["engine_ms"]):
        row = rows[name]
        out.append(
            f"bars, 1 thread, batch 1, variant {name!r} (engine {row['engine_ms']:.3f} ms median, "
            f"{row['engine_ms_cpu']:.3f} ms CPU per call):"
        )
        for key, bar in BARS.items():
            sp = row["speedup"].get(key)
            if sp is None:
                out.append(f"  {key}: not measured")
                continue
            spc = row.get("speedup_cpu", {}).get(key)
            cpu = f", in CPU time {spc:.2f}x" if spc is not None else ""
            out.append(
                f"  {key}: {sp:.2f}x{cpu} (bar {bar:g}x) {'met' if sp >= bar else f'MISSED by {bar / sp:.2f}x'}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {', '.join(VARIANTS)}",
    )
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baselines", default=",".join(BASELINES))
    p.add_argument(
        "--layers", action="store_true", help="also time every engine step and binary layer"
    )
    p.add_argument("--output", default="bench_resnet.json")
    a = p.parse_args(argv)
    clean_blas_env([str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])
    threads = parse_int_list(a.threads, "--threads")
    batches = parse_int_list(a.batch, "--batch")
    baselines = [b for b in a.baselines.split(",") if b and b != "none"]
    results: dict[str, dict[str, Any]] = {}
    for name in a.variants.split(","):
        if name not in VARIANTS:
            p.error(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        res = bench_zoo(
            MODEL,
            model_kwargs=VARIANTS[name],
            threads=threads,
            batches=batches,
            repeat=a.repeat,
            warmup=a.warmup,
            rounds=a.rounds,
            baselines=baselines,
            layers=a.layers,
        )
        res["variant"] = name
        results[name] = res
        print(f"== variant {name}: {VARIANTS[name]}")
        print(format_report(res), flush=True)
        print(flush=True)
    for line in bars(results):
        print(line)
    Path(a.output).write_text(json.dumps(list(results.values()), indent=1) + "\n")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Whole-model and per-layer latency of the native engine against PyTorch float32, ONNX
Runtime float32 / int8 (integer binary layers) and OpenVINO's binary network, each computing
the model's own function, measured in one run (the native engine issue's benchmark; see
bitflow.bench for what each number is and how every run checks the baselines).

    nice .venv/bin/python benchmarks/bench_engine.py                      # everything below
    nice .venv/bin/python benchmarks/bench_engine.py --models bitflow_alexnet:int8 --threads 1 --batch 1

Models are zoo models with random weights and randomized BatchNorm statistics, converted on
the fly; ``NAME:int8`` selects the fixed-point first layer (``first_layer="int8"``). The
JSON of every model goes to ``--output`` (default ``bench_engine.json``), a text summary to
stdout. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bitflow.bench import BASELINES, bench_zoo, clean_blas_env, format_report, parse_int_list

DEFAULT_MODELS = (
    "bitflow_alexnet:float,bitflow_alexnet:int8,bitflow_vgg_small:float,bitflow_lenet:float"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated NAME[:float|int8]")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--baselines", default=",".join(BASELINES))
    p.add_argument("--output", default="bench_engine.json")
    a = p.parse_args(argv)
    clean_blas_env([str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])
    threads = parse_int_list(a.threads, "--threads")
    batches = parse_int_list(a.batch, "--batch")
    baselines = [b for b in a.baselines.split(",") if b and b != "none"]
    results = []
    for item in a.models.split(","):
        name, _, first = item.partition(":")
        kwargs = {"first_layer": first} if first and first != "float" else {}
        res = bench_zoo(
            name,
            model_kwargs=kwargs,
            threads=threads,
            batches=batches,
            repeat=a.repeat,
            warmup=a.warmup,
            baselines=baselines,
        )
        results.append(res)
        print(format_report(res), flush=True)
        print(flush=True)
    Path(a.output).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

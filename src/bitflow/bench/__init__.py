"""``bitflow bench``: latency of the native engine against float and binary baselines,
measured in the same process and run.

For a model (a ``.bfn`` file or a zoo model with random weights, converted on the fly) and
every (threads, batch) setting this measures, as medians with min and max over ``repeat``
timed calls after ``warmup`` untimed ones:

- ``engine_ms``: :class:`bitflow.engine.Engine` (its fused plan) on float32 NCHW input;
- ``torch_fp32_ms``: the graph's function in float32 PyTorch ops (+-1 values and weights in
  float convolutions, the engine's thresholds; :func:`~bitflow.bench._graph_models.torch_model`)
  under ``torch.no_grad``;
- ``ort_fp32_ms``: the graph exported with :func:`bitflow.export.to_onnx` (the same function,
  float32 ``Conv`` / ``MatMul`` on +-1 values) in ONNX Runtime;
- ``ort_int8_ms``: that export with every binary and fixed-point layer as ``ConvInteger`` /
  ``MatMulInteger`` on uint8 codes (ONNX Runtime's int8 GEMMs; exact integers, so the same
  function; :func:`~bitflow.bench._graph_models.ort_integer`);
- ``openvino_bnn_ms``: the graph built with OpenVINO's ``BinaryConvolution`` and
  ``FakeQuantize`` binarization (:func:`~bitflow.bench._graph_models.openvino_bnn`; the graph's
  weights, thresholds, directions and feature order), f32 inference-precision hint;

Every baseline computes the engine's function (integers and bits identical, float values within
float32 rounding): :meth:`~bitflow.bench._baselines._Baselines.checks` measures that on every run and
``tests/python/test_bench_same_function.py`` asserts it, so the speed-ups compare like with like.

and per binary layer ``engine_ms``, ``torch_fp32_ms`` (a float conv / linear of the same
shape), ``openvino_bnn_ms`` (OpenVINO's own per-node profile) and ``binary_macs_per_s``
(binary multiply-accumulates of the layer / engine median). The per-layer
``torch_fp32_ms`` is a float layer of the same shape on random data (timing only). Optional baselines whose package
is missing are skipped with a note. Memory: per-sample activation bytes of the middle
(binary) layers, packed bits vs float32; model file vs float32 weights.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _native as N
from ..engine import Engine
from ..ir import Graph, load_graph
from ._baselines import (
    BASELINES,
    _Baselines,
    _torch_layer_fn,
    blas_info,
    clean_blas_env,
    twin_model,
    zoo_model,
)
from ._report import (
    BINARY_OPS,
    _activation_memory,
    _binary_layers,
    _file_sizes,
    _memory,
    format_report,
)
from ._timing import Timing, measure, measure_interleaved

__all__ = [
    "BASELINES",
    "Timing",
    "bench",
    "bench_file",
    "bench_zoo",
    "blas_info",
    "clean_blas_env",
    "format_report",
    "measure",
    "measure_interleaved",
    "parse_int_list",
    "zoo_model",
]


def parse_int_list(text: str, what: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; every value must be a positive integer."""
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(
            f"{what} must be a comma-separated list of positive integers, got {text!r}"
        ) from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(
            f"{what} must be a comma-separated list of positive integers, got {text!r}"
        )
    return vals


def bench(
    graph: Graph,
    *,
    twin: Any = None,
    threads: Sequence[int] = (1,),
    batches: Sequence[int] = (1,),
    repeat: int = 30,
    warmup: int = 5,
    baselines: Iterable[str] = BASELINES,
    layers: bool = True,
    kernels: str = "auto",
    file_bytes: int | None = None,
    model_name: str | None = None,
    probe_seconds: float = 0.2,
    rounds: int = 1,
) -> dict[str, Any]:
    """Measure ``graph`` on the engine and the requested baselines (see the module docstring)
    for every (threads, batch) pair; returns a JSON-ready dict. ``rounds`` > 1 interleaves
    the runtimes of a setting (:func:`measure_interleaved`: ``rounds`` rounds of
    ``repeat / rounds`` calls each, medians over all calls)."""
    baselines = list(baselines)
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    if repeat < 1 or warmup < 0 or rounds < 1:
        raise ValueError(
            f"repeat and rounds must be >= 1 and warmup >= 0, got repeat={repeat}, rounds={rounds}, "
            f"warmup={warmup}"
        )
    if (
        not threads
        or not batches
        or any(int(t) < 1 for t in threads)
        or any(int(b) < 1 for b in batches)
    ):
        raise ValueError("threads and batches must be non-empty lists of positive integers")
    notes: list[str] = []
    shape_layers = _binary_layers(graph)
    for layer, op in zip(shape_layers, [o for o in graph.ops if o.type in BINARY_OPS], strict=True):
        if op.type.startswith("bconv2d"):
            w = graph.tensors[op.params["w"]]
            layer["kernel"] = (int(w.shape[-3]), int(w.shape[-2]))
    engine1 = Engine(graph, kernels=kernels, threads=1)
    first = graph.ops[0].type
    with tempfile.TemporaryDirectory(prefix="bitflow-bench-") as tmp:
        work = Path(tmp)
        if file_bytes is None:
            path = work / "model.bfn"
            graph.save(str(path))
            file_bytes = path.stat().st_size
        base = _Baselines(graph, twin, baselines, work, notes)
        spec = graph.input
        result: dict[str, Any] = {
            "model": model_name,
            "input": [spec.channels, spec.height, spec.width],
            "first_layer": {"conv2d_f32": "float", "conv2d_u8i8": "int8"}.get(first, first),
            "kernels": engine1.kernels,
            "kernel_info": dict(N.kernel_info(engine1.kernels)),
            "cpu_features": {k: bool(v) for k, v in N.cpu_features().items()},
            "peak_binary_macs_per_s": float(N.peak_probe(engine1.kernels, probe_seconds))
            if probe_seconds > 0
            else None,
            "repeat": repeat,
            "warmup": warmup,
            "versions": {"bitflow_engine": engine1.kernels, **base.versions},
            "blas": blas_info(),
            "rounds": rounds,
            "memory": _memory(graph, engine1, shape_layers),
            "activation_memory": _activation_memory(engine1),
            "file": _file_sizes(graph, shape_layers, file_bytes, base.twin),
            "settings": [],
            "notes": notes,
        }
        result["checks"] = base.checks(engine1, int(batches[0]))
        for t in threads:
            eng = Engine(graph, kernels=kernels, threads=int(t))
            for b in batches:
                result["settings"].append(
                    _setting(
                        eng, base, shape_layers, int(t), int(b), repeat, warmup, layers, rounds
                    )
                )
        result["blas_after"] = blas_info()
    return result


def _bind(fn: Any, arg: Any) -> Any:
    return lambda: fn(arg)


def _setting(
    eng: Engine,
    base: _Baselines,
    shape_layers: list[dict[str, Any]],
    t: int,
    b: int,
    repeat: int,
    warmup: int,
    layers: bool,
    rounds: int = 1,
) -> dict[str, Any]:
    spec = eng.graph.input
    x = np.random.default_rng(0).random(
        (b, spec.channels, spec.height, spec.width), dtype=np.float32
    )
    row: dict[str, Any] = {"threads": t, "batch": b}
    fns: dict[str, Any] = {"engine_ms": lambda: eng.logits(x)}
    if "torch" in base.wanted:
        fns["torch_fp32_ms"] = base.torch_fn(t, b)
    if "ort" in base.wanted:
        fns["ort_fp32_ms"] = base.ort_fn("fp32", t, b)
        fns["ort_int8_ms"] = base.ort_fn("int8", t, b)
    if "openvino" in base.wanted:
        fns["openvino_bnn_ms"] = base.ov_fn(t, b)
    if rounds > 1:
        for key, tm in measure_interleaved(fns, repeat, warmup, rounds).items():
            row.update(tm.to_json(key))
    else:
        for key, fn in fns.items():
            row.update(measure(fn, repeat, warmup).to_json(key))
    keys = [
        k for k in ("torch_fp32_ms", "ort_fp32_ms", "ort_int8_ms", "openvino_bnn_ms") if k in row
    ]
    row["speedup"] = {k[:-3]: row[k] / row["engine_ms"] for k in keys}
    # per-call process CPU time: comparable between runtimes only with one thread each
    if t == 1:
        row["speedup_cpu"] = {
            k[:-3]: row[f"{k}_cpu"] / row["engine_ms_cpu"] for k in keys if row["engine_ms_cpu"] > 0
        }
    if not layers:
        return row
    # every step of the engine's fused plan, timed on its own input
    env = {eng.graph.input.name: eng._prepare(x)}
    steps = []
    step_ms: dict[str, Timing] = {}
    for step in eng._plan:
        inp = [env[v] for v in step.srcs]
        tm = measure(_bind(step.fn, inp), repeat, warmup)
        env.update(step.outputs(step.fn(inp)))
        steps.append({"ops": list(step.ops), **tm.to_json("engine_ms")})
        for name in step.ops:
            step_ms[name] = tm
    row["engine_steps"] = steps
    ov_nodes = base.ov_layer_ms(t, b, repeat, warmup) if "openvino" in base.wanted else {}
    out_layers = []
    for layer in shape_layers:
        tm = step_ms[layer["name"]]
        ent: dict[str, Any] = {
            k: layer[k] for k in ("name", "type", "in_shape", "out_shape", "binary_macs")
        }
        ent["binary_macs"] = layer["binary_macs"] * b
        ent["engine_step_ops"] = next(s["ops"] for s in steps if layer["name"] in s["ops"])
        ent.update(tm.to_json("engine_ms"))
        ent["binary_macs_per_s"] = ent["binary_macs"] / (tm.median_ms * 1e-3)
        ent["binary_macs_per_s_best"] = ent["binary_macs"] / (tm.min_ms * 1e-3)
        if "torch" in base.wanted:
            ent.update(
                measure(_torch_layer_fn(layer, t, b), repeat, warmup).to_json("torch_fp32_ms")
            )
        if layer["name"] in ov_nodes:
            o = ov_nodes[layer["name"]]
            ent.update(
                {
                    "openvino_bnn_ms": o["median"],
                    "openvino_bnn_ms_min": o["min"],
                    "openvino_bnn_ms_max": o["max"],
                }
            )
            ent["openvino_binary_macs_per_s"] = (
                ent["binary_macs"] / (o["median"] * 1e-3) if o["median"] > 0 else None
            )
        out_layers.append(ent)
    row["layers"] = out_layers
    return row


def bench_zoo(
    name: str, *, seed: int = 0, model_kwargs: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """:func:`bench` on a zoo model with random weights (see :func:`zoo_model`)."""
    graph, twin = zoo_model(name, seed=seed, **(model_kwargs or {}))
    res = bench(graph, twin=twin, model_name=name, **kw)
    res["source"] = "zoo (random weights, randomized BatchNorm statistics)"
    return res


def bench_file(path: str | os.PathLike[str], **kw: Any) -> dict[str, Any]:
    """:func:`bench` on a ``.bfn`` model file."""
    p = Path(path)
    graph = load_graph(p)
    twin = None
    prov = graph.provenance
    if isinstance(prov.get("model"), str) and isinstance(prov.get("kwargs", {}), dict):
        try:  # the zoo model the file was converted from names its full-precision twin
            twin = twin_model(prov["model"], prov.get("kwargs", {}))
        except (ValueError, TypeError):
            twin = None  # not a zoo model, or options this bitflow does not know
    res = bench(graph, twin=twin, file_bytes=p.stat().st_size, model_name=p.name, **kw)
    res["source"] = str(p)
    return res

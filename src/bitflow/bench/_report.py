"""What ``bitflow bench`` reports besides times: the binary layers' shapes and MACs, activation
memory, file sizes, and the plain-text summary."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import Engine
from ..ir import Graph
from ..ir.graph import ValueInfo
from ..ir.ops import ops_in_group

BINARY_OPS = tuple(sorted(ops_in_group("binary")))  # the op table's binary group


def _value_bytes(v: ValueInfo) -> int:
    item = {"float32": 4, "int32": 4, "uint8": 1, "bits": 8}[v.dtype]
    return int(np.prod(v.shape)) * item * v.planes


def _binary_layers(graph: Graph) -> list[dict[str, Any]]:
    """Shape facts of every binary layer: input/output NCHW shapes, binary MACs per sample,
    float32 weight bytes of a float layer of the same shape, packed bytes in the graph."""
    values = graph.validate()
    out = []
    for op in graph.ops:
        if op.type not in BINARY_OPS:
            continue
        a = op.attrs
        w = graph.tensors[op.params["w"]]
        vin, vout = values[op.inputs[0]], values[op.outputs[0]]
        pw = w.shape[0] if op.type.endswith("_planes") else 1
        pa = vin.planes
        in_shape: tuple[int, ...]
        out_shape: tuple[int, ...]
        if op.type.startswith("bconv2d"):
            o, kh, kw = w.shape[-4:-1]
            c = a["channels"]
            h, wd = vin.shape[0], vin.shape[1]
            ho, wo = vout.shape[0], vout.shape[1]
            macs = ho * wo * o * kh * kw * c
            fan = kh * kw * c
            in_shape, out_shape = (c, h, wd), (o, ho, wo)
        else:
            o, c = w.shape[-2], a["k_bits"]
            macs, fan = o * c, c
            in_shape, out_shape = (c,), (o,)
        out.append(
            {
                "name": op.name,
                "type": op.type,
                "in_shape": in_shape,
                "out_shape": out_shape,
                "stride": tuple(a.get("stride", (1, 1))),
                "padding": tuple(a.get("padding", (0, 0))),
                "binary_macs": int(macs) * pa * pw,
                "float32_weight_bytes": 4 * o * fan,
                "packed_weight_bytes": int(w.nbytes),
            }
        )
    return out


def _memory(graph: Graph, engine: Engine, layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-sample activation bytes of the middle (binary) layers: the engine's stored values
    (input and output of each fused step) vs a float32 model (input and output of each layer),
    and the engine's int32 accumulator scratch, which lives only inside one call."""
    values = engine.values
    names = {layer["name"] for layer in layers}
    eng_peak = scratch = 0
    for step in engine._plan:
        if not names.intersection(step.ops):
            continue
        srcs = sum(_value_bytes(values.get(v, graph.input.value)) for v in step.srcs)
        eng_peak = max(eng_peak, srcs + _value_bytes(values[step.dst]))
        first = next(op for op in graph.ops if op.name == step.ops[0])
        scratch = max(scratch, _value_bytes(values[first.outputs[0]]))
    f32_peak = max(
        (4 * (int(np.prod(x["in_shape"])) + int(np.prod(x["out_shape"]))) for x in layers),
        default=0,
    )
    return {
        "engine_middle_peak_activation_bytes": int(eng_peak),
        "float32_middle_peak_activation_bytes": int(f32_peak),
        "ratio_float32_over_engine": float(f32_peak / eng_peak) if eng_peak else None,
        "engine_int32_scratch_bytes": int(scratch),
    }


def _float32_elems(v: ValueInfo) -> int:
    """Elements of a value in a float32 model (one float per channel; bit planes are levels of
    one value)."""
    if v.dtype == "bits":
        assert v.channels is not None
        return int(np.prod(v.shape[:-1], dtype=np.int64)) * v.groups * v.channels
    return int(np.prod(v.shape, dtype=np.int64))


def _activation_memory(engine: Engine) -> dict[str, Any]:
    """Peak activation bytes per sample of the whole network (the input included; a step's
    inputs and output alive together, every value released after its last reader):

    - ``engine_peak_bytes_per_sample``: the engine's fused plan (``Engine.info()``'s
      ``peak_activation_bytes_per_sample``; a fused layer's int32 scratch, reported
      separately, is not counted) and ``engine_op_by_op_peak_bytes_per_sample``;
    - ``float32_peak_bytes_per_sample``: the same graph run op by op with every value float32
      (one float per channel: what a float model of this architecture keeps, e.g. PyTorch's
      twin without in-place ops), the same liveness rule.
    """
    size = {v: 4 * _float32_elems(info) for v, info in engine.values.items()}
    live = peak = size[engine.graph.input.name]
    for step in engine._steps:
        live += size[step.dst]
        peak = max(peak, live)
        live -= sum(size[v] for v in step.free)
    eng = engine.info()["peak_activation_bytes_per_sample"]
    return {
        "engine_peak_bytes_per_sample": int(eng),
        "engine_op_by_op_peak_bytes_per_sample": int(engine.peak_activation_bytes(fused=False)),
        "float32_peak_bytes_per_sample": int(peak),
        "ratio_float32_over_engine": float(peak / eng) if eng else None,
        "rule": "values alive at once per sample (input included; a step's inputs and output together; "
        "released after the last reader); float32: the same graph with every value float32",
    }


def _file_sizes(
    graph: Graph, layers: list[dict[str, Any]], file_bytes: int, twin: Any
) -> dict[str, Any]:
    packed = sum(x["packed_weight_bytes"] for x in layers)
    f32 = sum(x["float32_weight_bytes"] for x in layers)
    thr = 0
    for op in graph.ops:
        if op.type.startswith("threshold") and op.type not in (
            "threshold_f32_bits",
            "threshold_f32_planes",
        ):
            thr += int(
                graph.tensors[op.params["thr"]].nbytes
                + graph.tensors[op.params["direction"]].nbytes
            )
    res: dict[str, Any] = {
        "bfn_bytes": int(file_bytes),
        "binary_layers_packed_weight_bytes": int(packed),
        "binary_layers_threshold_bytes": int(thr),
        "binary_layers_float32_weight_bytes": int(f32),
        "ratio_float32_over_packed": float(f32 / packed) if packed else None,
        "ratio_float32_over_packed_with_thresholds": float(f32 / (packed + thr))
        if packed + thr
        else None,
    }
    if twin is not None:
        res["float32_twin_param_bytes"] = int(sum(4 * p.numel() for p in twin.parameters()))
        res["ratio_float32_twin_over_bfn"] = (
            res["float32_twin_param_bytes"] / file_bytes if file_bytes else None
        )
    return res


def _fmt_ms(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "-"


def format_report(result: dict[str, Any]) -> str:
    """A plain-text summary of a :func:`bench` result (the JSON holds everything)."""
    lines = [
        f"{result.get('model')}: input {result['input']}, first layer {result['first_layer']}, "
        f"kernels {result['kernels']}, peak probe {result['peak_binary_macs_per_s'] or 0:.3g} binary MACs/s",
    ]
    cols = ("engine_ms", "torch_fp32_ms", "ort_fp32_ms", "ort_int8_ms", "openvino_bnn_ms")
    lines.append(
        f"{'threads':>7} {'batch':>5} " + " ".join(f"{c:>16}" for c in cols) + "  (median ms)"
    )
    for row in result["settings"]:
        lines.append(
            f"{row['threads']:>7} {row['batch']:>5} "
            + " ".join(f"{_fmt_ms(row, c):>16}" for c in cols)
        )
        lines.append(
            f"{'':>14}"
            + " ".join(f"{_fmt_ms(row, c + '_cpu'):>16}" for c in cols)
            + "  (CPU ms per call)"
        )
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in row["speedup"].items())
        if sp:
            lines.append(f"{'':>14}engine speed-up: {sp}")
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in row.get("speedup_cpu", {}).items())
        if sp:
            lines.append(f"{'':>14}engine speed-up in CPU time: {sp}")
        for layer in row.get("layers", []):
            ov = (
                f", openvino {layer['openvino_bnn_ms']:.3f} ms"
                if "openvino_bnn_ms" in layer
                else ""
            )
            tf = f", torch fp32 {layer['torch_fp32_ms']:.3f} ms" if "torch_fp32_ms" in layer else ""
            lines.append(
                f"{'':>14}{layer['type']} {layer['name']}: engine {layer['engine_ms']:.3f} ms "
                f"({layer['binary_macs_per_s']:.3g} binary MACs/s){tf}{ov}"
            )
    am = result.get("activation_memory")
    if am:
        lines.append(
            f"peak activation memory per sample (whole network): engine {am['engine_peak_bytes_per_sample']} B, "
            f"float32 model of the same graph {am['float32_peak_bytes_per_sample']} B "
            f"({(am['ratio_float32_over_engine'] or 0):.1f}x less)"
        )
    ch = result.get("checks")
    if ch:
        rel = ch.get("ort_fp32_vs_torch_max_rel_diff")
        lines.append(
            f"checks: output shapes {'equal' if ch['output_shapes_ok'] else 'DIFFER'} "
            f"({', '.join(f'{k} {v}' for k, v in ch['output_shapes'].items())})"
            + (
                f"; ORT fp32 vs PyTorch max rel diff {rel:.2e} ({'ok' if ch['ort_fp32_vs_torch_ok'] else 'FAILED'})"
                if rel is not None
                else ""
            )
        )
    mem, f = result["memory"], result["file"]
    lines.append(
        f"middle-layer activations per sample: engine {mem['engine_middle_peak_activation_bytes']} B, "
        f"float32 {mem['float32_middle_peak_activation_bytes']} B "
        f"({(mem['ratio_float32_over_engine'] or 0):.1f}x); int32 scratch {mem['engine_int32_scratch_bytes']} B"
    )
    lines.append(
        f"binary-layer weights: packed {f['binary_layers_packed_weight_bytes']} B vs float32 "
        f"{f['binary_layers_float32_weight_bytes']} B ({(f['ratio_float32_over_packed'] or 0):.1f}x); "
        f"file {f['bfn_bytes']} B"
    )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)

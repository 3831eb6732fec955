"""``bitflow convert --explain``: per engine op, the form a layer became and its bytes (issue 12).

Forms: ``binary`` (xnor-popcount on packed bits: ``bconv2d``, ``bdense`` and their MBBN plane
variants), ``threshold`` (int32 or float -> bits: BatchShift thresholds, ``bitpack``), ``integer``
(int32 / int8 arithmetic: fixed-point first layer, int pools, the integer residual stream),
``float`` (float32 arithmetic: first / last layer, float residual stream), ``layout`` (flatten,
concat, bit pools). The converter never lets a binarized layer fall back to float: a layer it
cannot express raises :class:`~bitflow.convert.UnsupportedLayerError` (and a method's model
says which engine op it would need, :func:`bitflow.methods.prepare_for_deploy`), so the
binarized layers of a converted graph are ``binary`` by construction; this table shows it.
"""

from __future__ import annotations

from typing import Any

from ..ir import Graph

_THRESHOLD = {
    "threshold_bits",
    "threshold_f32_bits",
    "threshold_planes",
    "threshold_f32_planes",
    "bitpack",
}
_INTEGER = {"conv2d_u8i8", "maxpool_i32", "add_i32", "requant_i32"}
_LAYOUT = {"flatten", "concat", "maxpool_bits"}


def op_form(op_type: str) -> str:
    """``binary`` | ``threshold`` | ``integer`` | ``layout`` | ``float`` for an engine op type."""
    from ..ir.graph import BINARY_OPS

    if op_type in BINARY_OPS:
        return "binary"
    if op_type in _THRESHOLD:
        return "threshold"
    if op_type in _INTEGER:
        return "integer"
    if op_type in _LAYOUT:
        return "layout"
    return "float"


def explain(graph: Graph) -> list[dict[str, Any]]:
    """One row per op: name, type, form, the PyTorch layer it came from, parameter bytes."""
    rows = []
    for op in graph.ops:
        nbytes = int(sum(graph.tensors[t].nbytes for t in op.params.values()))
        rows.append(
            {
                "op": op.name,
                "type": op.type,
                "form": op_form(op.type),
                "source": op.attrs.get("source", ""),
                "param_bytes": nbytes,
            }
        )
    return rows


def format_explain(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'op':<28} {'type':<22} {'form':<10} {'from layer':<24} {'bytes':>10}"]
    for r in rows:
        lines.append(
            f"{r['op']:<28} {r['type']:<22} {r['form']:<10} {str(r['source']):<24} {r['param_bytes']:>10}"
        )
    by: dict[str, int] = {}
    for r in rows:
        by[r["form"]] = by.get(r["form"], 0) + r["param_bytes"]
    lines.append("parameter bytes by form: " + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    return "\n".join(lines)

"""``bitflow convert --explain``: per engine op, the form a layer became and its bytes (issue 12).

Forms: ``binary`` (xnor-popcount on packed bits: ``bconv2d``, ``bdense`` and their MBBN plane
variants), ``threshold`` (int32 or float -> bits or uint8 codes: BatchShift thresholds, ``bitpack``),
``integer`` (int32 / int8 / uint8 arithmetic: fixed-point first layer, int pools, the integer
residual stream, +-1 weights over uint8 codes), ``float`` (float32 arithmetic: first / last layer,
float residual stream), ``layout`` (flatten, concat, bit pools, ``gather_channels``): the op
table's groups (:mod:`bitflow.ir.ops`), thresholds apart. The converter never lets a binarized layer fall back to float: a layer it
cannot express raises :class:`~bitflow.convert.UnsupportedLayerError` (and a method's model
says which engine op it would need, :func:`bitflow.methods.prepare_for_deploy`), so the
binarized layers of a converted graph are ``binary`` by construction; this table shows it.

ABC-Net layers (issue 12) become ``M x N`` ``binary`` convolutions (op attribute ``abc_base``)
and a weighted sum (attribute ``abc_sum = "MxN"``): ``integer`` (``requant_i32`` + ``add_i32``,
exact) or ``float`` (``scale_bias`` + ``add_f32``, near-threshold decisions after it);
:func:`abc_layers` sums each such layer up, and :func:`format_explain` prints one line per layer.
A tensor several ops share (an ABC weight base read by its N convolutions) counts once, at the
first op that reads it, so the bytes add up to the file's.
"""

from __future__ import annotations

from typing import Any

from ..ir import Graph


def op_form(op_type: str) -> str:
    """``binary`` | ``threshold`` | ``integer`` | ``layout`` | ``float`` for an engine op type:
    the decisions to bits / codes (every ``threshold_*`` and ``bitpack``) are ``threshold``,
    every other op its group in the op table (:mod:`bitflow.ir.ops`), so a new op needs no
    entry here (``conv2d_u8b1`` / ``dense_u8b1``: +-1 weights over uint8 codes, ``integer``)."""
    from ..ir.ops import OPS

    if op_type.startswith("threshold_") or op_type == "bitpack":
        return "threshold"
    if op_type not in OPS:
        raise ValueError(f"unknown engine op type {op_type!r}")
    return OPS[op_type].group


def explain(graph: Graph) -> list[dict[str, Any]]:
    """One row per op: name, type, form, the PyTorch layer it came from, parameter bytes."""
    rows = []
    seen: set[str] = set()
    for op in graph.ops:
        own = [t for t in dict.fromkeys(op.params.values()) if t not in seen]
        seen.update(own)
        nbytes = int(sum(graph.tensors[t].nbytes for t in own))
        row: dict[str, Any] = {
            "op": op.name,
            "type": op.type,
            "form": op_form(op.type),
            "source": op.attrs.get("source", ""),
            "param_bytes": nbytes,
        }
        if "abc_sum" in op.attrs:
            row["abc"] = "sum " + str(op.attrs["abc_sum"])
        elif "abc_base" in op.attrs:
            row["abc"] = f"branch a{int(op.attrs['abc_base'])}"
        rows.append(row)
    return rows


def abc_layers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per ABC-Net layer of an :func:`explain` table: ``layer``, ``branches`` (M x N
    bconvs), ``sum`` (``"integer"``: exact int32; ``"float"``: float32, near-threshold),
    ``binary_bytes`` (the packed weight bases, stored once) and ``sum_bytes``."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if "abc" not in r:
            continue
        e = out.setdefault(
            str(r["source"]),
            {"layer": r["source"], "branches": 0, "sum": "", "binary_bytes": 0, "sum_bytes": 0},
        )
        if r["form"] == "binary":
            e["branches"] += 1
            e["binary_bytes"] += r["param_bytes"]
        else:
            e["sum"] = r["form"] if e["sum"] in ("", r["form"]) else "mixed"
            e["sum_bytes"] += r["param_bytes"]
    return list(out.values())


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
    for e in abc_layers(rows):
        how = (
            "exact int32 sum (requant_i32 + add_i32)"
            if e["sum"] == "integer"
            else "float32 sum (scale_bias + add_f32; near-threshold decisions after it)"
        )
        lines.append(
            f"ABC-Net layer {e['layer']!r}: {e['branches']} xnor-popcount branches (bconv2d, "
            f"{e['binary_bytes']} bytes of weight bases) -> {how}, {e['sum_bytes']} bytes"
        )
    return "\n".join(lines)

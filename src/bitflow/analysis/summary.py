"""Per-layer Size / Mem / MFLOP accounting of the binarized middle layers (BitFlow-Net Table 3).

Three columns, each with its convention stated in ``CONVENTIONS`` (printed by ``bitflow
summary``):

- ``xnor`` (the paper's XNOR-Net accounting, Fig. 1a): Size = 1-bit weights + 4 float32 per
  output channel (alpha and BatchNorm parameters; this reproduces the paper's +0.0625 MB for a
  4096-output FC layer); Mem = 5 float32 buffers per output element (integer conv output, its
  float conversion, alpha product, normalized value, BN output: the paper's 2.800 MB for the
  27x27x192 BinConv2 output = 5 x 4 B x 139,968 / 10^6); MFLOP = 5 float operations per output
  element (alpha multiply + BN subtract, divide, multiply, add: 0.699 for BinConv2).
- ``bitflow`` (the paper's BitFlow-Net accounting, Fig. 1b): Size = 1-bit weights + one int32
  threshold per output channel; Mem = one 32-bit integer per output element; MFLOP = 0.
- ``bitflow_packed`` (our engine and ``.bfn`` file, taken from the converted graph): Size = the
  bytes of the layer's tensors in the model file (its uint64 weight words plus the int32
  thresholds and int8 directions that binarize its output; where the converter thresholds per
  feature after a flatten, that is one per feature); Mem = the packed bits of that output per
  image (the engine's int32 accumulator tile is transient); MFLOP = 0. A binary layer whose
  output feeds the float classifier has no threshold.

Size is in MiB (2^20 bytes) and Mem in MB (10^6 bytes), the units that reproduce the paper's
numbers (its BinConv2 weights: 96 x 192 x 25 bits = 57,600 B = 0.055 MiB; its Mem column is
decimal). ``binary_mops`` (million binary multiply-accumulates) is reported beside MFLOP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn import BinaryConv2d, BinaryLinear

MIB = float(2**20)
MB = 1e6

CONVENTIONS = {
    "xnor": "Size: 1-bit weights + 4 float32/output channel (MiB); Mem: 5 float32 buffers/output element (MB); MFLOP: 5 float ops/output element",
    "bitflow": "Size: 1-bit weights + 1 int32 threshold/output channel (MiB); Mem: 1 int32/output element (MB); MFLOP: 0",
    "bitflow_packed": "Size: the layer's bytes in the .bfn file (uint64 weight words, int32 thresholds, int8 directions; MiB); Mem: packed output bits, per-pixel 64-bit words (MB); MFLOP: 0",
}

# BitFlow-Net Table 3 (XNOR-Net Size, Mem, MFLOP | BitFlow-Net Size, Mem, MFLOP), AlexNet.
PAPER_TABLE3: dict[str, tuple[float, float, float, float, float, float]] = {
    "BinConv2": (0.057, 2.800, 0.699, 0.055, 0.560, 0.0),
    "BinConv3": (0.085, 1.300, 0.324, 0.079, 0.260, 0.0),
    "BinConv4": (0.109, 0.865, 0.216, 0.106, 0.173, 0.0),
    "BinConv5": (0.074, 0.865, 0.216, 0.071, 0.173, 0.0),
    "BinFC6": (4.563, 0.080, 0.020, 4.502, 0.016, 0.0),
    "BinFC7": (2.063, 0.080, 0.020, 2.002, 0.016, 0.0),
    "TOTAL": (6.951, 5.990, 1.495, 6.815, 1.198, 0.0),
}


@dataclass
class _Layer:
    name: str
    module: nn.Module
    cin: int
    cout: int
    k: int | None
    out_hw: tuple[int, int] | None
    fan_in: int


def _trace_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[_Layer]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    for n, m in mods:
        hooks.append(
            m.register_forward_hook(
                lambda mod, inp, out, n=n: shapes.__setitem__(n, tuple(out.shape))
            )
        )
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    layers = []
    for n, m in mods:
        s = shapes[n]
        if isinstance(m, BinaryConv2d):
            kh, kw = m.kernel_size  # type: ignore[misc]
            layers.append(
                _Layer(
                    n, m, m.in_channels, m.out_channels, kh, (s[2], s[3]), m.in_channels * kh * kw
                )
            )
        else:
            layers.append(_Layer(n, m, m.in_features, m.out_features, None, None, m.in_features))
    return layers


def _words(bits: int) -> int:
    return (bits + 63) // 64


def _graph_bytes(model: nn.Module) -> tuple[list[dict[str, int]], int] | None:
    """Per binary op of the converted graph, in order: the bytes of its weights plus those of the
    threshold ops that turn its output into the next layer's bits, and the bytes per sample of
    that packed output; and the total tensor bytes of the file. ``None`` if not convertible."""
    from ..convert import convert

    try:
        graph = convert(model)
    except (ValueError, TypeError):  # a model the converter refuses: formula column only
        return None
    values = graph.validate()
    out: list[dict[str, int]] = []
    for op in graph.ops:
        if op.type in ("bconv2d", "bdense", "bconv2d_planes", "bdense_planes"):
            out.append(
                {"bytes": int(sum(graph.tensors[t].nbytes for t in op.params.values())), "mem": 0}
            )
        elif op.type in ("threshold_bits", "threshold_planes") and out:
            out[-1]["bytes"] += int(sum(graph.tensors[t].nbytes for t in op.params.values()))
            v = values[op.outputs[0]]
            out[-1]["mem"] = int(np.prod(v.shape)) * 8 * v.planes
    return out, int(sum(t.nbytes for t in graph.tensors.values()))


def summarize(
    model: nn.Module, input_shape: tuple[int, int, int] | None = None, include_last: bool = False
) -> dict[str, Any]:
    """Per-layer and total Size/Mem/MFLOP of the binary middle layers of ``model``.

    ``input_shape`` defaults to ``(model.in_channels, model.image_size, model.image_size)``.
    A binary last layer (followed by a ``Scale``) is excluded unless ``include_last``: the
    paper's Table 3 lists the middle layers only. Layer names follow the paper (BinConv2..,
    BinFC6..) when the model has AlexNet's shape, else the module names.
    """
    if input_shape is None:
        input_shape = (int(model.in_channels), int(model.image_size), int(model.image_size))  # type: ignore[arg-type]
    layers = _trace_layers(model, input_shape)
    if not include_last and layers and isinstance(layers[-1].module, BinaryLinear):
        num_classes = getattr(model, "num_classes", None)
        if num_classes is not None and layers[-1].cout == num_classes:
            layers = layers[:-1]
    rows = []
    tot = {c: {"size_mb": 0.0, "mem_mb": 0.0, "mflop": 0.0} for c in CONVENTIONS}
    gb = _graph_bytes(model)
    tot_mops = 0.0
    for i, lay in enumerate(layers):
        if lay.k is not None:
            label = f"BinConv{i + 2}"
            hw = lay.out_hw or (1, 1)
        else:
            label = f"BinFC{i + 2}"
            hw = (1, 1)
        elems = lay.cout * hw[0] * hw[1]
        weight_bits = lay.cout * lay.fan_in
        k2 = (lay.k or 1) ** 2
        packed_weight_bytes = (
            lay.cout * k2 * _words(lay.cin) * 8
            if lay.k is not None
            else lay.cout * _words(lay.fan_in) * 8
        )
        cols = {
            "xnor": {
                "size_mb": (weight_bits / 8 + 4 * 4 * lay.cout) / MIB,
                "mem_mb": 5 * 4 * elems / MB,
                "mflop": 5 * elems / 1e6,
            },
            "bitflow": {
                "size_mb": (weight_bits / 8 + 4 * lay.cout) / MIB,
                "mem_mb": 4 * elems / MB,
                "mflop": 0.0,
            },
            "bitflow_packed": {
                "size_mb": (packed_weight_bytes + 4 * lay.cout + lay.cout) / MIB,
                "mem_mb": hw[0] * hw[1] * _words(lay.cout) * 8 / MB,
                "mflop": 0.0,
            },
        }
        if gb is not None and i < len(gb[0]):
            # the real file: this layer's weight tensor plus the thresholds (int32) and
            # directions (int8) that binarize its output, and that packed output per image
            cols["bitflow_packed"]["size_mb"] = gb[0][i]["bytes"] / MIB
            cols["bitflow_packed"]["mem_mb"] = gb[0][i]["mem"] / MB
        mops = weight_bits * hw[0] * hw[1] / 1e6
        tot_mops += mops
        for c in cols:
            for key in cols[c]:
                tot[c][key] += cols[c][key]
        row: dict[str, Any] = {
            "layer": label,
            "module": lay.name,
            "fmap": f"{lay.cin}->{lay.cout}",
            "ksize": lay.k,
            "fmap_size": f"{hw[0]}x{hw[1]}" if lay.k is not None else None,
            "binary_mops": mops,
            **cols,
        }
        if label in PAPER_TABLE3 and len(layers) == 6:
            p = PAPER_TABLE3[label]
            row["paper"] = {
                "xnor": dict(zip(("size_mb", "mem_mb", "mflop"), p[:3], strict=True)),
                "bitflow": dict(zip(("size_mb", "mem_mb", "mflop"), p[3:], strict=True)),
            }
        rows.append(row)
    total: dict[str, Any] = {"layer": "TOTAL", "binary_mops": tot_mops, **tot}
    if gb is not None:
        total["file_tensor_bytes"] = gb[1]
    if len(layers) == 6:
        p = PAPER_TABLE3["TOTAL"]
        total["paper"] = {
            "xnor": dict(zip(("size_mb", "mem_mb", "mflop"), p[:3], strict=True)),
            "bitflow": dict(zip(("size_mb", "mem_mb", "mflop"), p[3:], strict=True)),
        }
    return {
        "layers": rows,
        "total": total,
        "conventions": dict(CONVENTIONS),
        "input_shape": list(input_shape),
    }


def format_table(summary: dict[str, Any]) -> str:
    """A text table: ours (xnor | bitflow | bitflow_packed) with the paper's values in brackets."""
    head = f"{'Layer':<9} {'FMap':<11} {'K':>2} {'FMapSize':>8} | " + " | ".join(
        f"{c:^32}"
        for c in (
            "XNOR-Net Size Mem MFLOP",
            "BitFlow-Net Size Mem MFLOP",
            "bitflow packed Size Mem MFLOP",
        )
    )
    lines = [head, "-" * len(head)]

    def cell(row: dict[str, Any], col: str) -> str:
        v = row[col]
        s = f"{v['size_mb']:.3f} {v['mem_mb']:.3f} {v['mflop']:.3f}"
        if "paper" in row and col in row["paper"]:
            p = row["paper"][col]
            s += f" [{p['size_mb']:.3f} {p['mem_mb']:.3f} {p['mflop']:.3f}]"
        return f"{s:<32}"

    for row in [*summary["layers"], summary["total"]]:
        k = "" if row.get("ksize") is None else str(row["ksize"])
        lines.append(
            f"{row['layer']:<9} {row.get('fmap', '') or '':<11} {k:>2} {row.get('fmap_size') or '':>8} | "
            + " | ".join(cell(row, c) for c in ("xnor", "bitflow", "bitflow_packed"))
        )
    lines.append("")
    lines.append("[paper values in brackets]  Size: MiB, Mem: MB (10^6 B)")
    for c, text in summary["conventions"].items():
        lines.append(f"  {c}: {text}")
    return "\n".join(lines)

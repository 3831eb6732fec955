"""MCN storage per MCconv layer, beside full-precision layers (paper Sec. IV-B2: "32x").

Per :class:`~bitflow.nn.mcn.MCConv2d` (``G`` input maps, ``H`` output maps, ``K`` planes, ``W x W``):

- ``binary_bits`` = ``H*G*K*W*W``: one bit per element of ``C^`` (symmetric centers; the two
  center values and the ``K*W*W`` float32 M-Filter are counted separately, ``side_bytes``);
- ``float_same_params_bytes`` = ``4 * H*G*K*W*W``: the same filters in float32 (U-MCN), the
  paper's 32x;
- ``float_same_channels_bytes`` = ``4 * (H*K)*(G*K)*W*W``: an ordinary float conv with the same
  input/output channel counts (``G*K -> H*K``), ``32*K`` times the binary bits;
- ``bfn_weight_bytes``: what the converted ``.bfn`` stores for the layer's weights today (the
  lowered MCN-1 binary conv has one packed row per output *channel*, so ``s_h`` is stored ``K``
  times, ``ceil(G*K/64)`` words per tap; the first layer is float32), ``None`` for variants that
  do not convert.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..nn.mcn import MCConv2d


def mcn_storage(model: nn.Module) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name, m in model.named_modules():
        if not isinstance(m, MCConv2d):
            continue
        g, h, k, w = m.in_maps, m.out_maps, m.planes, m.kernel_size
        n = h * g * k * w * w
        deploy = m.binary and m.symmetric and m.num_centers == 2
        bfn: int | None = None
        if deploy and m.replicate_input and m.input_quantizer is None:
            bfn = 4 * h * k * g * w * w  # float first layer, weights summed over the replicas
        elif deploy and m.input_quantizer is not None and m.variant == "mcn1":
            bfn = 8 * h * k * w * w * ((g * k + 63) // 64)
        rows.append(
            {
                "layer": name,
                "maps": f"{g}x{k} -> {h}x{k}",
                "kernel": w,
                "binary_bits": n if m.binary else 0,
                "side_bytes": 4 * (k * w * w + m.num_centers),
                "float_same_params_bytes": 4 * n,
                "float_same_channels_bytes": 4 * (h * k) * (g * k) * w * w,
                "bfn_weight_bytes": bfn,
            }
        )
    bits = sum(r["binary_bits"] for r in rows)
    side = sum(r["side_bytes"] for r in rows)
    total = {
        "binary_bytes": bits / 8 + side,
        "float_same_params_bytes": sum(r["float_same_params_bytes"] for r in rows),
        "float_same_channels_bytes": sum(r["float_same_channels_bytes"] for r in rows),
    }
    return {"layers": rows, "total": total}


def format_mcn_storage(s: dict[str, Any]) -> str:
    head = (
        f"{'layer':<24} {'maps':>14} {'k':>2} {'C^ bits':>10} {'M+centers B':>11} "
        f"{'float C B':>11} {'float conv B':>13} {'.bfn weights B':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in s["layers"]:
        bfn = "-" if r["bfn_weight_bytes"] is None else str(r["bfn_weight_bytes"])
        lines.append(
            f"{r['layer']:<24} {r['maps']:>14} {r['kernel']:>2} {r['binary_bits']:>10} {r['side_bytes']:>11} "
            f"{r['float_same_params_bytes']:>11} {r['float_same_channels_bytes']:>13} {bfn:>14}"
        )
    t = s["total"]
    b = t["binary_bytes"]
    if b > 0:
        lines.append(
            f"total: binary C^ + M-Filters + centers {b / 1e6:.3f} MB; float32 same filters "
            f"{t['float_same_params_bytes'] / 1e6:.3f} MB ({t['float_same_params_bytes'] / b:.1f}x); float32 conv "
            f"with the same channels {t['float_same_channels_bytes'] / 1e6:.3f} MB "
            f"({t['float_same_channels_bytes'] / b:.1f}x)"
        )
    return "\n".join(lines)


__all__ = ["format_mcn_storage", "mcn_storage"]

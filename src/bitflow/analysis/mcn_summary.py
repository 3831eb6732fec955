"""MCN storage per MCconv layer, beside full-precision layers (paper Sec. IV-B2: "32x").

Per :class:`~bitflow.nn.mcn.MCConv2d` (``G`` input maps, ``H`` output maps, ``K`` planes, ``W x W``):

- ``binary_bits`` = ``H*G*K*W*W``: one bit per element of ``C^`` (symmetric centers; the
  center values and the float32 M-Filter are counted separately, ``side_bytes`` =
  ``4 (K W W + U)``, or ``4 (K + U)`` for MCN-1, which keeps only the ``K`` plane means: the
  paper's "nine times" smaller M-Filter for 3x3, Sec. IV-E);
- ``float_same_params_bytes`` = ``4 * H*G*K*W*W``: the same filters in float32 (U-MCN), the
  paper's 32x;
- ``float_same_channels_bytes`` = ``4 * (H*K)*(G*K)*W*W``: an ordinary float conv with the same
  input/output channel counts (``G*K -> H*K``), ``32*K`` times the binary bits;
- ``bfn_weight_bytes``: what the converted ``.bfn`` stores for the layer's weights today
  (``deploy`` names the form, ``bitflow.convert._mcn``): a binary MCN-1 layer (sign or uint8
  inputs) stores one packed row ``s_h`` per map (``ceil(G*K/64)`` words per tap) and the int32
  index of ``gather_channels`` that gives the ``K`` channels of map ``h`` its result
  (``bitflow.convert._rows``: the ``K`` equal rows are computed once); full M ("taps") stores ``H W W`` 1x1 rows plus the float32
  ``W^2``-term combination ``[H*K, W, W, H*W*W]``; the first layer and real activations (W1/A32,
  U-MCN) are a float32 conv with the reconstructed weight.

``total`` adds the whole model: ``model_float32_bytes`` (every parameter in float32, as the
unbinarized U-MCN stores it) beside ``model_mcn_bytes`` (the 1-bit ``C^`` + M-Filters + centers
of every MCconv, every other parameter, BatchNorm and the FC layer, in float32): Sec. IV-B2's
"32x in the convolutional layers", diluted by the float layers.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..nn.mcn import MCConv2d, UInt8Act


def _deploy_form(m: MCConv2d) -> tuple[str, int]:
    """``(form, bytes of weights in the .bfn)`` of one layer (module docstring)."""
    g, h, k, w = m.in_maps, m.out_maps, m.planes, m.kernel_size
    words = (g * k + 63) // 64
    binary = m.binary and m.symmetric and m.num_centers == 2
    if m.input_quantizer is None or not binary:
        form = "float first layer" if m.replicate_input else "float conv (W1/A32 fallback)"
        cin = g if m.replicate_input else g * k
        return form, 4 * h * k * cin * w * w
    if m.variant == "mcn1":
        form = "conv2d_u8b1" if isinstance(m.input_quantizer, UInt8Act) else "bconv2d"
        if k == 1:
            return form, 8 * h * w * w * words
        # K equal rows per map: one packed row per map plus the int32 gather index of the
        # H*K channels (bitflow.convert._rows)
        return form + " + gather_channels", 8 * h * w * w * words + 4 * h * k
    return "taps", 8 * h * w * w * words + 4 * (h * k) * w * w * (h * w * w)


def mcn_storage(model: nn.Module) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    mc_params = 0
    for name, m in model.named_modules():
        if not isinstance(m, MCConv2d):
            continue
        g, h, k, w = m.in_maps, m.out_maps, m.planes, m.kernel_size
        n = h * g * k * w * w
        mc_params += m.weight.numel() + m.m_filter.numel()
        form, bfn = _deploy_form(m)
        m_floats = k if m.variant == "mcn1" else k * w * w
        rows.append(
            {
                "layer": name,
                "maps": f"{g}x{k} -> {h}x{k}",
                "kernel": w,
                "binary_bits": n if m.binary else 0,
                "side_bytes": 4 * (m_floats + m.num_centers),
                "float_same_params_bytes": 4 * n,
                "float_same_channels_bytes": 4 * (h * k) * (g * k) * w * w,
                "deploy": form,
                "bfn_weight_bytes": bfn,
            }
        )
    bits = sum(r["binary_bits"] for r in rows)
    side = sum(r["side_bytes"] for r in rows)
    all_params = sum(int(p.numel()) for p in model.parameters())
    other = 4 * (all_params - mc_params)
    total = {
        "binary_bytes": bits / 8 + side,
        "float_same_params_bytes": sum(r["float_same_params_bytes"] for r in rows),
        "float_same_channels_bytes": sum(r["float_same_channels_bytes"] for r in rows),
        "other_float32_bytes": other,
        "model_float32_bytes": 4 * all_params,
        "model_mcn_bytes": bits / 8 + side + other,
    }
    return {"layers": rows, "total": total}


def format_mcn_storage(s: dict[str, Any]) -> str:
    head = (
        f"{'layer':<24} {'maps':>14} {'k':>2} {'C^ bits':>10} {'M+centers B':>11} "
        f"{'float C B':>11} {'float conv B':>13} {'.bfn weights B':>14}  deploy"
    )
    lines = [head, "-" * len(head)]
    for r in s["layers"]:
        lines.append(
            f"{r['layer']:<24} {r['maps']:>14} {r['kernel']:>2} {r['binary_bits']:>10} {r['side_bytes']:>11} "
            f"{r['float_same_params_bytes']:>11} {r['float_same_channels_bytes']:>13} {r['bfn_weight_bytes']:>14}  {r['deploy']}"
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
        lines.append(
            f"whole model: MCN {t['model_mcn_bytes'] / 1e6:.3f} MB (with {t['other_float32_bytes'] / 1e6:.3f} MB "
            f"of float32 BN / FC / other parameters) vs float32 model {t['model_float32_bytes'] / 1e6:.3f} MB "
            f"({t['model_float32_bytes'] / t['model_mcn_bytes']:.1f}x)"
        )
    return "\n".join(lines)


__all__ = ["format_mcn_storage", "mcn_storage"]

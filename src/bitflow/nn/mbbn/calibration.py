"""MBBN training helpers: initialise a low-bit model from a higher-bit one, and calibrate the
learned ranges of Algorithm 2 on data (MSE grid, then the loss)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import mbit_layers
from .quantizers import OddLinearQuantizer, OddLinearWeight, odd_linear_levels

_QUANTIZER_KEYS = (".input_quantizer.", ".weight_quantizer.")


def init_from_higher(model_low: nn.Module, state_dict_high: Mapping[str, Tensor]) -> list[str]:
    """Progressive initialisation (MBBN Sec. V.A): initialise a lower-bit model from a trained
    higher-bit (or full-precision) one with the same architecture.

    Copies every latent weight, bias, BatchNorm parameter and running statistic, and every
    quantizer range ``t`` that ``state_dict_high`` holds (the bit widths are not part of a state
    dict: they belong to ``model_low``). Quantizer ranges that ``state_dict_high`` lacks (e.g.
    a full-precision twin, or Algorithm 1 -> Algorithm 2) are re-initialised from the copied
    weights (weights: ``t = max |w|``; activations keep their initial range); quantizer tensors
    that ``model_low`` has no place for (Algorithm 2 -> Algorithm 1) are ignored.

    Returns the copied keys. Raises ``ValueError`` naming the keys when ``state_dict_high``
    lacks a non-quantizer tensor of ``model_low``, holds tensors ``model_low`` does not have,
    or a shape differs; ``model_low`` is unchanged then.
    """
    if not isinstance(model_low, nn.Module):
        raise TypeError(f"model_low must be an nn.Module, got {type(model_low).__name__}")
    if not isinstance(state_dict_high, Mapping):
        raise TypeError(
            f"state_dict_high must be a mapping of tensors, got {type(state_dict_high).__name__}"
        )
    low = model_low.state_dict()

    def is_quantizer_key(k: str) -> bool:
        return any(s in "." + k for s in _QUANTIZER_KEYS)

    unexpected = sorted(k for k in state_dict_high if k not in low and not is_quantizer_key(k))
    missing = sorted(k for k in low if k not in state_dict_high and not is_quantizer_key(k))
    shapes = sorted(
        f"{k}: {tuple(state_dict_high[k].shape)} vs {tuple(low[k].shape)}"
        for k in low
        if k in state_dict_high and tuple(state_dict_high[k].shape) != tuple(low[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing from the higher-bit state: {_few(missing)}")
    if unexpected:
        problems.append(f"not in the lower-bit model: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (high vs low): {_few(shapes)}")
    if problems:
        raise ValueError(
            "init_from_higher: the models differ in architecture; " + "; ".join(problems)
        )
    copied = sorted(k for k in low if k in state_dict_high)
    merged = dict(low)
    for k in copied:
        merged[k] = state_dict_high[k].detach().to(dtype=low[k].dtype, device=low[k].device)
    model_low.load_state_dict(merged)
    for name, layer in mbit_layers(model_low).items():
        wq = layer.weight_quantizer
        key = f"{name}.weight_quantizer.t" if name else "weight_quantizer.t"
        if isinstance(wq, OddLinearWeight) and key not in state_dict_high:
            wq.init_latent_(layer.weight)
    return copied


_CAL_GRID = 96
_CAL_FACTORS = (0.35, 0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0, 3.0)


@torch.no_grad()
def _mse_range(v: Tensor, bits: int, lower: str, per_channel: bool = False) -> Tensor:
    """The range ``t`` in ``max|v| * {1/96, ..., 1}`` minimising ``mean (Q_t(v) - v)^2`` for the
    odd-level quantizer ``Q_t = (t/A) odd_ladder(A clip(v, t)/t)`` (per output channel if asked)."""
    a = (1 << bits) - 1
    v = v.detach().double()
    flat = v.flatten(1) if per_channel else v.reshape(1, -1)
    amax = flat.abs().amax(dim=1).clamp_min(1e-6)
    best_err = torch.full_like(amax, math.inf)
    best_t = amax.clone()
    for i in range(1, _CAL_GRID + 1):
        t = amax * (i / _CAL_GRID)
        q = odd_linear_levels(flat, t[:, None], bits, lower) * (t[:, None] / a)
        err = (q - flat).pow(2).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_t = torch.where(better, t, best_t)
    return best_t


@torch.no_grad()
def calibrate_ranges(model: nn.Module, x: Tensor, y: Tensor | None = None) -> dict[str, float]:
    """Fit the learned ranges ``t`` of Algorithm 2's quantizers (``odd_linear`` activations,
    ``odd_linear_weight`` weights) to data before training: MBBN's progressive initialisation
    (Sec. V.A) copies a higher-bit (or full-precision) model, whose ranges, if any, were fitted
    to a different number of levels, or do not exist (then ``t`` would start at 1.0, clipping
    BatchNorm outputs of a full-precision model that spread far beyond 1).

    Layer by layer in forward order (each layer sees the already calibrated layers before it):

    1. weights: ``t_w`` minimising the quantization error ``|Q_t(w) - w|^2`` (per channel with
       ``per_channel=True``) over ``t = max|w| * j/96``;
    2. activations: the layer's input ``x_l`` on the calibration batch (model in eval mode, so
       BatchNorm uses its running statistics), ``t_mse`` minimising ``|Q_t(x_l) - x_l|^2``
       likewise (clipped to ``[0, t]`` for HReLU);
    3. with labels ``y``: among the current (copied) range and ``t_mse * (0.35 .. 3)`` for the
       activations, and the current and ``t_mse`` for the weights, keep the one with the lowest
       cross-entropy of the whole model on ``(x, y)``: the squared error is not what the network
       needs at 1-2 bits (measured on a full-precision VGG-small quantized to 2 bits without
       training: 50% test accuracy with ``t_mse``, 77% after this step; 4 bits: 92.1% / 92.6%
       against 93.8% full precision and 72.7% with the initial ``t = 1``).

    Use training data only (never the test set). Only ``OddLinearQuantizer`` /
    ``OddLinearWeight`` ranges change; Algorithm 1's encoder has the fixed range 1. Returns
    ``{"<layer>.input_quantizer.t" | "<layer>.weight_quantizer.t": chosen t (mean if per
    channel)}``. The model's training mode is restored.
    """
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError("calibrate_ranges: x must be a non-empty batch tensor [N, ...]")
    if y is not None and (not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1]):
        raise ValueError(
            f"calibrate_ranges: y must be a label tensor [{x.shape[0]}], got {getattr(y, 'shape', type(y))}"
        )
    was_training = model.training
    model.eval()

    def loss() -> float:
        return float(F.cross_entropy(model(x).double(), y.long()))  # type: ignore[union-attr]

    def pick(param: Tensor, candidates: list[Tensor]) -> None:
        best: tuple[float, Tensor] | None = None
        for c in candidates:
            param.copy_(c.to(param.dtype).reshape(param.shape))
            score = loss()
            if best is None or score < best[0]:
                best = (score, c)
        assert best is not None
        param.copy_(best[1].to(param.dtype).reshape(param.shape))

    chosen: dict[str, float] = {}
    try:
        for name, layer in mbit_layers(model).items():
            prefix = f"{name}." if name else ""
            wq, iq = layer.weight_quantizer, layer.input_quantizer
            if isinstance(wq, OddLinearWeight):
                t_mse = _mse_range(layer.weight, wq.bits, "symmetric", wq.per_channel)
                if wq.t.shape != t_mse.shape:
                    wq.t = nn.Parameter(t_mse.to(wq.t.dtype))
                if y is None:
                    wq.t.copy_(t_mse.to(wq.t.dtype))
                else:
                    pick(wq.t.data, [wq.t.detach().clone().double(), t_mse])
                chosen[prefix + "weight_quantizer.t"] = float(wq.t.mean())
            if isinstance(iq, OddLinearQuantizer):
                lower = "symmetric" if iq.activation == "htanh" else "zero"
                t_mse = _mse_range(_layer_input(model, layer, x), iq.bits, lower)[0]
                if y is None:
                    iq.t.copy_(t_mse.to(iq.t.dtype))
                else:
                    pick(
                        iq.t.data,
                        [iq.t.detach().clone().double()] + [t_mse * f for f in _CAL_FACTORS],
                    )
                chosen[prefix + "input_quantizer.t"] = float(iq.t)
    finally:
        model.train(was_training)
    return chosen


def _layer_input(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The input ``layer`` receives (its first call) when ``model`` runs on ``x``."""
    seen: list[Tensor] = []
    hook = layer.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
    try:
        model(x)
    finally:
        hook.remove()
    if not seen:
        raise ValueError(
            f"calibrate_ranges: layer {type(layer).__name__} is not called by the model's forward"
        )
    return seen[0]


def _few(items: Iterable[str], n: int = 6) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")

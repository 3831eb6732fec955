"""Fixed-point residual stream (issue 10 Sec. 3; bitflow's own, not a published method).

A Bi-Real unit ``x' = BN(BinConv(sign x)) + x`` keeps a real-valued stream. Here the stream is
held on a power-of-two grid, ``x = r 2^-f`` with an integer ``r`` saturated to ``b`` bits, so
that every value in the network is an integer and every sign is decided by integer arithmetic:

- :class:`FixedPointBN` replaces the BatchNorm after an integer-valued convolution (a
  ``BinaryConv2d`` with the unscaled ``"sign"`` weight quantizer, or ``Int8Conv2d`` with
  ``integer_output=True``): its output is ``r 2^-f`` with ``r = floor(BN(u) 2^f + 1/2)``.
  Rounding half *up* (``floor(z + 1/2)``) commutes with adding an integer (round-half-even does
  not: ``rne(2.5) + 1 = 3 != rne(3.5) = 4``), so rounding each branch and adding in integers is
  the same function as any other order of evaluation.
- :class:`StreamClamp` saturates the sum of the branches to ``[-2^(b-1), 2^(b-1) - 1] 2^-f``.

**Eval form (what the engine runs, bit for bit).** With ``s_c = gamma_c / sqrt(var_c + eps)``,
``A_c = s_c 2^f`` and ``B_c = (beta_c - mean_c s_c) 2^f``, the integer ``r`` of an accumulator
``u`` is ::

    r = floor((u m_c + b_c) / 2^S),   m_c = round(A_c 2^S),   b_c = round((B_c + 1/2) 2^S)

(``S = SHIFT = 24``), evaluated in int64 both by :meth:`FixedPointBN.forward` in eval mode and
by the engine's ``requant_i32`` op, from the same :meth:`FixedPointBN.fixed_point` integers.
It differs from ``floor(A_c u + B_c + 1/2)`` only when that real value lies within
``(|u| + 1) 2^-S`` of an integer (the two roundings of ``m_c``, ``b_c``); training uses the
float form with a straight-through estimator (``d r / d z = 1``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SHIFT = 24  # S: the binary point of the requantization multipliers m_c, b_c
_INT64_HEADROOM = 2**62  # |u m + b| must stay below this (int64 with one bit to spare)


class StreamClamp(nn.Module):
    """Saturate the residual stream to ``bits``-bit integers times ``2^-frac``."""

    def __init__(self, frac: int = 8, bits: int = 16) -> None:
        super().__init__()
        if not 2 <= bits <= 24:
            raise ValueError(f"bits must be in [2, 24] (exact in float32), got {bits}")
        if not 0 <= frac <= 20:
            raise ValueError(f"frac must be in [0, 20], got {frac}")
        self.frac, self.bits = int(frac), int(bits)

    @property
    def lo(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def hi(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def forward(self, x: Tensor) -> Tensor:
        s = 2.0**-self.frac
        return x.clamp(self.lo * s, self.hi * s)

    def extra_repr(self) -> str:
        return f"frac={self.frac}, bits={self.bits}"


class _FloorHalfUpSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: Tensor) -> Tensor:  # type: ignore[override]
        return torch.floor(z + 0.5)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: Tensor) -> Tensor:  # type: ignore[override]
        return g


class FixedPointBN(nn.BatchNorm2d):
    """BatchNorm2d whose output is on the stream grid ``r 2^-frac`` (see the module docstring).

    Its input must be integer-valued (accumulators). Training: ``r = floor(BN(u) 2^f + 1/2)``
    (batch statistics, STE); eval: the exact int64 form ``floor((u m + b) / 2^S)``.
    """

    #: Eval mode computes the exact int64 form (what the engine runs) on integer accumulators.
    #: ``False`` (real mode, :func:`bitflow.nn.set_real_mode`, whose convolutions are real-valued;
    #: also the frozen distillation teacher, :func:`bitflow.train.trainer._warmup_teacher`): the
    #: float form ``floor(BN(u) 2^f + 1/2)`` with the running statistics, which on integer ``u``
    #: differs from the exact one only where ``BN(u) 2^f + 1/2`` lies within float32 rounding (and
    #: ``(|u| + 1) 2^-S``) of an integer, and runs as one fused elementwise op instead of ~10
    #: int64 passes with host synchronizations (a teacher forward of ``bireal_resnet20
    #: residual=int``, batch 64, one thread: 440 ms in the exact form, as long as the student's
    #: forward and backward). Not stored in checkpoints: a loaded model evaluates exactly.
    exact: bool = True

    def __init__(self, num_features: int, frac: int = 8, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        if not 0 <= frac <= 20:
            raise ValueError(f"frac must be in [0, 20], got {frac}")
        self.frac = int(frac)

    def fixed_point(self) -> tuple[Tensor, Tensor]:
        """``(m, b)``: int64 per-channel multipliers and offsets with binary point ``SHIFT``."""
        if self.running_mean is None or self.running_var is None:
            raise ValueError("FixedPointBN needs running statistics (track_running_stats=True)")
        f64 = torch.float64
        var = self.running_var.detach().to(f64)
        mean = self.running_mean.detach().to(f64)
        n = self.num_features
        gamma = (
            self.weight.detach().to(f64) if self.weight is not None else torch.ones(n, dtype=f64)
        )
        beta = self.bias.detach().to(f64) if self.bias is not None else torch.zeros(n, dtype=f64)
        s = gamma / torch.sqrt(var + float(self.eps))
        a = s * 2.0**self.frac
        bb = (beta - mean * s) * 2.0**self.frac
        if not (torch.isfinite(a).all() and torch.isfinite(bb).all()):
            raise ValueError("FixedPointBN: non-finite BatchNorm parameters")
        m = torch.round(a * 2.0**SHIFT)
        b = torch.round((bb + 0.5) * 2.0**SHIFT)
        if m.abs().max() >= 2.0**52 or b.abs().max() >= 2.0**61:
            raise ValueError(
                "FixedPointBN: BatchNorm scale or shift too large for the int64 fixed point"
            )
        return m.to(torch.int64), b.to(torch.int64)

    def requantize(self, u: Tensor) -> Tensor:
        """The integer ``r`` of integer-valued accumulators ``u`` ``[N, C, H, W]`` (eval form)."""
        m, b = self.fixed_point()
        ui = torch.round(u.detach()).to(torch.int64)
        umax = int(ui.abs().max()) if ui.numel() else 0
        if umax * int(m.abs().max()) + int(b.abs().max()) >= _INT64_HEADROOM:
            raise ValueError(f"FixedPointBN: |u| = {umax} overflows the int64 requantization")
        acc = ui * m.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
        return acc >> SHIFT  # arithmetic shift of int64: floor division by 2^SHIFT

    def forward(self, u: Tensor) -> Tensor:
        # float32 whatever autocast made the accumulators (a bf16 convolution): the BatchNorm,
        # the rounding to the 2^-f grid and the stream stay float32 (in bf16 the grid values
        # |r| < 2^15 would keep 8 significant bits)
        u = u.float()
        scale = 2.0**-self.frac
        if self.training or not self.exact:
            y = super().forward(u)  # eval mode: the running statistics
            return _FloorHalfUpSTE.apply(y * 2.0**self.frac) * scale  # type: ignore[no-any-return]
        return self.requantize(u).to(torch.float32) * scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, frac={self.frac}"


__all__ = ["SHIFT", "FixedPointBN", "StreamClamp"]

"""``ties`` / ``float_ties``: the points where PyTorch's own float32 BatchNorm disagrees with the
exact BatchShift rule, counted by the converter and reported by ``verify``.

BatchNorm statistics are constructed so that every channel's exact threshold ``tau`` lies within
a float32 rounding of a chosen point (an integer ``k_c`` for the binary conv, a float ``t_c``
for the float first layer): there PyTorch's ``x * (gamma/s) + (beta - mu gamma/s)`` in float32
and the exact ``sign(gamma (x - mu) + beta s)`` may disagree. The oracle is independent of the
converter: it evaluates the BatchNorm module itself on every reachable input (every integer in
``[-K, K]`` for a binary conv of fan-in ``K``; every float32 within 512 ulps of ``t_c`` for the
float layer, whose window edges must agree) and decides the exact sign with rational arithmetic
(``a + b sqrt(v)`` with rational ``a, b, v`` compared by squaring, no rounding at all).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from bitflow.convert import convert, verify
from bitflow.nn import BinaryConv2d, BinaryLinear

C1, C2 = 16, 24  # channels of the float first layer and of the binary conv
K = 9 * C1  # fan-in of the 3x3 binary conv: reachable outputs are the integers in [-K, K]


class TieNet(nn.Module):
    in_channels, image_size = 1, 6

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, C1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(C1)
        self.b1 = BinaryConv2d(
            C1, C2, 3, padding=1, bias=False, weight_quantizer="sign"
        )  # BN input: x * 1
        self.bn2 = nn.BatchNorm2d(C2)
        self.fc = BinaryLinear(C2 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn2(self.b1(self.bn1(self.conv(x)))), 1))


def _exact_nonneg(
    gamma: float, beta: float, mu: float, var: float, eps: float, x: Fraction
) -> bool:
    """``gamma (x - mu) + beta sqrt(var + eps) >= 0`` exactly (all float32 inputs are rationals;
    eps is the module's Python float, converted exactly as PyTorch uses it in float32)."""
    a = Fraction(gamma) * (x - Fraction(mu))
    b = Fraction(beta)
    v = Fraction(var) + Fraction(eps)
    if a >= 0 and b >= 0:
        return True
    if a <= 0 and b <= 0:
        return a == 0 and b == 0 or (a == 0 and b == 0)
    # opposite signs: compare a^2 with b^2 v
    if a > 0:  # b < 0
        return a * a >= b * b * v
    return b * b * v >= a * a  # a < 0 < b


def _bn_f32(bn: nn.BatchNorm2d) -> tuple[np.ndarray, ...]:
    return tuple(
        t.detach().numpy().astype(np.float32)
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    )


def _torch_nonneg(bn: nn.BatchNorm2d, xs: np.ndarray) -> np.ndarray:
    """PyTorch's decisions ``BN(x) >= 0`` for ``xs [P, C]`` (point p of channel c), evaluated on
    the model's own layout ``[P, C, 6, 6]`` (every pixel of a channel holds the same value)."""
    t = (
        torch.from_numpy(np.ascontiguousarray(xs, np.float32))[:, :, None, None]
        .expand(-1, -1, 6, 6)
        .contiguous()
    )
    with torch.no_grad():
        y = bn.eval()(t)
    assert bool((y == y[:, :, :1, :1]).all())  # one value per (point, channel)
    return (y[:, :, 0, 0] >= 0).numpy()


def _construct(seed: int, wide: bool = False) -> TieNet:
    """BN statistics whose exact thresholds sit on chosen points (see the module docstring).

    ``wide``: the float layer's thresholds near 0 (|t_c| in [0.005, 0.02]) behind large
    ``|beta| s / gamma`` (|beta| in [2, 4]), so ``mu ~ beta s / gamma`` is large: PyTorch's
    ``(x - mu) invstd gamma + beta`` cancels to ~0 with an absolute error of a few ``u |beta|``
    (~5e-7) while the float32 spacing at ``t_c`` is ~1e-9: disagreements spread over hundreds
    of ulps, far beyond the converter's first window of 8 (``convert/_ties.py``)."""
    torch.manual_seed(seed)
    net = TieNet().eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for bn, n, centre in ((net.bn1, C1, "float"), (net.bn2, C2, "int")):
            gamma = rng.uniform(0.3, 2.0, n) * rng.choice([-1.0, 1.0], n)
            beta = rng.uniform(-1.0, 1.0, n)
            var = rng.uniform(0.5, 4.0, n)
            s = np.sqrt(var.astype(np.float32).astype(np.float64) + bn.eps)
            k = rng.integers(-20, 21, n) if centre == "int" else rng.uniform(-1.0, 1.0, n)
            if wide and centre == "float":
                beta = rng.uniform(2.0, 4.0, n) * rng.choice([-1.0, 1.0], n)
                k = rng.uniform(0.005, 0.02, n) * rng.choice([-1.0, 1.0], n)
            # tau = mu - beta s / gamma = k  =>  mu = k + beta s / gamma (rounded to float32)
            mu = k + beta.astype(np.float32) * s / gamma.astype(np.float32)
            bn.weight.copy_(torch.from_numpy(gamma.astype(np.float32)))
            bn.bias.copy_(torch.from_numpy(beta.astype(np.float32)))
            bn.running_var.copy_(torch.from_numpy(var.astype(np.float32)))
            bn.running_mean.copy_(torch.from_numpy(mu.astype(np.float32)))
    return net


def _exact_column(bn: nn.BatchNorm2d, c: int, xs: list[Fraction]) -> np.ndarray:
    """The exact rule of channel ``c`` (the float32 parameters, as rationals) at each of ``xs``."""
    gamma, beta, mu, var = _bn_f32(bn)
    return np.array(
        [
            _exact_nonneg(float(gamma[c]), float(beta[c]), float(mu[c]), float(var[c]), bn.eps, x)
            for x in xs
        ]
    )


def _int_ties_oracle(bn: nn.BatchNorm2d) -> int:
    xs = np.arange(-K, K + 1, dtype=np.float32)
    got = _torch_nonneg(bn, np.repeat(xs[:, None], C2, 1))
    total = 0
    for c in range(C2):
        # the exact rule is monotone in x: find where it changes, compare everywhere
        exact = _exact_column(bn, c, [Fraction(int(x)) for x in xs])
        total += int((exact != got[:, c]).sum())
    return total


def _float_ties_oracle(bn: nn.BatchNorm2d, window: int = 128) -> int:
    gamma, beta, mu, var = _bn_f32(bn)
    s = np.sqrt(var.astype(np.float64) + bn.eps)
    tau = (mu.astype(np.float64) - beta.astype(np.float64) * s / gamma.astype(np.float64)).astype(
        np.float32
    )
    # column c: the 2 * window + 1 consecutive float32 values centred on float32(tau_c)
    ys = np.empty((2 * window + 1, C1), np.float32)
    ys[window] = tau
    for i in range(1, window + 1):
        ys[window + i] = np.nextafter(ys[window + i - 1], np.float32(np.inf))
        ys[window - i] = np.nextafter(ys[window - i + 1], np.float32(-np.inf))
    got = _torch_nonneg(bn, ys)
    total = 0
    for c in range(C1):
        exact = _exact_column(bn, c, [Fraction(float(y)) for y in ys[:, c]])
        bad = exact != got[:, c]
        assert not bad[0] and not bad[-1], "the window must contain every disagreement"
        total += int(bad.sum())
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_ties_and_float_ties_equal_an_exact_count(seed: int) -> None:
    net = _construct(seed)
    g = convert(net)
    want_ties = _int_ties_oracle(net.bn2)
    want_float = _float_ties_oracle(net.bn1)
    ops = {op.type: op for op in g.ops}
    assert ops["threshold_bits"].attrs["ties"] == want_ties
    assert ops["threshold_f32_bits"].attrs["float_ties"] == want_float
    r = verify(net, g, np.random.default_rng(seed).random((4, 1, 6, 6), dtype=np.float32))
    assert (r["ties"], r["float_ties"]) == (want_ties, want_float)
    # the construction is not vacuous (seed 0: 6 ties, 11 float ties; seed 1: 7 and 20)
    assert want_ties > 0 and want_float > 0


def test_float_ties_far_from_the_threshold_are_all_counted() -> None:
    """The converter's window around T must grow until it holds every disagreement: here they
    reach hundreds of ulps from T (the oracle's 2,048-ulp window still has agreeing edges)."""
    net = _construct(0, wide=True)
    g = convert(net)
    want = _float_ties_oracle(net.bn1, window=2048)
    (op,) = [op for op in g.ops if op.type == "threshold_f32_bits"]
    assert op.attrs["float_ties"] == want
    # not vacuous: more disagreements than the first window (2 * 8 + 1 points around T per
    # channel) could hold (seed 0: 2,367)
    assert want > (2 * 8 + 1) * C1

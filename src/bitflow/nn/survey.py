"""The survey's binarization methods as quantizers and layers (Qin et al. 2020, "Binary neural
networks: a survey", Sections 3-4; issue 12).

Sign convention everywhere: ``sign(0) = +1`` (survey Eq. 3). Each autograd function below
documents its forward rule, its gradient rule and where the equation comes from: the survey
when it gives one, otherwise the method's own paper (said so explicitly).

Registered by name (``bitflow.nn.quantizers.get(name)``), usable as ``input_quantizer=`` /
``weight_quantizer=`` of :class:`~bitflow.nn.BinaryConv2d` / :class:`~bitflow.nn.BinaryLinear`:

=====================  ===========================================================  =========
name                   method                                                       kind
=====================  ===========================================================  =========
``bc_stochastic``      BinaryConnect, stochastic weights (survey Eq. 6-7)           weight
``dorefa_w1/2/4``      DoReFa-Net k-bit weights (DoReFa Eq. 9, 11)                  weight
``dorefa_a1/2/4``      DoReFa-Net k-bit activations in [0, 1] (DoReFa Eq. 12)       input
``pact_a2/4``          PACT clipped k-bit activations, learned alpha (PACT Eq. 1-3) input
``signswish``          BNN+ SignSwish gradient of sign (BNN+ Eq. 9-10)              input
``dsq``/``dsq_w``      DSQ at 1 bit, learned alpha (survey Eq. 14; DSQ Eq. 3-6)     both
``ede``/``irnet``      IR-Net: EDE gradient; Libra-PB weights (IR-Net Eq. 9-13)     both
``selfbin``(``_w``)    self-binarizing tanh(v x) -> sign (Lahoud et al. 2019)       both
``proxquant``          ProxQuant: real weights in training, prox step toward +-1    weight
=====================  ===========================================================  =========

Layers and modules with per-channel parameters (built by :mod:`bitflow.methods` when it applies
a method to a model): :class:`RSign` and :class:`RPReLU` (ReActNet), :class:`BnnPlusWeight`
(BNN+ learned scales), :class:`XnorPPConv2d` (XNOR-Net++ factorized scales),
:class:`AbcConv2d` (ABC-Net, M weight bases x N activation bases).

Deployability: a quantizer with ``bits == 1`` whose eval-mode forward is exactly ``sign`` (an
:class:`~bitflow.nn.quantizers.InputQuantizer` / ``WeightQuantizer``) converts through the
existing xnor-popcount + threshold path. The ones with other arithmetic are deliberately *not*
``InputQuantizer`` subclasses or have ``bits > 1``, so the converter refuses them with
:class:`~bitflow.convert.UnsupportedLayerError` instead of silently dropping their arithmetic;
:mod:`bitflow.methods` says exactly which engine op each would need.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import quantizers as Q
from .functional import approx_sign, identity_ste, sign
from .layers import BinaryConv2d

# ----------------------------------------------------------------------------- STEs


class SignSwishSTE(torch.autograd.Function):
    """BNN+ (Darabi et al. 2018; the survey names it, Sec. 3.2.3, without an equation: from the
    BNN+ paper). forward ``q = sign(x)``; backward the derivative of the SignSwish
    ``SS_b(x) = 2 sigma(b x) [1 + b x (1 - sigma(b x))] - 1``::

        dSS_b/dx = b (2 - b x tanh(b x / 2)) / (1 + cosh(b x))
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        b = ctx.beta
        bx = b * x
        # cosh overflows to inf for |bx| > ~89 in float32: the derivative is 0 there, and
        # b (2 - bx tanh) / inf = 0, so the expression stays finite (no NaN: tanh is bounded)
        d = b * (2.0 - bx * torch.tanh(bx / 2.0)) / (1.0 + torch.cosh(bx))
        return grad * d, None


class EdeSTE(torch.autograd.Function):
    """IR-Net's Error Decay Estimator (Qin et al. 2020, IR-Net Eq. 12-13; the survey describes
    it in words, Sec. 3.2.3). forward ``q = sign(x)``; backward ``g(x) = k t (1 - tanh^2(t x))``,
    the derivative of ``k tanh(t x)``, with ``t`` and ``k`` set by the training schedule
    (:func:`ede_schedule`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, t: float, k: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.t, ctx.k = t, k
        return sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        # 1 - tanh^2(z) = 1 / cosh^2(z), without the cancellation of 1 - tanh^2 in float32
        # (cosh overflows to inf for |z| > ~89, where the derivative is 0 anyway)
        return grad * (ctx.k * ctx.t / torch.cosh(ctx.t * x) ** 2), None, None


def ede_schedule(progress: float, t_min: float = 0.1, t_max: float = 10.0) -> tuple[float, float]:
    """IR-Net Eq. 13: ``t = T_min 10^(i/N log10(T_max/T_min))``, ``k = max(1/t, 1)`` with
    ``i/N = progress`` in [0, 1] (T_min = 0.1, T_max = 10 as in IR-Net)."""
    p = min(max(float(progress), 0.0), 1.0)
    t = t_min * 10.0 ** (p * math.log10(t_max / t_min))
    return t, max(1.0 / t, 1.0)


class PactSTE(torch.autograd.Function):
    """PACT (Choi et al. 2018; survey Sec. 3.2.1 describes it, equations from the PACT paper,
    Eq. 1-3). forward ``y = clip(x, 0, a)``, ``y_q = round(y n / a) a / n`` with ``n = 2^k - 1``;
    backward (STE on the rounding) ``dy_q/dx = 1[0 <= x < a]``, ``dy_q/da = 1[x >= a]``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, levels: int) -> Tensor:
        ctx.save_for_backward(x, alpha)
        y = torch.minimum(x.clamp_min(0.0), alpha)
        return torch.round(y * levels / alpha) * alpha / levels

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, alpha = ctx.saved_tensors
        gx = grad * ((x >= 0) & (x < alpha)).to(grad.dtype)
        ga = (grad * (x >= alpha).to(grad.dtype)).sum().reshape(alpha.shape)
        return gx, ga, None


class RoundSTE(torch.autograd.Function):
    """``round`` forward, identity backward (the STE of DoReFa's ``quantize_k``, DoReFa Eq. 5)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


def quantize_k(r: Tensor, k: int) -> Tensor:
    """DoReFa Eq. 5: ``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)`` for ``r`` in [0, 1], STE."""
    n = float(2**k - 1)
    return RoundSTE.apply(r * n) / n  # type: ignore[no-any-return]


class ClippedIdentity(torch.autograd.Function):
    """``clip(x, 0, 1)`` whose gradient is ``1[0 <= x <= 1]`` (DoReFa's activation clip)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * ((x >= 0) & (x <= 1)).to(grad.dtype)


class StochasticSignSTE(torch.autograd.Function):
    """BinaryConnect's stochastic binarization (survey Eq. 6-7): ``w_b = +1`` with probability
    ``p = hard_sigmoid(w / H) = clip((w / H + 1) / 2, 0, 1)``, else -1; backward identity
    (BinaryConnect propagates the gradient of ``w_b`` to ``w`` unchanged and clips ``w`` to
    ``[-H, H]`` after the update: the layer's ``weight_clip = H``). ``H = 1`` is the survey's
    Eq. 7; BinaryConnect's own layers use Glorot's ``H`` (:class:`StochasticBinaryConnect`).
    ``u`` is a uniform [0, 1) sample of ``w``'s shape: ``w_b = +1 iff u < p``."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, u: Tensor, h: float = 1.0) -> Tensor:
        p = ((w / h + 1.0) / 2.0).clamp(0.0, 1.0)
        return torch.where(u < p, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


# ----------------------------------------------------------------------------- input quantizers


@Q.register("signswish")
class SignSwish(Q.InputQuantizer):
    """BNN+: sign forward, SignSwish-derivative backward (:class:`SignSwishSTE`). ``beta`` is a
    hyper-parameter in BNN+; we use 5, which makes the gradient at 0 equal to ``beta`` = 5
    (:meth:`peak`) and about 0.05 at ``|x| = 1`` (so, like the clipped STE, it fades beyond 1)."""

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"SignSwish beta must be > 0, got {beta}")
        self.beta = float(beta)

    @staticmethod
    def peak(beta: float) -> float:
        """``dSS_b/dx`` at 0: ``b (2 - 0) / (1 + 1) = b``."""
        return beta

    def forward(self, x: Tensor) -> Tensor:
        return SignSwishSTE.apply(x, self.beta)  # type: ignore[no-any-return]


class _Annealed:
    """Mixin: a quantizer whose gradient/shape depends on the training progress in [0, 1]
    (set by :mod:`bitflow.methods` after every optimizer step, stored as a buffer so that a
    checkpoint resumes with the same value)."""

    progress: Tensor

    def set_progress(self, p: float) -> None:
        self.progress.fill_(min(max(float(p), 0.0), 1.0))


@Q.register("ede")
class EdeSign(_Annealed, Q.InputQuantizer):
    """IR-Net activations: sign forward, EDE backward (:class:`EdeSTE`, :func:`ede_schedule`)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("progress", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        t, k = ede_schedule(float(self.progress))
        return EdeSTE.apply(x, t, k)  # type: ignore[no-any-return]


def selfbin_v(progress: float, v0: float = 1.0, v_max: float = 1000.0) -> float:
    """Self-binarizing networks (Lahoud et al. 2019; survey Sec. 3.2.3 names tanh with a
    parameter v, no equation): the slope ``v`` of ``tanh(v x)`` grows geometrically from ``v0``
    to ``v_max`` over training (``v = v0 (v_max / v0)^progress``). At ``v = 1000`` a value
    ``|x| >= 0.004`` gives ``|tanh(v x)| > 0.9993``, so the network has become binary."""
    p = min(max(float(progress), 0.0), 1.0)
    return float(v0 * (v_max / v0) ** p)


@Q.register("selfbin")
class SelfBinarizing(_Annealed, Q.InputQuantizer):
    """Self-binarizing activations: ``tanh(v x)`` while training (``v`` annealed, :func:`selfbin_v`,
    true gradient ``v (1 - tanh^2(v x))``), ``sign(x)`` in eval mode (the network the paper
    deploys, and the one validation measures)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("progress", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return sign(x)
        return torch.tanh(selfbin_v(float(self.progress)) * x)


def dsq_phi(x: Tensor, alpha: Tensor) -> Tensor:
    """DSQ at 1 bit on the range ``[l, u] = [-1, 1]`` (survey Eq. 14; the constants from the DSQ
    paper, Gong et al. 2019, Eq. 3-5): one interval of width ``Delta = (u - l)/(2^1 - 1) = 2``
    centred at ``m = 0``, ``k = log(2/alpha - 1) / Delta`` and ``s = 1 / tanh(k Delta / 2)``
    ``= 1 / (1 - alpha)``, so that ``phi(+-1) = +-1``::

        phi(x) = s tanh(k clip(x, -1, 1)),   alpha in (0, 0.5] (DSQ's constraint)
    """
    a = alpha.clamp(1e-4, 0.5)
    k = torch.log(2.0 / a - 1.0) / 2.0
    s = 1.0 / torch.tanh(k)  # k * Delta / 2 = k
    return s * torch.tanh(k * x.clamp(-1.0, 1.0))


def _dsq(x: Tensor, alpha: Tensor) -> Tensor:
    """Forward ``sign(phi(x)) = sign(x)`` (DSQ Eq. 6 binarizes the soft value in the forward pass),
    backward the gradient of ``phi`` with respect to ``x`` and ``alpha``."""
    phi = dsq_phi(x, alpha)
    return sign(x) + (phi - phi.detach())


@Q.register("dsq")
class DsqSign(Q.InputQuantizer):
    """DSQ activations at 1 bit: learned characteristic ``alpha`` (init 0.2, DSQ's value)."""

    def __init__(self, alpha: float = 0.2) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: Tensor) -> Tensor:
        return _dsq(x, self.alpha)


class DoReFaAct(nn.Module):
    """DoReFa activations (DoReFa Eq. 12): ``quantize_k(clip(x, 0, 1))``, values in
    ``{0, 1/(2^k-1), ..., 1}``; gradient ``1[0 <= x <= 1]`` (STE). Even at ``k = 1`` the values are
    ``{0, 1}``, not ``{-1, +1}``. Deliberately not an ``InputQuantizer`` (the converter must not
    read it as a sign): it deploys as uint8 levels ``q = L a`` (``threshold_u8``) into the exact
    +-1-weight uint8 conv (``conv2d_u8b1``, :mod:`bitflow.convert.converter`)."""

    name = ""
    k = 1

    def __init__(self) -> None:
        super().__init__()
        self.bits = self.k

    def forward(self, x: Tensor) -> Tensor:
        return quantize_k(ClippedIdentity.apply(x), self.k)


class PactAct(nn.Module):
    """PACT k-bit activations with one learned clipping level ``alpha`` per layer (init 3.0: the
    inputs are BatchNorm outputs, ~N(0, 1); PACT's own init is 10 for unnormalized ReLU inputs).
    Not an ``InputQuantizer`` (k-bit unsigned values): deploys like :class:`DoReFaAct` with the
    levels ``q = a L / alpha``."""

    name = ""
    k = 2

    def __init__(self, alpha: float = 3.0) -> None:
        super().__init__()
        self.bits = self.k
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: Tensor) -> Tensor:
        return PactSTE.apply(x, self.alpha.abs().clamp_min(1e-3), 2**self.k - 1)  # type: ignore[no-any-return]


for _k in (1, 2, 4):
    Q.register(f"dorefa_a{_k}")(
        type(f"DoReFaAct{_k}", (DoReFaAct,), {"k": _k, "__doc__": DoReFaAct.__doc__})
    )
for _k in (2, 4):
    Q.register(f"pact_a{_k}")(
        type(f"PactAct{_k}", (PactAct,), {"k": _k, "__doc__": PactAct.__doc__})
    )


# ----------------------------------------------------------------------------- weight quantizers


@Q.register("bc_stochastic")
class StochasticBinaryConnect(Q.WeightQuantizer):
    """BinaryConnect stochastic weights (survey Eq. 6-7, :class:`StochasticSignSTE`) while
    training; deterministic ``sign(w)`` in eval mode (BinaryConnect's test-time rule, and the
    binary network that is deployed). ``h``: the latent weights' range ``[-h, h]`` (the layer
    clips to it), ``P(w_b = +1) = clip((w / h + 1) / 2, 0, 1)``; 1 for the survey's Eq. 7, Glorot's
    ``sqrt(1.5 / (fan_in + fan_out))`` in the registered method (``bitflow.methods``, option
    ``glorot``). Draws use the global torch RNG, which the trainer seeds per epoch."""

    def __init__(self, h: float = 1.0) -> None:
        super().__init__()
        if not h > 0:
            raise ValueError(f"h (the latent weights' range) must be positive, got {h}")
        self.h = float(h)

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self.training:
            return identity_ste(w), None
        return StochasticSignSTE.apply(w, torch.rand_like(w), self.h), None

    def extra_repr(self) -> str:
        return f"h={self.h:.6g}"


class _DoReFaWeight(Q.WeightQuantizer):
    """DoReFa weights (DoReFa Eq. 9 for k = 1, Eq. 11 for k > 1).

    k = 1: ``w_q = sign(w) E(|w|)`` with ``E(|w|)`` the mean over the whole layer, a constant in
    the backward pass (DoReFa: ``dc/dw = dc/dw_q``); decomposed as ``(sign(w), alpha)`` so it is
    a deployable 1-bit weight.
    k > 1: ``w_q = 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` (gradient through tanh,
    STE on the rounding)."""

    k = 1

    def __init__(self) -> None:
        super().__init__()
        self.bits = self.k
        self.has_scale = self.k == 1

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.k == 1:
            e = w.detach().abs().mean().expand(w.shape[0]).clone()
            return identity_ste(w), e
        t = torch.tanh(w)
        r = t / (2.0 * t.detach().abs().max().clamp_min(1e-12)) + 0.5
        return 2.0 * quantize_k(r, self.k) - 1.0, None


for _k in (1, 2, 4):
    Q.register(f"dorefa_w{_k}")(
        type(f"DoReFaWeight{_k}", (_DoReFaWeight,), {"k": _k, "__doc__": _DoReFaWeight.__doc__})
    )


@Q.register("irnet")
class LibraWeight(_Annealed, Q.WeightQuantizer):
    """IR-Net Libra Parameter Binarization (IR-Net Eq. 9-11; survey Sec. 3.2.3 in words):

        w^ = (w - mean(w)) / std(w)         per output channel (balanced, standardized)
        Q(w^) = sign(w^) << s,  s = round(log2(mean |w^|))   (a power-of-two scale per channel)

    Backward: EDE (:class:`EdeSTE`) on the sign, through the standardization to ``w``; the
    shift ``s`` is a constant. Deployable: ``sign(w^)`` is +-1 and ``2^s > 0`` a channel scale."""

    has_scale = True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("progress", torch.zeros(()))

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        flat = w.flatten(1)
        wc = flat - flat.mean(dim=1, keepdim=True)
        wh = (wc / wc.std(dim=1, keepdim=True).clamp_min(1e-12)).view_as(w)
        t, k = ede_schedule(float(self.progress))
        b = EdeSTE.apply(wh, t, k)
        s = torch.round(torch.log2(wh.detach().abs().flatten(1).mean(dim=1).clamp_min(1e-12)))
        return b, torch.pow(2.0, s)


@Q.register("dsq_w")
class DsqWeight(Q.WeightQuantizer):
    """DSQ weights at 1 bit (as :class:`DsqSign`, on the latent weights clipped to [-1, 1])."""

    def __init__(self, alpha: float = 0.2) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return _dsq(w, self.alpha), None


@Q.register("selfbin_w")
class SelfBinarizingWeight(_Annealed, Q.WeightQuantizer):
    """Self-binarizing weights: ``tanh(v w)`` while training, ``sign(w)`` in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("progress", torch.zeros(()))

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self.training:
            return identity_ste(w), None
        return torch.tanh(selfbin_v(float(self.progress)) * w), None


def proxquant_prox(w: Tensor, lam: float) -> Tensor:
    """ProxQuant's binary proximal operator (Bai et al. 2019, Eq. 9; the survey, Sec. 3.2.3,
    gives no equation) for the W-shaped regularizer ``R(w) = min(|w - 1|, |w + 1|)``::

        prox_lam(w) = sign(w) + sign(w - sign(w)) max(|w - sign(w)| - lam, 0)

    (soft thresholding of the distance to the nearest of +-1; ``sign(0) = +1``)."""
    s = sign(w)
    d = w - s
    return s + torch.sign(d) * (d.abs() - lam).clamp_min(0.0)


@Q.register("proxquant")
class ProxQuantWeight(_Annealed, Q.WeightQuantizer):
    """ProxQuant: training runs on the real weights ``w`` (forward ``w`` itself) and
    :mod:`bitflow.methods` applies :func:`proxquant_prox` after every optimizer step with a
    growing ``lam_t``; from ``progress >= hard_at`` (and always in eval mode) the forward uses
    ``sign(w)`` (the paper's final hard quantization, then BatchNorm/FC fine-tuning)."""

    hard_at = 0.9

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("progress", torch.zeros(()))

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self.training or float(self.progress) >= self.hard_at:
            return identity_ste(w), None
        return w, None


class BnnPlusWeight(Q.WeightQuantizer):
    """BNN+ weights (BNN+ paper, Sec. 3; the survey names it without equations): ``b = sign(w)``
    with the SignSwish-derivative backward, times a learned per-output-channel scale ``alpha``
    (initialized to ``mean |w_o|``). The regularizer ``R1(w) = |alpha - |w||`` (or ``R2`` squared)
    is added to the loss by :func:`bnnplus_regularizer`. Deployable: ``alpha`` is a channel
    scale of any sign (the converter flips a channel with ``alpha < 0``: ``alpha sign(w) =
    (-alpha)(-sign(w))``, exact; ``alpha = 0`` is a constant channel)."""

    has_scale = True

    def __init__(self, out_channels: int, beta: float = 5.0, init: Tensor | None = None) -> None:
        super().__init__()
        self.beta = float(beta)
        a = (
            torch.full((out_channels,), 0.5)
            if init is None
            else init.detach().clone().reshape(out_channels)
        )
        self.alpha = nn.Parameter(a)

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return SignSwishSTE.apply(w, self.beta), self.alpha


def bnnplus_regularizer(w: Tensor, alpha: Tensor, kind: str = "l1") -> Tensor:
    """BNN+ ``R1 = sum |alpha_o - |w_{o,i}||`` (``kind="l1"``) or ``R2 = sum (alpha_o - |w|)^2``."""
    d = alpha.view((-1,) + (1,) * (w.dim() - 1)) - w.abs()
    if kind == "l1":
        return d.abs().sum()
    if kind == "l2":
        return (d * d).sum()
    raise ValueError(f"BNN+ regularizer kind must be 'l1' or 'l2', got {kind!r}")


# ----------------------------------------------------------------------------- ReActNet


class RSign(nn.Module):
    """ReActNet's RSign (Liu et al. 2020, ReActNet Eq. 1; post-survey): ``sign(x_c - beta_c)``
    with a learned per-channel threshold ``beta`` and Bi-Real's ApproxSign gradient (ReActNet
    keeps it), so ``dL/dbeta_c = -sum dL/dx_c``.

    Not an ``InputQuantizer``: the converter must not mistake it for a plain sign. It reads
    ``beta`` as a per-channel boundary of the layer's input threshold: ``fl(u - beta) >= 0`` is
    exactly ``u >= beta`` in IEEE float32, so the decision is ``BN(z) >= beta_c`` (BatchShift
    with a boundary), on a BN chain, a float residual stream (``threshold_f32_bits`` at
    ``beta``) or the fixed-point stream ``r 2^-f`` (``r >= ceil(beta 2^f)``)."""

    name = "rsign"
    bits = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return approx_sign(x - self.beta.view(shape))


class RPReLU(nn.Module):
    """ReActNet's RPReLU (ReActNet Eq. 3): ``f(x_c) = PReLU_c(x_c - gamma_c) + zeta_c``, i.e.
    ``x - gamma + zeta`` for ``x > gamma`` and ``slope_c (x - gamma) + zeta`` otherwise
    (slope init 0.25 as PyTorch's PReLU; gamma, zeta init 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.zeta = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), 0.25))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return F.prelu(x - self.gamma.view(shape), self.slope) + self.zeta.view(shape)


# ----------------------------------------------------------------------------- XNOR-Net++, ABC-Net


class XnorPPConv2d(BinaryConv2d):
    """XNOR-Net++ (Bulat & Tzimiropoulos 2019; survey Sec. 3.2.1 in words, equations from the
    XNOR-Net++ paper, Eq. 4-6): the activation and weight scales are replaced by one learned
    factorized scale on the output, ``Y = (sign(X) (*) sign(W)) . Gamma`` with
    ``Gamma = alpha (x) beta (x) gamma``, ``alpha`` in R^O, ``beta`` in R^H_out, ``gamma`` in R^W_out
    (case 3 of the paper; learned by back-propagation, initialized to alpha = mean |W_o|, beta =
    gamma = 1). Binary weights without their own scale.

    Deployment: ``Gamma`` differs per output *position*, so the BatchShift threshold after it
    differs per position too: one exact integer threshold per (position, channel)
    (``threshold_bits_hw``; the converter's ``_to_bits_table``)."""

    def __init__(self, *args: Any, out_hw: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.bias is not None:
            raise ValueError(
                "XnorPPConv2d has no bias (pass bias=False; the scale Gamma replaces it, BatchNorm follows)"
            )
        wq = self.weight_quantizer
        if not isinstance(wq, Q.WeightQuantizer) or wq.has_scale:
            raise ValueError(
                "XnorPPConv2d needs an unscaled binary weight quantizer such as 'sign' (Gamma is the scale)"
            )
        h, w = out_hw
        self.scale_c = nn.Parameter(torch.ones(self.out_channels))
        self.scale_h = nn.Parameter(torch.ones(h))
        self.scale_w = nn.Parameter(torch.ones(w))

    def forward(self, x: Tensor) -> Tensor:
        # BinaryConv2d.forward: sign(X) (*) sign(W) (unscaled 'sign' weights, no bias), exact in float32
        y = super().forward(x)
        gamma = (
            self.scale_c.view(1, -1, 1, 1)
            * self.scale_h.view(1, 1, -1, 1)
            * self.scale_w.view(1, 1, 1, -1)
        )
        return y * gamma


def abc_shifts(m: int) -> Tensor:
    """ABC-Net Eq. 4: ``u_i = -1 + (i - 1) 2/(M - 1)`` for ``i = 1..M`` (``u = 0`` for M = 1)."""
    if m < 1:
        raise ValueError(f"ABC-Net needs M >= 1 bases, got {m}")
    if m == 1:
        return torch.zeros(1)
    return torch.tensor([-1.0 + i * 2.0 / (m - 1) for i in range(m)])


class AbcConv2d(BinaryConv2d):
    """ABC-Net (Lin et al. 2017; survey Sec. 3.2.1 in words, equations from the ABC-Net paper):

    weights (Eq. 2-5): ``W ~ sum_m a_m B_m``, ``B_m = sign(W - mean(W) + u_m std(W))`` (u_m:
    :func:`abc_shifts`), ``a`` the least-squares fit ``min ||vec(W) - B a||^2`` (recomputed every
    forward, a constant in the backward pass; STE ``dW = sum_m a_m dB_m``);
    activations (Eq. 6-9): ``R ~ sum_n b_n H_{v_n}(R)``, ``H_v(x) = 2 1[clip(x + v, 0, 1) >= 0.5] - 1``
    with learned shifts ``v_n`` (init ``v_n = 0.5 - u_n`` with ``u_n`` = :func:`abc_shifts` (N), so
    the N thresholds ``x >= 0.5 - v_n = u_n`` are spread over [-1, 1], where the BatchNorm'ed
    inputs live) and learned ``b_n`` (init 1/N); backward the gradient of ``2 clip(x + v, 0, 1) - 1``,
    i.e. ``2 1[0 <= x + v <= 1]`` (the STE of ABC-Net Eq. 7).
    ``conv(sum_n b_n A_n, sum_m a_m B_m) = sum_{m,n} a_m b_n conv(A_n, B_m)``: M x N binary
    convolutions at inference (here computed as one float convolution while training).
    Zero padding (``F.conv2d``'s) whatever ``pad_value`` says: a padded tap adds 0 to every branch.

    ``frac_bits`` (ours, not the paper's; default None = off): the branch weights ``a_m`` and
    ``b_n`` on the fixed-point grid ``2^-f`` (``a`` rounded after the least-squares fit, ``b``
    fake-quantized with a straight-through gradient), so that the M x N branch weights
    ``a_m b_n 2^(2f)`` are integers and the layer's sum is exact in int32.

    Deployment (:mod:`bitflow.convert._rules_survey`, ``abc_conv``): the N activation bases are
    N exact thresholds of the previous BatchNorm, then M x N ``bconv2d`` (one per (m, n)) and
    the weighted sum: ``requant_i32`` + ``add_i32`` (exact integers) when the branch weights are
    fixed point, else ``scale_bias`` + ``add_f32`` (float32; the decisions after it are
    near-threshold ones)."""

    def __init__(
        self,
        *args: Any,
        bases_w: int = 3,
        bases_a: int = 3,
        frac_bits: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["input_quantizer"] = None
        kwargs["weight_quantizer"] = None
        super().__init__(*args, **kwargs)
        self.bases_w, self.bases_a = int(bases_w), int(bases_a)
        if frac_bits is not None and not 0 <= int(frac_bits) <= 15:
            raise ValueError(f"ABC-Net frac_bits must be in [0, 15] or None, got {frac_bits}")
        self.frac_bits = None if frac_bits is None else int(frac_bits)
        self.register_buffer("u", abc_shifts(self.bases_w))
        self.shift_a = nn.Parameter(0.5 - abc_shifts(self.bases_a))
        self.scale_a = nn.Parameter(torch.full((self.bases_a,), 1.0 / self.bases_a))

    def _fixed(self, t: Tensor) -> Tensor:
        """``t`` on the grid ``2^-frac_bits`` (straight-through), or ``t`` itself when off."""
        if self.frac_bits is None:
            return t
        s = float(2**self.frac_bits)
        return torch.round(t.detach() * s) / s + (t - t.detach())  # forward: exactly the grid value

    def act_scales(self) -> Tensor:
        """The activation base weights ``b_n`` the forward uses (on the grid with ``frac_bits``)."""
        return self._fixed(self.scale_a)

    def weight_bases(self) -> tuple[Tensor, Tensor]:
        """``(B, a)``: ``B`` of shape ``[M, *W.shape]`` in {-1, +1} (STE), ``a`` of shape ``[M]``."""
        w = self.weight
        mean, std = w.detach().mean(), w.detach().std().clamp_min(1e-12)
        us: Tensor = self.u  # type: ignore[assignment]
        bs = torch.stack([identity_ste(w - mean + u * std) for u in us])
        with torch.no_grad():
            a = torch.linalg.lstsq(
                bs.flatten(1).T.double(), w.detach().flatten().double().unsqueeze(1)
            ).solution
        return bs, self._fixed(a.squeeze(1).to(w.dtype))

    def act_bases(self, x: Tensor) -> Tensor:
        """``[N, *x.shape]`` of ``H_{v_n}(x)`` in {-1, +1} with the clipped STE of ABC-Net Eq. 7."""
        out = []
        for v in self.shift_a:
            z = x + v
            h = sign(z - 0.5)  # 2 * 1[clip(z, 0, 1) >= 0.5] - 1 = sign(z - 0.5) (sign(0) = +1)
            clipped = z.clamp(0.0, 1.0)
            out.append(h.detach() + 2.0 * (clipped - clipped.detach()))
        return torch.stack(out)

    def forward(self, x: Tensor) -> Tensor:
        bs, a = self.weight_bases()
        w_hat = (a.view(-1, *([1] * (bs.dim() - 1))) * bs).sum(0)
        x_hat = (self.act_scales().view(-1, *([1] * x.dim())) * self.act_bases(x)).sum(0)
        y = F.conv2d(x_hat, w_hat, None, self.stride, self.padding, self.dilation, self.groups)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


__all__ = [
    "AbcConv2d",
    "BnnPlusWeight",
    "DoReFaAct",
    "DsqSign",
    "DsqWeight",
    "EdeSTE",
    "EdeSign",
    "LibraWeight",
    "PactAct",
    "PactSTE",
    "ProxQuantWeight",
    "RPReLU",
    "RSign",
    "SelfBinarizing",
    "SelfBinarizingWeight",
    "SignSwish",
    "SignSwishSTE",
    "StochasticBinaryConnect",
    "XnorPPConv2d",
    "abc_shifts",
    "bnnplus_regularizer",
    "dsq_phi",
    "ede_schedule",
    "proxquant_prox",
    "quantize_k",
    "selfbin_v",
]

"""MBBN quantizers: Table I activations, the M-bit encoder (Eq. 10-13, Algorithm 1), the odd
linear quantizers of Algorithm 2 (Eq. 15) and their weight forms; registered by name."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .. import quantizers as Q
from .encoding import _check_bits

# ============================================================================ Table I, Eq. 10-13


def htanh(x: Tensor) -> Tensor:
    """``HTanh(x) = clamp(x, -1, 1)`` (Table I); gradient ``1[-1 <= x <= 1]``."""
    return torch.clamp(x, -1.0, 1.0)


def hrelu(x: Tensor) -> Tensor:
    """``HReLU(x) = clamp(x, 0, 1)`` (Table I); gradient ``1[0 <= x <= 1]``."""
    return torch.clamp(x, 0.0, 1.0)


_ACTIVATIONS = {"htanh": htanh, "hrelu": hrelu}


def _check_activation(activation: str, bits: int) -> str:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be 'htanh' or 'hrelu', got {activation!r}")
    if activation == "hrelu" and bits == 1:
        raise ValueError(
            "activation 'hrelu' with 1 bit is constant: HReLU(x) >= 0 encodes to +1 everywhere "
            "(the MBBN paper, Sec. V.A, uses HTanh for 1-bit activations); use activation='htanh'"
        )
    return activation


def odd_ladder(y: Tensor, a: int) -> Tensor:
    """The hard ladder: ``v = clamp(2 floor(y / 2) + 1, -a, a)``, the odd integer nearest ``y``.

    Odd integers are ``2j + 1``; ``y`` lies in ``[2j, 2j + 2)`` for ``j = floor(y / 2)`` and
    ``2j + 1`` is the odd integer nearest to it. Ties (``y`` even) go up, as ``sign(0) = +1``
    (BitFlow-Net Eq. 2) and the engine's ``acc >= threshold`` rule do.
    """
    return torch.clamp(2.0 * torch.floor(y / 2.0) + 1.0, -float(a), float(a))


def encoder_sine(x: Tensor, bits: int) -> Tensor:
    """Eq. 10 literally: planes ``[M, *x.shape]`` (plane 0 = the paper's ``m = 1``)::

        phi^M(x) = sign( sin((2^M - 1) pi x / 2^M))           (highest plane)
        phi^m(x) = sign(-sin((2^M - 1) pi x / 2^m)),  m < M

    On ``[-1, 1]`` away from the level boundaries this equals the hard ladder
    ``v = odd_ladder(A x, A)``: ``q = (v + A) / 2 = floor(z)`` with ``z = (A x + 2^M) / 2``, and
    bit ``m`` of ``floor(z)`` is 1 iff ``sin(pi z / 2^m) < 0``. For ``m < M - 1``,
    ``pi z / 2^m = pi A x / 2^(m+1) + 2 pi 2^(M-m-2)``, so the bit is ``-sin(pi A x / 2^(m+1)) >
    0``; for the top plane the shift is ``pi`` and the sign flips, giving ``sin`` (Eq. 10).
    The sines only differ at the boundaries ``A x`` even, where ``sin = 0`` and ``sign(0) = +1``
    does not always agree with the ladder, and outside ``[-1, 1]``, where they wrap around:
    :class:`MBitEncoder` therefore uses the exact ladder after HTanh/HReLU and keeps the sines
    for the gradient (Eq. 13).
    """
    m_bits = _check_bits(bits)
    a = (1 << m_bits) - 1
    planes = []
    for m in range(m_bits):
        s = torch.sin(a * math.pi * x / (1 << (m + 1)))
        s = s if m == m_bits - 1 else -s
        planes.append(torch.where(s >= 0, torch.ones_like(x), -torch.ones_like(x)))
    return torch.stack(planes)


def encoder_grads(x: Tensor, bits: int) -> Tensor:
    """Eq. 13 for any ``M``: ``d phi^m / dx`` per plane, ``[M, *x.shape]``, zero outside [-1, 1].

    Top plane: ``(A / 2^M) pi cos(A pi x / 2^M)``; plane ``m < M-1`` (paper ``m + 1``):
    ``-(A / 2^(m+1)) pi cos(A pi x / 2^(m+1))``. For ``M = 2`` these are the two lines of Eq. 13
    (``3/4 pi cos(3/4 pi x)`` and ``-3/2 pi cos(3/2 pi x)``).
    """
    m_bits = _check_bits(bits)
    a = (1 << m_bits) - 1
    inside = (x.abs() <= 1).to(x.dtype)
    grads = []
    for m in range(m_bits):
        w = a * math.pi / (1 << (m + 1))
        g = w * torch.cos(w * x)
        grads.append((g if m == m_bits - 1 else -g) * inside)
    return torch.stack(grads)


class MBitEncodeFn(torch.autograd.Function):
    """Levels of the M-bit encoder with Algorithm 1's backward, fused over the planes.

    forward:  ``v = odd_ladder(A x, A)`` (= ``sum_m 2^m phi^m(x)``, Eq. 10)
    backward (``gradient="sine"``): Algorithm 1 sends ``g_{c_m} = 2^m g_v`` to plane ``m``
    (line 14: every branch of plane ``m`` carries ``2^m``), and ``BackMBitEncoder`` (line 12,
    Eq. 13) gives ``g_x = sum_m g_{c_m} phi^m'(x) = g_v sum_m 2^m phi^m'(x)``.
    backward (``gradient="ste"``): the clipped STE of the ladder, ``g_x = A g_v 1[|x| <= 1]``
    (``d(v / A)/dx = 1`` inside).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, bits: int, gradient: str) -> Tensor:
        a = (1 << bits) - 1
        ctx.save_for_backward(x)
        ctx.bits, ctx.gradient = bits, gradient
        return odd_ladder(a * x, a)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        bits = ctx.bits
        if ctx.gradient == "ste":
            return grad * ((1 << bits) - 1) * (x.abs() <= 1).to(grad.dtype), None, None
        w = torch.tensor([float(1 << m) for m in range(bits)], dtype=x.dtype, device=x.device)
        d = torch.tensordot(w, encoder_grads(x, bits), dims=([0], [0]))
        return grad * d, None, None


class MBitPlanesFn(torch.autograd.Function):
    """Eq. 10 planes ``[M, ...]`` (hard ladder bits) with the per-plane backward of Eq. 13.

    forward: ``c_m`` of ``odd_ladder(A x, A)``; backward: ``g_x = sum_m g_{c_m} phi^m'(x)``.
    This is Algorithm 1's ``MBitEncoder`` / ``BackMBitEncoder`` pair without fusing; the
    multi-branch forward of :meth:`MBitConv2d.forward_branches` uses it.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, bits: int) -> Tensor:
        a = (1 << bits) - 1
        ctx.save_for_backward(x)
        ctx.bits = bits
        q = ((odd_ladder(a * x, a) + a) / 2).to(torch.int64)
        return torch.stack([((q >> m) & 1).to(x.dtype) * 2 - 1 for m in range(bits)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return (grad * encoder_grads(x, ctx.bits)).sum(dim=0), None


def _planes_of_levels(v: Tensor, bits: int) -> Tensor:
    """Hard planes ``[M, ...]`` (no gradient) of integer-valued odd levels ``v``."""
    a = (1 << bits) - 1
    q = ((v.detach() + a) / 2).round().to(torch.int64)
    return torch.stack([((q >> m) & 1).to(v.dtype) * 2 - 1 for m in range(bits)])


# ============================================================================ quantizers


class MultiBitInputQuantizer(Q.InputQuantizer):
    """Base of ``M``-bit activation quantizers.

    ``decompose(x) -> (v, s)``: integer-valued odd levels ``v`` (differentiable through the
    quantizer's surrogate gradient) and a scalar scale ``s`` with ``forward(x) = s * v``.
    ``planes(x)``: the hard planes ``[M, ...]`` of ``v`` (engine convention, no gradient).
    """

    bits: int = 2
    activation: str = "htanh"

    @property
    def max_level(self) -> int:
        """``A = 2^M - 1``."""
        return (1 << self.bits) - 1

    def clip_range(self) -> Tensor:
        """The clipping range ``t``: inputs are clipped to ``[-t, t]`` (HTanh) or ``[0, t]`` (HReLU)."""
        raise TypeError(f"{type(self).__name__} must implement clip_range()")

    def scale(self) -> Tensor:
        """The scalar scale ``s = t / A`` of the levels (Eq. 9 with ``r = t``)."""
        return self.clip_range() / self.max_level

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise TypeError(f"{type(self).__name__} must implement decompose()")

    @torch.no_grad()
    def boundaries(self) -> Tensor:
        """The ``2^M - 1`` ascending level boundaries in input space (float64) for the converter.

        The level of ``x`` is ``v = 2q - A`` with ``q = #{l : x >= boundaries[l]}`` (ties go up,
        like the engine's ``acc >= threshold``). The ladder's boundaries are the even points
        ``y = 2j``, ``|j| <= 2^(M-1) - 1``, of ``y = A h / t``, i.e. ``x = 2 j t / A``; with HReLU
        the clipped input is ``>= 0``, so the boundaries ``j <= 0`` are always passed (``-inf``).
        In float32 an input within rounding distance of a boundary may fall either way.
        """
        half = 1 << (self.bits - 1)
        j = torch.arange(-(half - 1), half, dtype=torch.float64)
        b = 2.0 * j * float(self.clip_range()) / self.max_level
        if self.activation == "hrelu":
            b[j <= 0] = -math.inf
        return b

    def forward(self, x: Tensor) -> Tensor:
        v, s = self.decompose(x)
        return v * s

    @torch.no_grad()
    def planes(self, x: Tensor) -> Tensor:
        """Hard ``{-1, +1}`` planes ``[M, *x.shape]`` of the levels (Eq. 7)."""
        v, _ = self.decompose(x)
        return _planes_of_levels(v, self.bits)


@Q.register("mbit_encoder")
class MBitEncoder(MultiBitInputQuantizer):
    """Algorithm 1 activations: ``HTanh``/``HReLU`` (Table I), then the M-bit encoder (Eq. 10).

    Levels ``v = odd_ladder(A h, A)`` with ``h = act(x)`` and ``A = 2^M - 1`` (the value of
    Eq. 10's planes, see :func:`encoder_sine`); scale ``r / A`` with ``r = 1`` (Eq. 9), so the
    quantized activation is ``v / A`` in ``[-1, 1]`` (Table II for ``M = 2``: -1, -1/3, 1/3, 1).

    ``gradient="sine"`` (default): Eq. 13 through :class:`MBitEncodeFn`; ``"ste"``: the clipped
    straight-through estimator ``d(v/A)/dh = 1[|h| <= 1]``. Either way the activation's own
    gradient (HTanh: ``1[|x| <= 1]``, HReLU: ``1[0 <= x <= 1]``) multiplies.

    With ``activation="hrelu"`` the input is ``[0, 1]``, so only the upper ``2^(M-1)`` levels are
    reachable (the top plane is always +1), as in the paper; ``M = 1`` is then constant and
    rejected.
    """

    def __init__(self, bits: int = 2, activation: str = "htanh", gradient: str = "sine") -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        self.activation = _check_activation(activation, self.bits)
        if gradient not in ("sine", "ste"):
            raise ValueError(f"gradient must be 'sine' (Eq. 13) or 'ste', got {gradient!r}")
        self.gradient = gradient

    def clip_range(self) -> Tensor:
        """``t = 1``: HTanh and HReLU clip to ``[-1, 1]`` / ``[0, 1]`` (Table I)."""
        return torch.tensor(1.0)

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = _ACTIVATIONS[self.activation](x)
        v = MBitEncodeFn.apply(h, self.bits, self.gradient)
        return v, self.scale().to(dtype=x.dtype, device=x.device)

    def planes_with_grad(self, x: Tensor) -> Tensor:
        """Planes ``[M, ...]`` with the per-plane Eq. 13 backward (Algorithm 1 unfused)."""
        return MBitPlanesFn.apply(_ACTIVATIONS[self.activation](x), self.bits)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, activation={self.activation}, gradient={self.gradient}"


def odd_linear_levels(x: Tensor, t: Tensor, bits: int, lower: str = "symmetric") -> Tensor:
    """Odd-level linear quantization with range ``t`` (Algorithm 2), levels with STE gradients.

    Eq. 15 as printed, ``round(clamp(x/t, 1) (2^(K-1) - 1)) d`` with ``d = t / (2^(K-1) - 1)``,
    produces the ``2^K - 1`` levels ``n d``, ``n`` in ``-(2^(K-1)-1) .. 2^(K-1)-1``: all
    integers, 0 included (and it divides by zero for ``K = 1``). A ``{-1, +1}`` code cannot
    represent them: ``v = sum 2^m c_m`` is congruent to ``c_0 = +-1`` mod 2, so every encodable
    level is odd, and no common scale turns ``0`` or both ``1`` and ``2`` into odd integers.
    Table II and Eq. 21 instead use the ``2^K`` odd levels ``v / A``, ``A = 2^K - 1``. The
    uniform quantizer onto those levels, for ``x`` clipped to ``[-t, t]``, is::

        y = A clamp(x, -t, t) / t            in [-A, A]
        v = clamp(2 floor(y / 2) + 1, -A, A) the odd integer nearest y  (odd_ladder)
        Q(x) = (t / A) v

    (the bins are ``[2j, 2j + 2)`` in ``y``, i.e. width ``2t/A`` in ``x``; Table II for ``K = 2``,
    ``t = 1``: ``[-1, -2/3) -> -1, [-2/3, 0) -> -1/3, [0, 2/3) -> 1/3, [2/3, 1] -> 1``; the paper's
    table puts the boundary points 0 and -2/3 in the lower bin, a measure-zero difference: ties
    go up here, as ``sign(0) = +1``). ``lower="zero"`` clips to ``[0, t]`` instead (HReLU-style
    range; only the upper ``2^(K-1)`` levels are then reachable).

    Returns ``v`` with the straight-through gradient of the rounding: ``dv/dy = 1`` (so
    ``dQ/dx = 1[x in range]``) and, through ``y``, ``dQ/dt = v/A - x/t`` inside the range and
    ``v/A`` (= +-1) outside: the derivative of ``t * round(x / t)`` with the rounding held
    straight-through (PACT/LSQ-style learned range).
    """
    a = (1 << bits) - 1
    lo = -t if lower == "symmetric" else torch.zeros_like(t)
    # torch.where (not clamp) so that the clipped branch y = A t / t has dy/dt = 0 exactly.
    h = torch.where(x > t, t, torch.where(x < lo, lo, x))
    y = a * h / t
    return y + (odd_ladder(y, a) - y).detach()


@Q.register("odd_linear")
class OddLinearQuantizer(MultiBitInputQuantizer):
    """Algorithm 2 activations: odd-level linear quantizer with a learned range ``t`` (Eq. 15,
    corrected to odd levels; see :func:`odd_linear_levels`). ``decompose(x) = (v, t / A)``.

    ``activation="htanh"`` clips to ``[-t, t]``; ``"hrelu"`` clips to ``[0, t]`` (the paper's
    HReLU with a learned upper end). ``t`` starts at ``init_range`` (1.0: HTanh's range, suited
    to BatchNorm outputs) and is kept above ``1e-6`` in the forward.
    """

    def __init__(self, bits: int = 2, activation: str = "htanh", init_range: float = 1.0) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        self.activation = _check_activation(activation, self.bits)
        if not (init_range > 0 and math.isfinite(init_range)):
            raise ValueError(f"init_range must be a positive finite number, got {init_range}")
        self.t = nn.Parameter(torch.tensor(float(init_range)))

    def clip_range(self) -> Tensor:
        """The learned ``t`` (kept above ``1e-6``)."""
        return self.t.clamp_min(1e-6)

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = self.clip_range().to(x.dtype)
        lower = "symmetric" if self.activation == "htanh" else "zero"
        return odd_linear_levels(x, t, self.bits, lower), t / self.max_level

    def extra_repr(self) -> str:
        return f"bits={self.bits}, activation={self.activation}"


@Q.register("mbit_weight")
class MBitWeight(Q.WeightQuantizer):
    """Algorithm 1 weights: ``K = 1`` is Eq. 14, ``w_b = sign(HTanh(w))``; ``K > 1`` the K-bit
    ladder ``v = odd_ladder(B HTanh(w), B)``, ``B = 2^K - 1``, scale ``1 / B`` per channel.

    Gradient: the clipped straight-through estimator ``dv/dw = B 1[|w| <= 1]`` (for ``K = 1``
    the BNN rule Eq. 14 prescribes: HTanh's gradient times the identity STE of sign).

    Why one latent tensor and the ladder, not Algorithm 1's ``K`` latent tensors
    ``W^1..W^K`` each binarized by Eq. 14: (1) the paper itself notes (Sec. IV.B) that the
    decomposed network multiplies the parameters and trains slowly; (2) one latent tensor keeps
    the parameter set of the full-precision model, so the progressive initialisation of
    Sec. V.A (8-bit from full precision, then 7-bit from 8-bit, ...) is a plain copy
    (:func:`init_from_higher`); (3) the sine surrogate of Eq. 13 is zero at ``w = 0`` for
    ``K >= 2`` (``sum_k 2^k phi^k'(0) = 0``), where weights concentrate, so it would freeze them;
    the clipped STE does not. With ``K > 1`` the layer rescales its initial latent weights to
    ``max |w| = 1`` so that they span the ladder's levels (``init_latent_``).
    """

    has_scale = True

    def __init__(self, bits: int = 1) -> None:
        super().__init__()
        self.bits = _check_bits(bits)

    @property
    def max_level(self) -> int:
        return (1 << self.bits) - 1

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor]:
        b = self.max_level
        y = b * htanh(w)
        v = y + (odd_ladder(y, b) - y).detach()
        return v, torch.full((w.shape[0],), 1.0 / b, dtype=w.dtype, device=w.device)

    @torch.no_grad()
    def init_latent_(self, w: Tensor) -> None:
        """For ``K > 1``: scale the initial latent weights to ``max |w| = 1`` (see above)."""
        if self.bits > 1:
            m = w.abs().max()
            if m > 0:
                w.mul_(1.0 / m)

    @torch.no_grad()
    def planes(self, w: Tensor) -> Tensor:
        """Hard ``{-1, +1}`` planes ``[K, *w.shape]`` of the weight levels."""
        return _planes_of_levels(self.decompose(w)[0], self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


@Q.register("odd_linear_weight")
class OddLinearWeight(Q.WeightQuantizer):
    """Algorithm 2 weights: odd-level linear quantizer with learned range ``t`` (per tensor as in
    Eq. 15, or per output channel with ``per_channel=True``); ``decompose(w) = (v, t / B)``.

    ``init_latent_(w)`` (called by the layer at construction) sets ``t = max |w|`` (per tensor or
    per channel), so that the initial weights span all levels.
    """

    has_scale = True

    def __init__(self, bits: int = 2, per_channel: bool = False) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        self.per_channel = bool(per_channel)
        self.t = nn.Parameter(torch.ones(1))

    @property
    def max_level(self) -> int:
        return (1 << self.bits) - 1

    @torch.no_grad()
    def init_latent_(self, w: Tensor) -> None:
        """``t = max |w|`` (per channel: ``max_i |w_{o,i}|``), at least ``1e-6``."""
        if self.per_channel:
            t = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-6)
        else:
            t = w.detach().abs().max().clamp_min(1e-6).reshape(1)
        if t.shape == self.t.shape:
            self.t.copy_(t)  # in place: an optimizer holding self.t keeps working
        else:
            self.t = nn.Parameter(t.clone().to(self.t.dtype))

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor]:
        t = self.t.clamp_min(1e-6).to(w.dtype)
        if t.numel() not in (1, w.shape[0]):
            raise ValueError(
                f"odd_linear_weight has {t.numel()} ranges for a weight with {w.shape[0]} output channels"
            )
        tv = t.view((-1,) + (1,) * (w.dim() - 1))
        v = odd_linear_levels(w, tv, self.bits)
        return v, (t / self.max_level).expand(w.shape[0])

    @torch.no_grad()
    def planes(self, w: Tensor) -> Tensor:
        """Hard ``{-1, +1}`` planes ``[K, *w.shape]`` of the weight levels."""
        return _planes_of_levels(self.decompose(w)[0], self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


METHODS = ("encoder", "quantizer")


def make_quantizers(
    bits_a: int,
    bits_w: int,
    *,
    method: str = "encoder",
    activation: str = "htanh",
    gradient: str = "sine",
    per_channel: bool = False,
) -> tuple[MultiBitInputQuantizer, Q.WeightQuantizer]:
    """``(input quantizer, weight quantizer)`` of one layer.

    ``method="encoder"`` (Algorithm 1): :class:`MBitEncoder` + :class:`MBitWeight`;
    ``method="quantizer"`` (Algorithm 2): :class:`OddLinearQuantizer` + :class:`OddLinearWeight`.
    """
    if method == "encoder":
        return MBitEncoder(bits_a, activation, gradient), MBitWeight(bits_w)
    if method == "quantizer":
        return OddLinearQuantizer(bits_a, activation), OddLinearWeight(bits_w, per_channel)
    raise ValueError(
        f"method must be 'encoder' (Algorithm 1) or 'quantizer' (Algorithm 2), got {method!r}"
    )

"""Modulated convolutional networks (MCN; Wang et al., "Modulated Convolutional Networks").

Shapes (Sec. III-C). A feature map has ``K`` planes (channels), so a layer with ``G`` input maps
and ``H`` output maps has ``G*K`` input and ``H*K`` output channels; channel ``(g, k)`` is
``g*K + k``. A layer holds

- latent filters ``C`` (``weight``): one ``K x W x W`` filter per (output map ``h``, input map
  ``g``) pair, shape ``[H, G, K, W, W]``;
- binarized filters ``C^ = P_Omega(C)`` (Eq. 3.1): the projection onto ``U`` sorted centers
  ``a_1 < ... < a_U`` (``x <= (a_i + a_{i+1})/2`` goes down, the paper's tie rule), centers from
  a per-layer 1-D k-means of ``C`` recomputed every ``N`` epochs (:meth:`MCConv2d.recompute_centers`);
  the default *symmetric* mode has ``U = 2``, ``a_1 = -a_2 = -mean|C|`` (the optimal symmetric
  pair), so ``C^ = a * s`` with ``s = +-1`` and ``a`` folds into the modulation;
- one M-Filter ``M`` (``m_filter``, ``[K, W, W]``) kept ``>= 0`` (``M <- |M|`` after every
  step, Eq. 3.21, :meth:`MCConv2d.abs_m_`).

MCconv (Eq. 3.11-3.15) is an ordinary convolution with the reconstructed weight

    W[(h,k), (g,k'), u, v] = C^[h, g, k', u, v] * M[k, u, v]          (:meth:`reconstructed_weight`)

Variants (``variant=``): ``"mcn"`` (full M), ``"mcn1"`` (each M plane replaced by its mean in the
forward pass, Sec. III-E; the backward pass still reaches every element of M through the mean
and the filter loss), ``"umcn"`` (unbinarized: ``C^ = C``, trained with the softmax loss only).
*MCN-XNOR* (bitflow's own variant, not the paper's) is ``input_quantizer="ste_sign"``:
``BN -> sign -> MCconv``, binary activations too. With binary inputs, symmetric centers and
MCN-1 modulation, plane ``(h, k)`` is ``a * mean(M_k)`` times one binary response
``sign(x) (*) s_h``, which the layer computes exactly as :class:`~bitflow.nn.BinaryConv2d` does
(integer convolution in float32, one multiplication afterwards) and the converter lowers to a
binary convolution plus BatchShift thresholds.

Losses (Eq. 3.8-3.9), :func:`filter_loss`, :class:`CenterLoss`, :func:`projection_loss`, are
differentiated by autograd. The printed update rules do not all agree with that: see
:data:`UPDATE_RULE_NOTES`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import quantizers as Q
from .layers import QuantizerSpec

VARIANTS = ("mcn", "mcn1", "umcn")

UPDATE_RULE_NOTES = """\
Update rules of the paper vs the gradient of its loss (derived with autograd, tested against
finite differences in tests/python/test_mcn.py).

Filter loss, Eq. 3.8 with the plane-wise reading of Eq. 3.10 that (3.19) and (3.23) use:
    L_F = theta/2 * sum_{i,j} || C_i - C^_i * M'_j ||^2     (M'_j = K copies of plane M_j)
  dL_F/dM_j  = -theta * sum_i (C_i - C^_i * M'_j) * C^_i     == (3.23) as printed (minus sign)
  dL_F/dC^_i = -theta * sum_j (C_i - C^_i * M'_j) * M'_j     (3.19) prints +theta: sign flipped
  dL_F/dC_i  = +theta * sum_j (C_i - C^_i * M'_j)            (the explicit C; absent from 3.16-3.19)
Projection term, Eq. 3.9: L_P = theta/2 || C^[k] - C - eta_1 delta^[k] ||^2 with C^[k] and
delta^[k] (the previous step's gradient of L_S + L_M w.r.t. C^) fixed:
  dL_P/dC = -theta (C^[k] - C - eta_1 delta^[k])            (3.16) prints +theta(...): flipped
  (+theta(...) is the derivative w.r.t. C^; applied to C by (3.17) it pushes C *away* from its
  projection, the opposite of Proposition 1's constraint x = x^[k+1] = x^[k] - eta delta).
Under the identity STE (dC^/dC = 1) the latent C receives dL_S/dC^ + dL_F/dC^ + dL_F/dC + dL_P/dC.
bitflow uses the autograd signs (descent on the stated loss), i.e. (3.23) as printed and (3.16),
(3.19) with the sign corrected.
"""


# --------------------------------------------------------------------------- projection (Eq. 3.1)
def project(x: Tensor, centers: Tensor) -> Tensor:
    """``P_Omega(x)`` (Eq. 3.1): the nearest of the sorted ``centers``, ties (``x`` exactly at a
    midpoint ``(a_i + a_{i+1})/2``) going to the lower center. No gradient."""
    c = centers.to(x.dtype)
    if c.numel() == 1:
        return c.expand_as(x).clone()
    mids = (c[:-1] + c[1:]) / 2
    idx = torch.bucketize(x.detach(), mids, right=False)  # mids[i-1] < x <= mids[i] -> i
    return c[idx]


class _ProjectSTE(torch.autograd.Function):
    """forward ``C^ = P_Omega(C)`` (Eq. 3.1); backward identity ``dL/dC = dL/dC^`` (Eq. 3.17
    applies the gradient w.r.t. ``C^`` to ``C``)."""

    @staticmethod
    def forward(ctx: Any, c: Tensor, centers: Tensor) -> Tensor:
        return project(c, centers)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _ScaledSignSTE(torch.autograd.Function):
    """forward ``s = C^ / a`` in ``{-1, +1}`` for symmetric centers ``(-a, +a)`` (``C <= 0 -> -1``,
    Eq. 3.1's tie rule); backward ``dL/dC = dL/ds / a``, so that ``C^ = a * s`` has the same
    identity STE as :class:`_ProjectSTE`."""

    @staticmethod
    def forward(ctx: Any, c: Tensor, a: Tensor) -> Tensor:
        ctx.save_for_backward(a)
        return torch.where(c <= 0, -torch.ones_like(c), torch.ones_like(c))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (a,) = ctx.saved_tensors
        return grad / a, None


def kmeans_1d(values: Tensor, k: int, iters: int = 100) -> Tensor:
    """Sorted centers of a 1-D k-means (Lloyd) on ``values``, initialised at the quantiles
    ``(i + 0.5)/k``; computed in float64, deterministic. Empty clusters keep their center."""
    v = values.detach().flatten().to(torch.float64)
    if v.numel() == 0:
        raise ValueError("k-means needs at least one value")
    q = torch.tensor([(i + 0.5) / k for i in range(k)], dtype=torch.float64)
    c = torch.quantile(v, q)
    for _ in range(iters):
        mids = (c[:-1] + c[1:]) / 2
        idx = torch.bucketize(v, mids, right=False)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, v)
        counts = torch.bincount(idx, minlength=k).to(torch.float64)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        new, _ = torch.sort(new)
        if torch.equal(new, c):
            break
        c = new
    return c


def symmetric_center(values: Tensor) -> Tensor:
    """``a = mean |C|``: the minimiser of ``sum (|c| - a)^2``, i.e. the best symmetric pair
    ``(-a, +a)`` for the assignment by sign (k-means with the constraint ``a_1 = -a_2``)."""
    return values.detach().abs().to(torch.float64).mean()


# --------------------------------------------------------------------------- uint8 activations
class UInt8Act(nn.Module):
    """The W1/A8 activation quantizer of a deployed MCN layer (``input_quantizer="u8"``):

        q = clamp(floor(x 2^f + 1/2), 0, 255),     value q 2^-f      (f = ``frac``)

    i.e. ``q = #{j = 1..255 : x >= (j - 1/2) 2^-f}`` for every float32 ``x``: ``y = x 2^f`` is
    exact (a power of two), and ``floor(y + 1/2)`` is computed as ``floor(y) + [y - floor(y) >=
    1/2]`` (both steps exact), not as a float32 ``y + 0.5``, which rounds ``0.5 - 2^-25`` up to 1. After a BatchNorm the converter turns it into
    per-channel thresholds on the integer accumulator (``threshold_u8``), exactly as BatchShift
    does for signs. Gradient: straight-through ``dq/dx = 2^f`` inside ``[0, 255 2^-f]``, 0 outside.
    """

    name = "u8"
    bits = 8

    def __init__(self, frac: int = 5) -> None:
        super().__init__()
        if not 0 <= int(frac) <= 16:
            raise ValueError(f"act_frac (f in the grid 2^-f) must be in 0..16, got {frac}")
        self.frac = int(frac)

    @property
    def step(self) -> float:
        """``2^-f``."""
        return 2.0**-self.frac

    def codes(self, x: Tensor) -> Tensor:
        """``q`` as float32 integers in ``[0, 255]`` (straight-through gradient)."""
        y = x * float(2**self.frac)
        fl = torch.floor(y)
        q = (fl + (y - fl >= 0.5).to(y.dtype)).clamp(0.0, 255.0)
        yc = y.clamp(0.0, 255.0)
        return yc + (q - yc).detach()

    def forward(self, x: Tensor) -> Tensor:
        return self.codes(x) * self.step

    def extra_repr(self) -> str:
        return f"frac={self.frac}"


# --------------------------------------------------------------------------- the layer
class MCConv2d(nn.Module):
    """Modulated convolution (MCconv, Eq. 3.13-3.15); see the module docstring.

    ``in_maps`` ``G`` and ``out_maps`` ``H`` count feature maps of ``planes`` ``K`` channels each.
    ``replicate_input=True`` (the first layer): the input has ``G`` channels, each replicated
    ``K`` times (Sec. III-C, "RGB -> RRRR"); computed as a conv with the weight summed over the
    replicas, which is the same function. ``input_quantizer`` (``None``: real activations as in
    the paper; ``"ste_sign"``: MCN-XNOR, ours). ``centers`` ``U``, ``symmetric`` (``U = 2`` only).
    """

    centers: Tensor
    proj_chat: Tensor
    proj_delta: Tensor
    proj_state: Tensor

    def __init__(
        self,
        in_maps: int,
        out_maps: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        *,
        planes: int = 4,
        variant: str = "mcn",
        centers: int = 2,
        symmetric: bool = True,
        input_quantizer: QuantizerSpec = None,
        replicate_input: bool = False,
        act_frac: int = 5,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if planes < 1 or in_maps < 1 or out_maps < 1:
            raise ValueError("planes, in_maps and out_maps must be >= 1")
        if centers < 2:
            raise ValueError(f"centers (U) must be >= 2, got {centers}")
        if symmetric and centers != 2:
            raise ValueError("symmetric centers (a1 = -a2) need centers=2")
        self.in_maps, self.out_maps, self.planes = in_maps, out_maps, planes
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.variant = variant
        self.num_centers = centers
        self.symmetric = symmetric
        self.replicate_input = replicate_input
        iq: nn.Module | None
        if input_quantizer == "u8":
            if replicate_input:
                raise ValueError(
                    "the first layer (replicate_input) reads the image, not uint8 codes"
                )
            iq = UInt8Act(act_frac)
            # the integer accumulator is computed in float32: |z| <= 255 G K W W must stay exact
            if 255 * in_maps * planes * kernel_size**2 >= 2**24:
                raise ValueError(
                    f"uint8 inputs need 255 G K W^2 < 2^24 (exact in float32); G={in_maps}, "
                    f"K={planes}, W={kernel_size} is too wide"
                )
        else:
            iq = Q.get(input_quantizer)
            if iq is not None and not isinstance(iq, Q.InputQuantizer):
                raise ValueError(
                    "input_quantizer must be 'u8' or an activation quantizer such as 'ste_sign'"
                )
        self.input_quantizer = iq
        k, w = planes, kernel_size
        self.weight = nn.Parameter(torch.empty(out_maps, in_maps, k, w, w))
        # kaiming-uniform over the fan-in of a reconstructed output channel (G*K*W*W)
        bound = 1.0 / (in_maps * k * w * w) ** 0.5
        nn.init.uniform_(self.weight, -bound * 3**0.5, bound * 3**0.5)
        self.m_filter = nn.Parameter(torch.ones(k, w, w))
        self.register_buffer("centers", torch.zeros(centers))
        # the projection term's state (Eq. 3.9), checkpointed so that a resumed run continues
        # exactly: C^[k] and delta^[k] of the last step, proj_state = [valid (0/1), eta_1 used]
        self.register_buffer("proj_chat", torch.zeros_like(self.weight))
        self.register_buffer("proj_delta", torch.zeros_like(self.weight))
        self.register_buffer("proj_state", torch.zeros(2, dtype=torch.float64))
        self.recompute_centers()

    # ---- channels
    @property
    def in_channels(self) -> int:
        return self.in_maps if self.replicate_input else self.in_maps * self.planes

    @property
    def out_channels(self) -> int:
        return self.out_maps * self.planes

    @property
    def binary(self) -> bool:
        return self.variant != "umcn"

    # ---- centers and projection
    @torch.no_grad()
    def recompute_centers(self) -> None:
        """k-means of the latent values (symmetric: ``+-mean|C|``), Sec. III-C1."""
        if self.symmetric:
            a = symmetric_center(self.weight)
            c = torch.stack([-a, a])
        else:
            c = kmeans_1d(self.weight, self.num_centers)
        self.centers.copy_(c.to(self.centers.dtype))

    def symmetric_scale(self) -> Tensor:
        """``a`` of the symmetric pair ``(-a, +a)``."""
        if not self.symmetric:
            raise ValueError("symmetric_scale() needs symmetric centers")
        return self.centers[1]

    def binarized(self) -> Tensor:
        """``C^ = P_Omega(C)`` with the identity STE (``C`` itself for U-MCN)."""
        if not self.binary:
            return self.weight
        return _ProjectSTE.apply(self.weight, self.centers)  # type: ignore[no-any-return]

    def modulation(self) -> Tensor:
        """The M-Filter used in the forward pass: ``M`` (MCN, U-MCN) or its plane means (MCN-1)."""
        if self.variant == "mcn1":
            return self.m_filter.mean(dim=(1, 2), keepdim=True).expand_as(self.m_filter)
        return self.m_filter

    def reconstructed_weight(self, chat: Tensor | None = None) -> Tensor:
        """``W[(h,k),(g,k'),u,v] = C^[h,g,k',u,v] * M[k,u,v]`` as ``[H*K, G*K, W, W]`` (Eq. 3.11)."""
        c = self.binarized() if chat is None else chat
        m = self.modulation()
        h, g, k, w, _ = c.shape
        wt = c[:, None] * m[None, :, None, None]  # [H, K, G, K', W, W]
        return wt.reshape(h * k, g * k, w, w)

    def _fast_binary(self) -> bool:
        return self.input_quantizer is not None and self.variant == "mcn1" and self.symmetric

    def plane_scale(self) -> Tensor:
        """MCN-1 with symmetric centers: the positive scale ``a * mean(M_k)`` of output channel
        ``(h, k)``, ``[H*K]`` (float32; the converter reads the same tensor)."""
        mbar = self.m_filter.mean(dim=(1, 2))
        return (self.symmetric_scale() * mbar).repeat(self.out_maps)

    def sign_filters(self) -> Tensor:
        """``s = C^ / a`` in ``{-1, +1}``, ``[H, G*K, W, W]`` (symmetric centers), STE to ``C``."""
        s = _ScaledSignSTE.apply(self.weight, self.symmetric_scale())
        h, g, k, w, _ = self.weight.shape
        return s.reshape(h, g * k, w, w)  # type: ignore[no-any-return]

    def u8_exact(self) -> bool:
        """uint8 inputs, symmetric centers, MCN-1: the layer computes ``(2^-f a mean(M_k)) z_h``
        with the exact integer ``z_h = q (*) s_h`` (what ``conv2d_u8b1`` + ``scale_bias`` run)."""
        return (
            isinstance(self.input_quantizer, UInt8Act)
            and self.binary
            and self.symmetric
            and self.variant == "mcn1"
        )

    def u8_scale(self) -> Tensor:
        """``2^-f a mean(M_k)`` per output channel ``(h, k)``, ``[H*K]`` float32 (:meth:`u8_exact`;
        the converter reads this very tensor)."""
        assert isinstance(self.input_quantizer, UInt8Act)
        return self.plane_scale() * self.input_quantizer.step

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.input_quantizer, UInt8Act):
            q = self.input_quantizer.codes(x)
            if self.u8_exact():
                # integer conv of the codes with s_h (exact in float32), one multiplication
                z = F.conv2d(q, self.sign_filters(), None, self.stride, self.padding)
                z = z.repeat_interleave(self.planes, dim=1)
                return z * self.u8_scale().view(1, -1, 1, 1)
            x = q * self.input_quantizer.step
            return F.conv2d(x, self.conv_weight(), None, self.stride, self.padding)
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if self._fast_binary():
            # y_(h,k) = a * mean(M_k) * (sign(x) (*) s_h): one integer-valued conv with H outputs
            # (exact in float32), then one multiplication, as BinaryConv2d computes it
            y = F.conv2d(x, self.sign_filters(), None, self.stride, self.padding)
            y = y.repeat_interleave(self.planes, dim=1)
            return y * self.plane_scale().view(1, -1, 1, 1)
        return F.conv2d(x, self.conv_weight(), None, self.stride, self.padding)

    def conv_weight(self) -> Tensor:
        """The weight of the ordinary convolution this layer computes (general path): ``W``, or
        for ``replicate_input`` ``W`` summed over the ``K`` replicas of each input channel."""
        wt = self.reconstructed_weight()
        if self.replicate_input:
            wt = wt.view(wt.shape[0], self.in_maps, self.planes, *wt.shape[2:]).sum(2)
        return wt

    # ---- training helpers
    def filter_loss(self) -> Tensor:
        """``1/2 sum_{i,j} ||C_i - C^_i * M'_j||^2`` for this layer (without ``theta``)."""
        return filter_loss(self.weight, self.binarized(), self.m_filter)

    @torch.no_grad()
    def abs_m_(self) -> None:
        """``M <- |M|`` (Eq. 3.21)."""
        self.m_filter.abs_()

    def binary_parameters(self) -> int:
        """Number of binarized weights (elements of ``C^``), what Table II counts."""
        return self.weight.numel()

    def extra_repr(self) -> str:
        iq = getattr(self.input_quantizer, "name", self.input_quantizer)
        return (
            f"{self.in_maps}x{self.planes} -> {self.out_maps}x{self.planes}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, variant={self.variant}, "
            f"centers={self.num_centers}{' symmetric' if self.symmetric else ''}, input_quantizer={iq}"
            f"{', replicate_input' if self.replicate_input else ''}"
        )


# --------------------------------------------------------------------------- losses (Eq. 3.8-3.9)
def filter_loss(c: Tensor, chat: Tensor, m: Tensor) -> Tensor:
    """``1/2 sum_{i,j} ||C_i - C^_i * M'_j||^2`` (Eq. 3.8, first term, without ``theta``).

    ``c``, ``chat``: ``[H, G, K, W, W]``; ``m``: ``[K, W, W]``; ``M'_j`` is plane ``j`` copied over
    the ``K`` planes of a filter (Eq. 3.10), the reading that (3.19) and (3.23) differentiate."""
    r = c[:, :, None] - chat[:, :, None] * m[None, None, :, None]  # [H, G, j, K', W, W]
    return 0.5 * (r * r).sum()


def projection_loss(c: Tensor, chat_k: Tensor, delta_k: Tensor, eta: float) -> Tensor:
    """``1/2 ||C^[k] - C - eta delta^[k]||^2`` (Eq. 3.9, without ``theta``), ``C^[k]`` and
    ``delta^[k]`` held fixed (the previous step's projection and gradient)."""
    r = chat_k.detach() - c - eta * delta_k.detach()
    return 0.5 * (r * r).sum()


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016; Eq. 3.8, second term): ``1/2 mean_m ||f_m - c_{y_m}||^2``.

    The class centers are buffers updated as in Wen et al.:
    ``c_j <- c_j - alpha * sum_{m: y_m = j} (c_j - f_m) / (1 + n_j)`` (:meth:`update_`), not by
    the optimizer; the loss's gradient reaches the features only."""

    centers: Tensor

    def __init__(self, num_classes: int, dim: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("centers", torch.zeros(num_classes, dim))

    def forward(self, f: Tensor, y: Tensor) -> Tensor:
        d = f - self.centers[y].detach()
        return 0.5 * (d * d).sum(1).mean()

    @torch.no_grad()
    def update_(self, f: Tensor, y: Tensor) -> None:
        f = f.detach().to(self.centers.dtype)
        diff = self.centers[y] - f  # [B, D]
        delta = torch.zeros_like(self.centers).index_add_(0, y, diff)
        n = torch.bincount(y, minlength=self.centers.shape[0]).to(f.dtype)
        self.centers -= self.alpha * delta / (1.0 + n)[:, None]


def mc_layers(model: nn.Module) -> dict[str, MCConv2d]:
    """``{name: layer}`` for every :class:`MCConv2d` in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MCConv2d)}


class MCNTraining:
    """The MCN training extras a model exposes to ``bitflow train`` (see
    :mod:`bitflow.train.trainer`: ``param_groups``, ``extra_loss``, ``after_step``,
    ``on_epoch_start``).

    - two learning rates (Algorithm 1): latent filters ``C`` and every other parameter at
      ``eta_1`` (the recipe's lr), M-Filters at ``eta_2 = m_lr_ratio * eta_1`` (paper 0.01/0.1),
      each with its own per-epoch decay factor (``lr_decay_c`` = lambda_1, ``lr_decay_m`` =
      lambda_2; Algorithm 1 lines 19-20, applied per epoch on top of the recipe's schedule);
    - loss ``L_S + theta L_F + lambda L_C + theta L_P`` (Eq. 3.8-3.9) for binarized variants;
      U-MCN uses the softmax loss only (Sec. IV);
    - ``M <- |M|`` after each step (Eq. 3.21), centers by k-means every ``kmeans_every`` epochs.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        theta: float,
        lam: float,
        center: CenterLoss | None,
        m_lr_ratio: float = 0.1,
        lr_decay_c: float = 1.0,
        lr_decay_m: float = 1.0,
        kmeans_every: int = 10,
    ) -> None:
        if theta < 0 or lam < 0:
            raise ValueError("theta and lambda must be >= 0")
        if lam > 0 and center is None:
            raise ValueError("lambda > 0 needs a CenterLoss module")
        self.theta, self.lam = float(theta), float(lam)
        self.m_lr_ratio, self.lr_decay_c, self.lr_decay_m = m_lr_ratio, lr_decay_c, lr_decay_m
        self.kmeans_every = kmeans_every
        self.center = center  # a submodule of the model (its class centers are checkpointed)
        # per layer: this step's C^[k] - C - eta delta^[k] (consumed by after_step)
        self._resid: dict[str, Tensor] = {}
        self.features: Tensor | None = None
        self._model_ref = [model]  # not a submodule

    @property
    def model(self) -> nn.Module:
        return self._model_ref[0]

    def layers(self) -> dict[str, MCConv2d]:
        return mc_layers(self.model)

    def binary(self) -> bool:
        return any(m.binary for m in self.layers().values())

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        ms = {id(m.m_filter) for m in self.layers().values()}
        m_params = [p for p in self.model.parameters() if id(p) in ms and p.requires_grad]
        rest = [p for p in self.model.parameters() if id(p) not in ms and p.requires_grad]
        groups = [{"params": rest, "lr": lr, "lr_decay": self.lr_decay_c, "name": "C"}]
        if m_params:
            groups.append(
                {
                    "params": m_params,
                    "lr": lr * self.m_lr_ratio,
                    "lr_decay": self.lr_decay_m,
                    "name": "M",
                }
            )
        return groups

    def extra_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        zero = logits.new_zeros(())
        if not self.binary():
            return zero
        total = zero
        if self.theta > 0:
            for name, m in self.layers().items():
                chat = m.binarized()
                total = total + self.theta * filter_loss(m.weight, chat, m.m_filter)
                if m.proj_state[0] > 0:
                    eta = float(m.proj_state[1])
                    total = total + self.theta * projection_loss(
                        m.weight, m.proj_chat, m.proj_delta, eta
                    )
                    self._resid[name] = (m.proj_chat - m.weight - eta * m.proj_delta).detach()
        if self.lam > 0 and self.center is not None and self.features is not None:
            total = total + self.lam * self.center(self.features, y)
            self.center.update_(self.features, y)
        return total

    @torch.no_grad()
    def after_step(self, opt: torch.optim.Optimizer | None = None) -> None:
        """``M <- |M|`` (Eq. 3.21); record ``C^[k]``, ``delta^[k]`` and the ``eta_1`` of this step."""
        eta = float(opt.param_groups[0]["lr"]) if opt is not None and opt.param_groups else 0.0
        for name, m in self.layers().items():
            m.abs_m_()
            if m.binary and self.theta > 0 and m.weight.grad is not None:
                # delta^[k]: the gradient of L_S + L_M w.r.t. C^ = C's gradient minus the
                # projection term's own part dL_P/dC = -theta (C^[k] - C - eta delta)
                g = m.weight.grad.detach().clone()
                r = self._resid.pop(name, None)
                if r is not None:
                    g += self.theta * r
                m.proj_chat.copy_(project(m.weight, m.centers))
                m.proj_delta.copy_(g)
                m.proj_state.copy_(torch.tensor([1.0, eta], dtype=torch.float64))
        self._resid.clear()
        self.features = None

    @torch.no_grad()
    def on_epoch_start(self, epoch: int) -> None:
        """k-means centers every ``kmeans_every`` epochs (the projection restarts with them)."""
        if self.kmeans_every > 0 and epoch % self.kmeans_every == 0:
            for m in self.layers().values():
                m.recompute_centers()
                m.proj_state.zero_()


__all__ = [
    "UPDATE_RULE_NOTES",
    "VARIANTS",
    "CenterLoss",
    "MCConv2d",
    "MCNTraining",
    "UInt8Act",
    "filter_loss",
    "kmeans_1d",
    "mc_layers",
    "project",
    "projection_loss",
    "symmetric_center",
]

"""Lower MCN layers (:class:`~bitflow.nn.mcn.MCConv2d`) to layers the converter already handles.

- The first layer (``replicate_input``, real input): the convolution of the ``K``-times replicated
  input with ``W`` is the convolution of the input with ``W`` summed over the replicas, the very
  float32 weight :meth:`MCConv2d.forward` uses -> ``nn.Conv2d`` (a float first layer).
- MCN-XNOR with MCN-1 modulation and symmetric centers (``BN -> sign -> MCconv``): output
  channel ``(h, k)`` is ``a * mean(M_k)`` times the binary response ``sign(x) (*) s_h``, which the
  layer computes as an exact integer convolution followed by one float32 multiplication ->
  a :class:`~bitflow.nn.BinaryConv2d` with weights ``s_h`` (replicated over ``k``) and per-channel
  ``alpha = a * mean(M_k)`` (> 0), the same float32 tensor: the BatchShift thresholds that follow
  are exact, exactly as for any binary conv.

- Real (float32) activations, the paper's W1/A32 (``mcn_*``, ``mcn1_*``), and U-MCN: the float
  fallback, an ``nn.Conv2d`` with the reconstructed weight ``W = C^ * M`` (float32 arithmetic;
  the 1-bit storage is not used by this form: ``bitflow summary`` shows what W1 would store).

Kept as :class:`MCConv2d` and converted by :func:`mcn_conv` (step kind ``mcnconv``):

- **W1/A8, MCN-1** (``input_quantizer="u8"``, symmetric centers): the layer computes
  ``y_(h,k) = c_(h,k) z_h`` with the exact integer ``z_h = q (*) s_h`` over the uint8 codes ``q``
  and the float32 ``c = 2^-f a mean(M_k)`` (:meth:`MCConv2d.u8_scale`) -> ``conv2d_u8b1`` (rows
  ``s_h`` for every ``k``) with ``alpha = c``. The codes come from the previous BatchNorm by
  ``threshold_u8``: ``q = #{j : BN(y) >= (j - 1/2) 2^-f}`` (:class:`~bitflow.nn.mcn.UInt8Act`)
  folds into 255 exact integer thresholds per channel
  (:func:`~bitflow.convert.batchshift.level_int_thresholds`), so the whole chain is integer and
  exact; after a float producer (the first layer, a float residual sum) ``threshold_f32_u8``
  takes float thresholds (near-threshold differences only, as for any float first layer).
  *Training must use* ``input_quantizer="u8"`` (``--model-arg act=u8``), the power-of-two grid
  ``2^-f`` (``act_frac``), symmetric centers and MCN-1, with any max-pool before the BatchNorm.
- **Full M** (MCN with u8 inputs, MCN-XNOR with sign inputs): ``Q[(h,k),(g,k'),u,v] =
  a s[h,g,k',u,v] M[k,u,v]`` has ``K W^2`` distinct reals per binary filter, no per-channel
  scale. Exact decomposition by taps:
  ``y_(h,k)(p) = a sum_{u,v} M[k,u,v] t_(h,u,v)(p*st + (u,v) - pad)`` with the integer per-tap
  responses ``t_(h,u,v) = x (*) s[h,:,u,v]`` (a 1x1 +-1 convolution with ``H W^2`` outputs over
  the unpadded input; zero padding of ``x`` is zero padding of ``t``). Engine: ``conv2d_u8b1``
  (u8) or ``bconv2d`` (bits) 1x1 -> ``scale_bias`` (``a 2^-f``, resp. ``a``) -> ``conv2d_f32``
  with the sparse weight ``w[(h,k), u, v, (h,u,v)] = M[k,u,v]`` (stride and padding of the
  layer). The integer work is ``K`` times smaller than the reconstructed conv's; the ``W^2``-term
  float sum is the only float step, so decisions after it are near-threshold, not exact.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..ir.bits import pack_bits
from ..nn import BinaryConv2d
from ..nn import quantizers as Q
from ..nn.functional import sign
from ..nn.mcn import MCConv2d, UInt8Act
from . import batchshift as bs
from ._core import Pending, _bn_params
from ._materialize import _Materialize
from ._trace import Step, unsupported

_EPS32 = float(np.finfo(np.float32).eps)


class FixedScaleSign(Q.WeightQuantizer):
    """``decompose(w) = (sign(w), alpha)`` with a fixed per-channel ``alpha`` (the lowered MCN-1
    modulation ``a * mean(M_k)``); inference only."""

    alpha: Tensor
    name = "mcn_fixed_scale"
    has_scale = True

    def __init__(self, alpha: Tensor) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha.detach().clone())

    def decompose(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return sign(w), self.alpha


def _binary_conv(layer: MCConv2d) -> BinaryConv2d:
    """The lowered MCN-1 binary MCconv: a plain :class:`BinaryConv2d` with ``+-1`` weights ``s_h``
    replicated over the ``K`` planes and ``alpha = a * mean(M_k)``."""
    conv = BinaryConv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        bias=False,
        input_quantizer=copy.deepcopy(layer.input_quantizer),
        weight_quantizer=FixedScaleSign(layer.plane_scale()),
        weight_clip=None,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.sign_filters().detach().repeat_interleave(layer.planes, dim=0))
    return conv


def _first_conv(layer: MCConv2d) -> nn.Conv2d:
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        bias=False,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.conv_weight().detach())
    return conv


def _float_conv(layer: MCConv2d) -> nn.Conv2d:
    """The float fallback (real activations, U-MCN): ``nn.Conv2d`` with ``W = C^ * M``."""
    return _first_conv(layer)


def _lower(name: str, layer: MCConv2d) -> nn.Module:
    """The deployable form of ``layer`` (itself when :func:`mcn_conv` converts it)."""
    iq = layer.input_quantizer
    if iq is None:
        return _float_conv(layer)
    if not layer.binary:
        raise unsupported(
            name, "MCConv2d", "U-MCN with quantized inputs: unbinarized filters have no 1-bit form"
        )
    if not (layer.symmetric and layer.num_centers == 2):
        raise unsupported(
            name,
            "MCConv2d",
            "only symmetric two-center (a1 = -a2) filters are 1-bit; train with symmetric=True "
            "(or use real activations, which convert as a float conv)",
        )
    if isinstance(iq, UInt8Act):
        return layer  # conv2d_u8b1 (MCN-1 exact, full M by taps): mcn_conv
    if layer.variant == "mcn1":
        return _binary_conv(layer)
    return layer  # MCN-XNOR with full M: taps, mcn_conv


def has_mcn(model: nn.Module) -> bool:
    return any(isinstance(m, MCConv2d) for m in model.modules())


def lower_mcn(model: nn.Module) -> nn.Module:
    """``model`` itself if it has no MCconv layers, else a copy (in eval mode) with each
    :class:`MCConv2d` replaced by its lowered equivalent under the same qualified name."""
    if not has_mcn(model):
        return model
    out = copy.deepcopy(model)
    out.eval()
    for name, m in list(out.named_modules()):
        if isinstance(m, MCConv2d):
            parent: Any = out
            *path, leaf = name.split(".")
            for p in path:
                parent = getattr(parent, p)
            setattr(parent, leaf, _lower(name, m))
    return out


# --------------------------------------------------------------------------- mcnconv steps
def u8_boundaries(iq: UInt8Act) -> list[Fraction | None]:
    """The 255 exact boundaries ``(j - 1/2) 2^-f``, ``j = 1..255``, of :class:`UInt8Act`."""
    return [Fraction(2 * j - 1, 2 ** (iq.frac + 1)) for j in range(1, 256)]


def to_u8(cv: _Materialize, p: Pending, st: Step) -> str:
    """Materialize ``p`` as the uint8 codes the MCN layer ``st`` reads: ``threshold_u8`` (exact
    integer thresholds on an int32 accumulator, max-pools on the accumulator first) or
    ``threshold_f32_u8`` (float producer, :func:`float_u8_thresholds`; attribute ``err_bound``:
    per channel, how far the engine's float32 value may lie from PyTorch's, for verify's
    near-threshold report)."""
    m = st.module
    assert isinstance(m, MCConv2d) and isinstance(m.input_quantizer, UInt8Act)
    if p.flatten is not None or p.chw is None:
        raise unsupported(st.name, "MCConv2d", "uint8 codes need a spatial (conv) input")
    bounds = u8_boundaries(m.input_quantizer)
    x = p.value
    tname = f"{p.bn_name or p.producer}.codes"
    attrs: dict[str, Any] = {"source": p.bn_name or p.producer}
    if p.is_int:
        th, ties = cv._int_levels(p, bounds, m)
        return cv._threshold_op(p, "threshold_u8", "codes", th.thr, th.direction, ties)[0]
    bnp_f = _bn_params(p.bn_name or "", p.bn) if p.bn is not None else None
    thr, direction = float_u8_thresholds(bnp_f, bounds, relu=p.relu, channels=p.channels)
    for name, a in p.pools:
        x = cv.b.add("maxpool_f32", x, name=name, attrs=a)
    err = np.zeros(p.channels) if p.err_bound is None else np.asarray(p.err_bound, np.float64)
    # the thresholds are rounded to float32: one more ulp of the largest finite one
    fin = np.where(np.isfinite(thr), np.abs(thr), 0).max(axis=1, initial=0)
    err = err + np.spacing(fin.astype(np.float32)).astype(np.float64)
    return cv.b.add(
        "threshold_f32_u8",
        x,
        name=tname,
        attrs={**attrs, "err_bound": [float(v) for v in err]},
        params={"thr": thr, "direction": direction},
    )


def float_u8_thresholds(
    bn: bs.BNParams | None,
    boundaries: list[Fraction | None],
    *,
    relu: bool,
    channels: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``threshold_f32_u8`` thresholds of ``q = #{j : BN(relu?(y)) >= b_j}`` on a float32 ``y``.

    With ``s = gamma / sqrt(var + eps)``: ``gamma > 0``: ``y >= t_j = mean + (b_j - beta) / s``
    (``-inf`` when ReLU makes it always true, ``t_j <= 0``); ``gamma < 0``: ``y <= t_j``
    (direction -1; ``-inf``, never passed, when ``t_j < 0`` under ReLU); ``gamma = 0``: constant.
    Computed in float64 and rounded to float32, vectorized: a value within an ulp of ``t_j`` may
    be counted differently from PyTorch's float32 BN, which the ``err_bound`` of the op covers
    (the float decisions before an MCconv are near-threshold ones anyway; the exact bisection of
    ``batchshift.float_thresholds`` costs ~2 ms per threshold, 255 per channel)."""
    b = np.array([float(v) if v is not None else -np.inf for v in boundaries], np.float64)
    if bn is None:
        mean, s, beta = np.zeros(channels), np.ones(channels), np.zeros(channels)
        gamma = np.ones(channels)
    else:
        gamma = bn.gamma.astype(np.float64)
        mean, beta = bn.mean.astype(np.float64), bn.beta.astype(np.float64)
        s = gamma / np.sqrt(bn.var.astype(np.float64) + float(bn.eps))
    up = gamma >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean[:, None] + (b[None, :] - beta[:, None]) / np.where(s == 0, 1.0, s)[:, None]
    if relu:
        t = np.where(up[:, None], np.where(t <= 0, -np.inf, t), np.where(t < 0, -np.inf, t))
    const = np.where(beta[:, None] >= b[None, :], -np.inf, np.inf)  # gamma = 0: BN = beta
    t = np.where((gamma == 0)[:, None], const, t)
    thr = np.sort(t.astype(np.float32), axis=1)
    return np.ascontiguousarray(thr), np.where(up, 1, -1).astype(np.int8)


def _sign_rows(layer: MCConv2d) -> np.ndarray:
    """``s [H, W, W, G*K]`` (+-1, NHWC tap order) of a symmetric binary layer."""
    with torch.no_grad():
        s = layer.sign_filters().detach().numpy()  # [H, G*K, W, W]
    return np.ascontiguousarray(s.transpose(0, 2, 3, 1))


def mcn_conv(cv: _Materialize, p: Pending, st: Step) -> Pending:
    """Convert an :class:`MCConv2d` kept by :func:`lower_mcn` (module docstring)."""
    m = st.module
    assert isinstance(m, MCConv2d)
    if p.flatten is not None or p.chw is None:
        raise unsupported(st.name, "MCConv2d", "an MCconv needs a spatial input")
    if m.in_channels != p.channels:
        raise ValueError(f"layer {st.name!r} expects {m.in_channels} channels, gets {p.channels}")
    iq = m.input_quantizer
    u8 = isinstance(iq, UInt8Act)
    if u8:
        x = to_u8(cv, p, st)
    else:
        x, _ = cv.to_bits(p, st.name)
    cin, kk, o = m.in_channels, m.kernel_size, m.out_channels
    s = _sign_rows(m)  # [H, kh, kw, C]
    base = {"channels": cin, "source": st.name}
    if u8:
        base["input_encoding"] = "u8"
    if u8 and m.u8_exact():
        w = pack_bits(np.repeat(s, m.planes, axis=0) < 0)  # row (h, k) = s_h
        out = cv.b.add(
            "conv2d_u8b1",
            x,
            name=st.name,
            attrs={**base, "stride": [m.stride] * 2, "padding": [m.padding] * 2},
            params={"w": w},
        )
        v = cv.b.values[out]
        n = 255 * cin * kk * kk
        with torch.no_grad():
            alpha = m.u8_scale().detach().to(torch.float32).numpy().astype(np.float32)
        if not np.all(np.isfinite(alpha)) or np.any(alpha <= 0):
            raise ValueError(f"layer {st.name!r}: the scale 2^-f a mean(M_k) must be > 0")
        return Pending(
            out,
            st.name,
            True,
            o,
            (o, v.shape[0], v.shape[1]),
            alpha=alpha,
            bias=np.zeros(o, np.float32),
            lo=np.full(o, -n),
            hi=np.full(o, n),
        )
    # full M: per-tap integer responses, then the float W^2-term sum (module docstring)
    h, taps = m.out_maps, kk * kk
    rows = s.reshape(h * taps, 1, 1, cin)  # row (h, u, v) = s[h, u, v, :]
    one = {**base, "stride": [1, 1], "padding": [0, 0]}
    if not u8:
        one["pad_value"] = 0
    t = cv.b.add(
        "conv2d_u8b1" if u8 else "bconv2d",
        x,
        name=f"{st.name}.taps",
        attrs=one,
        params={"w": pack_bits(rows < 0)},
    )
    with torch.no_grad():
        a = float(m.symmetric_scale())
        mf = m.m_filter.detach().to(torch.float32).numpy()  # [K, W, W]
    step = iq.step if isinstance(iq, UInt8Act) else 1.0
    sc = np.float32(np.float32(a) * np.float32(step))
    y = cv.b.add(
        "scale_bias",
        t,
        name=f"{st.name}.tap_scale",
        params={"scale": np.full(h * taps, sc, np.float32), "bias": np.zeros(h * taps, np.float32)},
    )
    w = np.zeros((o, kk, kk, h * taps), np.float32)
    for hh in range(h):
        for k in range(m.planes):
            for u in range(kk):
                for vv in range(kk):
                    w[hh * m.planes + k, u, vv, hh * taps + u * kk + vv] = mf[k, u, vv]
    # |engine - exact| and |PyTorch's conv with W - exact| are both <= (n + 3) eps32 sum|terms|,
    # n = C W^2 terms of size a 2^-f M[k,u,v] q <= a 2^-f M 255 (u8), a M (signs)
    amax = 255.0 if u8 else 1.0
    msum = np.abs(mf).reshape(m.planes, -1).sum(1).astype(np.float64)
    e = (cin * taps + 3) * _EPS32 * abs(a) * step * amax * cin * msum  # [K]
    err = np.tile(e, h)
    out = cv.b.add(
        "conv2d_f32",
        y,
        name=st.name,
        attrs={
            "stride": [m.stride] * 2,
            "padding": [m.padding] * 2,
            "source": st.name,
            "err_bound": [float(v) for v in err],  # per output channel, each implementation
        },
        params={"w": w},
    )
    v = cv.b.values[out]
    return Pending(out, st.name, False, o, (o, v.shape[0], v.shape[1]), err_bound=err)


__all__ = [
    "FixedScaleSign",
    "has_mcn",
    "lower_mcn",
    "mcn_conv",
    "float_u8_thresholds",
    "to_u8",
    "u8_boundaries",
]

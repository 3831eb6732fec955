"""BatchShift: fuse (scaling factor, bias, ReLU, max-pool, BatchNorm, sign) into one threshold.

This module is torch-free: it works on numpy arrays holding the float32 parameters of a trained
model and evaluates every decision *exactly* (rational arithmetic on the float32 values, with the
square root handled by comparing squares), so the integer rule it produces is a theorem about the
real-valued model, not a float approximation of it.

The composite (BitFlow-Net Eq. 12, 16; docs/architecture.md §3)
-----------------------------------------------------------------
A binary layer produces an integer ``x`` per output channel (the xnor-popcount dot product,
``x`` in ``[-N, N]`` for fan-in ``N``; for the int8 first layer the int32 accumulator). The
model then computes, per channel, with ``alpha >= 0`` (Eq. 3, 5; 1 without a scaling factor;
0 for a filter whose weights are all zero, which makes ``z = b`` and the decision a constant) and
a layer bias ``b`` (usually 0)::

    z   = alpha * x + b
    z'  = relu(z)          (optional)
    z'' = maxpool(z')      (optional; commutes with every monotone map below)
    out = sign(BN(z''))    BN(z) = gamma * (z - mu) / s + beta,  s = sqrt(var + eps)

With ``sign(0) = +1`` (Eq. 2) and ``s > 0``::

    sign(BN(z)) = +1  <=>  gamma * (z - mu) + beta * s >= 0                      (*)

``(*)`` is monotone in ``z`` (non-decreasing for ``gamma > 0``, non-increasing for ``gamma < 0``,
constant ``sign(beta)`` for ``gamma = 0``), and ``z`` is non-decreasing in ``x``, so the whole
composite is a monotone step function of the integer ``x``:

- ``gamma > 0``: ``+1 iff x >= T`` with ``T = ceil(tau)``, ``tau = (mu - beta*s/gamma - b) / alpha``
- ``gamma < 0``: ``+1 iff x <= T`` with ``T = floor(tau)``
- ``gamma = 0``: the constant ``sign(beta)``

With the ReLU in between, ``z' >= 0``: for ``gamma > 0`` the output is always +1 when
``c = mu - beta*s/gamma <= 0``; for ``gamma < 0`` it is always -1 when ``c < 0``. Instead of
special-casing these, :func:`int_thresholds` searches the smallest (largest) reachable integer for
which the exact predicate ``(*)`` of the full composite holds; the predicate includes the ReLU,
so every case falls out of the same monotone search. A threshold that every reachable ``x``
passes (or none does) becomes a constant, written for the native ``threshold_bits`` op as
``thr = INT32_MIN`` with ``direction = +1`` (always +1) or ``direction = -1`` (always -1).

Max-pooling commutes with the composite: ``g(max_i x_i) = max_i g(x_i)`` for a non-decreasing
``g`` and ``min_i g(x_i)`` for a non-increasing one. On packed bits (bit 1 = -1) the max of +-1
values is an AND and the min is an OR, so a pool can run *after* the threshold on bits.

Why the paper's Eq. 13 is inexact
---------------------------------
Eq. 13 rewrites ``BN(alpha x)`` as ``(x - E[alpha x]/alpha) / sqrt(Var[alpha x]/alpha^2 + eps)``,
i.e. it assumes ``BN(alpha x) = BN(x)`` (Eq. 6). But

    sqrt(Var[alpha x] + eps) = alpha * sqrt(Var[alpha x]/alpha^2 + eps/alpha^2)
                             != alpha * sqrt(Var[alpha x]/alpha^2 + eps),

because ``Var[alpha x] + eps != alpha^2 (Var[x] + eps)`` unless ``eps = 0`` or ``alpha = 1``. The
stored running variance is ``Var[alpha x]`` (BN sees ``alpha x`` during training, Eq. 18), so the
paper's threshold ``tau_paper = mu/alpha - beta * sqrt(var/alpha^2 + eps) / gamma`` differs
from the exact ``tau = mu/alpha - beta * sqrt(var/alpha^2 + eps/alpha^2) / gamma``; the error
grows with ``eps / (alpha^2 var)`` and flips signs once ``|tau - tau_paper|`` crosses an integer.
:func:`paper_threshold` implements Eq. 13-17 as printed so that tests can show this.

Multi-bit activations (MBBN, Eq. 7-9, 21)
-----------------------------------------
An ``M``-bit activation quantizer maps its input ``u`` (here ``u = BN(z'')``) to an odd level
``v = 2q - L`` with ``L = 2^M - 1`` and ``q = #{l : u >= b_l}`` for ``L`` ascending boundaries
``b_0 < ... < b_{L-1}`` (``-inf`` allowed: always passed); for the odd-level ladder of range
``t`` they are ``b_l = 2 j t / L``, ``j = l - (2^(M-1) - 1)`` (Table II: ``-2/3, 0, 2/3`` for
``M = 2``, ``t = 1``). Every step ``u >= b_l`` is the predicate ``(*)`` with ``beta`` replaced
by ``beta - b_l``::

    BN(z) >= b  <=>  gamma * (z - mu) + (beta - b) * s >= 0                      (**)

so each boundary gets its own exact integer threshold ``T_l`` by the same monotone search, and
with ``gamma > 0`` ``q = #{l : x >= T_l}``, with ``gamma < 0`` ``q = #{l : x <= T_l}``
(``gamma = 0``: ``q`` is the constant ``#{l : beta >= b_l}``). Because ``b_l`` ascends, the
``T_l`` ascend for ``gamma > 0`` and descend for ``gamma < 0``; the count does not depend on the
order, so the native ``threshold_planes`` op gets them sorted ascending. A boundary passed by
every reachable ``x`` becomes ``INT32_MIN`` (``x >= INT32_MIN``, direction +1) or ``INT32_MAX``
(``x <= INT32_MAX``, direction -1); one passed by none becomes ``hi + 1`` (+1) or ``lo - 1``
(-1). ``q``'s binary digits are the ``M`` planes (``c_m = +1`` iff bit ``m`` of ``q`` is 1,
Eq. 7: ``sum_m 2^m c_m = 2q - L = v``). :func:`level_int_thresholds`.

For a float32 first layer the same boundaries give float32 thresholds
(:func:`level_float_thresholds`), one per (channel, boundary): the "thermometer" bits
``e_l = +1`` iff ``u >= b_l`` satisfy ``sum_l e_l = 2q - L = v``, so a binary layer that sees
each channel's ``L`` thermometer bits with that channel's weight repeated ``L`` times computes
exactly ``sum_c v_c w_c``.

Float first layer
-----------------
For a float32 first-layer output ``y`` the same predicate gives a float32 threshold: the smallest
(largest) float32 value ``f`` with ``(*)`` true, so ``y >= f`` (``y <= f``) reproduces the exact
real-valued decision for every float32 ``y`` (:func:`float_thresholds`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# Threshold kinds (per channel).
GE = 1  # +1 iff x >= thr
LE = -1  # +1 iff x <= thr
CONST_POS = 2  # always +1
CONST_NEG = -2  # always -1


@dataclass(frozen=True)
class BNParams:
    """Per-channel inference BatchNorm parameters (float32 values), BitFlow-Net Eq. 11.

    ``BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta``.
    """

    mean: np.ndarray
    var: np.ndarray
    eps: float
    gamma: np.ndarray
    beta: np.ndarray

    def __post_init__(self) -> None:
        arrays = {"mean": self.mean, "var": self.var, "gamma": self.gamma, "beta": self.beta}
        n = None
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.ndim != 1:
                raise ValueError(f"BNParams.{name} must be 1-D, got shape {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"BNParams.{name} contains NaN or infinity")
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise ValueError(f"BNParams.{name} has {a.shape[0]} channels, expected {n}")
            object.__setattr__(self, name, a.astype(np.float32))
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"BNParams.eps must be finite and >= 0, got {self.eps}")
        if np.any(self.var < 0):
            raise ValueError("BNParams.var must be >= 0 (a running variance)")
        v = self.var.astype(np.float64) + float(self.eps)
        if np.any(v <= 0):
            raise ValueError("BNParams: var + eps must be > 0 (BatchNorm would divide by zero)")

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @staticmethod
    def identity(channels: int) -> BNParams:
        """The BN that changes nothing: ``BN(z) = z`` (used when no BN precedes a sign)."""
        one = np.ones(channels, np.float32)
        zero = np.zeros(channels, np.float32)
        return BNParams(mean=zero, var=one, eps=0.0, gamma=one, beta=zero)


@dataclass(frozen=True)
class Thresholds:
    """Per-channel thresholds in the native op's encoding.

    ``thr`` (int32 or float32) and ``direction`` (int8, +1 / -1): the output is +1 iff
    ``x >= thr`` (direction +1) or ``x <= thr`` (direction -1); constants use ``thr = INT32_MIN``
    (``-inf`` for floats). ``kind`` holds GE / LE / CONST_POS / CONST_NEG per channel and
    ``tau`` the real threshold (float64 approximation, NaN where no boundary exists) for reports.
    """

    thr: np.ndarray
    direction: np.ndarray
    kind: np.ndarray
    tau: np.ndarray

    @property
    def pool_op(self) -> str | None:
        """``"and"`` if every channel is non-decreasing (or constant), ``"or"`` if every channel
        is non-increasing (or constant), ``None`` when mixed (pool before thresholding)."""
        if np.all(self.kind != LE):
            return "and"
        if np.all(self.kind != GE):
            return "or"
        return None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Reference evaluation on the last axis: returns int8 +-1 values."""
        thr = self.thr
        pos = np.where(self.direction > 0, x >= thr, x <= thr)
        return np.where(pos, 1, -1).astype(np.int8)


# --------------------------------------------------------------------------- exact predicate


def _sgn(q: Fraction) -> int:
    return (q > 0) - (q < 0)


def sign_a_plus_b_sqrt(a: Fraction, b: Fraction, v: Fraction) -> int:
    """Exact sign (-1, 0, +1) of ``a + b * sqrt(v)`` for rationals ``a, b`` and ``v >= 0``.

    If ``a`` and ``b sqrt(v)`` have the same sign (or one is 0) the answer is immediate;
    otherwise ``sign = sign(a) * sign(a^2 - b^2 v)`` (compare magnitudes by their squares).
    """
    if v < 0:
        raise ValueError("sqrt of a negative number")
    sa = _sgn(a)
    sb = _sgn(b) if v != 0 else 0
    if sb == 0:
        return sa
    if sa == 0 or sa == sb:
        return sb
    d = a * a - b * b * v
    if d == 0:
        return 0
    return sa if d > 0 else sb


@dataclass(frozen=True, order=True)
class Boundary:
    """One step of a quantizer in exact form: ``u`` passes iff ``u >= at`` (``strict``: ``u > at``).

    The converter's boundaries are the points where PyTorch's float32 quantizer changes level,
    moved to the real line: an M-bit quantizer applied to float32 values has a float32 step
    ``b'`` (the smallest float32 it puts in the upper level), and a real value ``u`` rounded to
    the nearest float32 (ties to even) lands at or above ``b'`` iff ``u >= (pred(b') + b') / 2``
    when ``b'`` has an even significand (the midpoint rounds to ``b'``), else iff ``u >`` that
    midpoint (see :func:`bitflow.convert._mbbn.quantizer_boundaries`). A plain ``Fraction`` ``b``
    stands for ``Boundary(b)`` (``u >= b``).
    """

    at: Fraction
    strict: bool = False

    def __float__(self) -> float:
        return float(self.at)

    def passes(self, u: Fraction) -> bool:
        """``u > at`` if strict, else ``u >= at`` (exact)."""
        return u > self.at if self.strict else u >= self.at


def _as_boundary(b: Fraction | Boundary) -> Boundary:
    return b if isinstance(b, Boundary) else Boundary(Fraction(b))


class _Lane:
    """Exact decision ``sign(BN(relu?(alpha * x + b))) == +1`` for one channel (with a boundary
    ``b``: ``BN(...) >= b``, or ``BN(...) > b`` for a strict one)."""

    def __init__(
        self,
        alpha: float,
        bias: float,
        relu: bool,
        mean: float,
        var: float,
        eps: float,
        gamma: float,
        beta: float,
        boundary: Fraction | Boundary = Fraction(0),
    ) -> None:
        bd = _as_boundary(boundary)
        self.strict = bd.strict
        self.alpha = Fraction(alpha)
        self.bias = Fraction(bias)
        self.relu = relu
        self.mean = Fraction(mean)
        self.v = Fraction(var) + Fraction(eps)
        self.gamma = Fraction(gamma)
        # BN(z) >= b  <=>  gamma (z - mu) + (beta - b) s >= 0: a boundary b shifts beta
        self.beta = Fraction(beta) - bd.at

    def z(self, x: Fraction) -> Fraction:
        z = self.alpha * x + self.bias
        if self.relu and z < 0:
            return Fraction(0)
        return z

    def positive(self, x: int | Fraction) -> bool:
        """``gamma * (z - mu) + beta * sqrt(var + eps) >= 0`` (Eq. (*) in the module doc; with a
        boundary ``b``, ``beta`` stands for ``beta - b``: the predicate ``BN(z) >= b``; for a
        strict boundary ``BN(z) > b``, i.e. the expression ``> 0``)."""
        z = self.z(Fraction(x))
        sg = sign_a_plus_b_sqrt(self.gamma * (z - self.mean), self.beta, self.v)
        return sg > 0 if self.strict else sg >= 0

    def negative(self, x: int | Fraction) -> bool:
        """``not positive(x)``."""
        return not self.positive(x)

    def tau(self) -> float:
        """Real threshold on ``x`` ignoring the ReLU (float64, for reports; NaN when the decision
        does not depend on ``x``: ``gamma = 0`` or ``alpha = 0``)."""
        g = float(self.gamma)
        if g == 0.0 or self.alpha == 0:
            return math.nan
        c = float(self.mean) - float(self.beta) * math.sqrt(float(self.v)) / g
        return (c - float(self.bias)) / float(self.alpha)


def _first_true(pred: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest ``t`` in ``[lo, hi]`` with ``pred(t)`` for a non-decreasing predicate, else ``hi+1``."""
    if not pred(hi):
        return hi + 1
    a, b = lo - 1, hi  # invariant: pred(b) is True, pred(a) False (or a = lo - 1)
    while b - a > 1:
        m = (a + b) // 2
        if pred(m):
            b = m
        else:
            a = m
    return b


def _first_true_near(pred: Callable[[int], bool], lo: int, hi: int, guess: float) -> int:
    """:func:`_first_true` started from a float estimate ``guess`` of the answer: gallop away
    from it (steps 1, 2, 4, ...) until the answer is bracketed, then bisect. The result is the
    same for any guess (only exact ``pred`` evaluations decide); a good guess needs a handful
    of evaluations instead of ``log2(hi - lo)``. After three steps away from the guess the far
    end of the range is tried once: a rule that is constant on ``[lo, hi]`` (the float guess
    ignores a ReLU's flat part, so it can lie far outside) then costs ~5 evaluations, not
    ``2 log2(hi - lo)``: a 4x faster 8-bit MBBN conversion (255 boundaries per channel)."""
    if not math.isfinite(guess):
        return _first_true(pred, lo, hi)
    g = min(max(math.ceil(guess), lo), hi)
    step = 1
    if pred(g):  # answer <= g: walk down to a False point (or below lo)
        b = g
        while True:
            a = b - step
            if a < lo:
                a = lo - 1
                break
            if step == 4 and pred(lo):  # far from the guess (a ReLU-flat rule): maybe constant
                return lo
            if not pred(a):
                break
            b, step = a, step * 2
    else:  # answer > g: walk up to a True point (or past hi)
        a = g
        while True:
            b = a + step
            if step == 4 and b < hi and not pred(hi):
                return hi + 1
            if b >= hi:
                if not pred(hi):
                    return hi + 1
                b = hi
                break
            if pred(b):
                break
            a, step = b, step * 2
    while b - a > 1:  # pred(b) True, pred(a) False (or a = lo - 1)
        m = (a + b) // 2
        if pred(m):
            b = m
        else:
            a = m
    return b


def _last_true(pred: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest ``t`` in ``[lo, hi]`` with ``pred(t)`` for a non-increasing predicate, else ``lo-1``."""
    if not pred(lo):
        return lo - 1
    a, b = lo, hi + 1  # pred(a) True, pred(b) False (or b = hi + 1)
    while b - a > 1:
        m = (a + b) // 2
        if pred(m):
            a = m
        else:
            b = m
    return a


def _broadcast(name: str, a: np.ndarray | float | int, n: int, dtype: type) -> np.ndarray:
    arr: np.ndarray = np.asarray(a, dtype=dtype)
    if arr.ndim == 0:
        arr = np.full(n, arr, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    return arr


def _lanes(
    alpha: np.ndarray | float,
    bias: np.ndarray | float,
    bn: BNParams | None,
    relu: bool,
    n: int,
    boundary: Fraction | Boundary | Sequence[Fraction | Boundary] = Fraction(0),
) -> list[_Lane]:
    """One exact lane per channel; ``boundary`` is one boundary for all channels or one per
    channel (ReActNet's RSign shift ``beta_c``: the decision ``BN(z) >= beta_c``). Every entry
    is normalised to a :class:`Boundary`; a plain ``Fraction`` ``b`` is ``Boundary(b)``
    (``BN(z) >= b``), a strict one decides ``BN(z) > b``."""
    bn = bn if bn is not None else BNParams.identity(n)
    bounds = [
        _as_boundary(b)
        for b in (
            [boundary] * n if isinstance(boundary, (Fraction, Boundary, int)) else list(boundary)
        )
    ]
    if len(bounds) != n:
        raise ValueError(f"boundary has {len(bounds)} entries, the layer has {n} channels")
    if bn.channels != n:
        raise ValueError(f"BatchNorm has {bn.channels} channels, the layer has {n}")
    al = _broadcast("alpha", alpha, n, np.float32)
    bi = _broadcast("bias", bias, n, np.float32)
    if not np.all(np.isfinite(al)) or np.any(al < 0):
        raise ValueError("every scaling factor alpha must be finite and >= 0")
    if not np.all(np.isfinite(bi)):
        raise ValueError("the layer bias contains NaN or infinity")
    return [
        _Lane(
            float(al[i]),
            float(bi[i]),
            relu,
            float(bn.mean[i]),
            float(bn.var[i]),
            float(bn.eps),
            float(bn.gamma[i]),
            float(bn.beta[i]),
            bounds[i],
        )
        for i in range(n)
    ]


def int_thresholds(
    *,
    lo: np.ndarray | int,
    hi: np.ndarray | int,
    bn: BNParams | None,
    alpha: np.ndarray | float = 1.0,
    bias: np.ndarray | float = 0.0,
    relu: bool = False,
    channels: int | None = None,
    boundary: Fraction | Boundary | Sequence[Fraction | Boundary] = Fraction(0),
) -> Thresholds:
    """Exact integer thresholds for ``sign(BN(pool(relu?(alpha * x + bias))))`` per channel.

    With ``boundary = b`` (an exact rational or :class:`Boundary`, or one per channel) the rule
    decides ``BN(...) >= b`` instead of ``BN(...) >= 0`` (one step of a multi-bit quantizer,
    :func:`level_int_thresholds`; ReActNet's RSign ``sign(u - beta_c)`` with ``b = beta_c``); a
    strict :class:`Boundary` decides ``BN(...) > b``. A plain ``Fraction`` ``b`` is
    ``Boundary(b)`` (not strict).

    ``x`` ranges over the reachable integers ``[lo, hi]`` (``[-N, N]`` for a binary layer with
    fan-in ``N``; the int32 accumulator range for the int8 first layer). ``bn=None`` means no
    BatchNorm (plain sign). Returns int32 ``thr`` / int8 ``direction`` as the native
    ``threshold_bits`` op expects (see :class:`Thresholds`); ``T`` is clamped to the reachable
    range, so an always-true or never-true rule becomes a constant.
    """
    if channels is None:
        channels = bn.channels if bn is not None else int(np.size(alpha))
    los = _broadcast("lo", lo, channels, np.int64)
    his = _broadcast("hi", hi, channels, np.int64)
    if np.any(los > his):
        raise ValueError("reachable range must satisfy lo <= hi")
    if np.any(los < INT32_MIN + 1) or np.any(his > INT32_MAX):
        raise ValueError("reachable range does not fit the int32 accumulator")
    lanes = _lanes(alpha, bias, bn, relu, channels, boundary)
    thr = np.empty(channels, np.int32)
    direction = np.empty(channels, np.int8)
    kind = np.empty(channels, np.int8)
    tau = np.empty(channels, np.float64)
    for i, lane in enumerate(lanes):
        lo_i, hi_i = int(los[i]), int(his[i])
        tau[i] = lane.tau()
        if lane.gamma > 0:
            t = _first_true_near(lane.positive, lo_i, hi_i, tau[i])
            if t <= lo_i:
                k = CONST_POS
            elif t > hi_i:
                k = CONST_NEG
            else:
                k = GE
        elif lane.gamma < 0:
            # largest x with pred = (smallest x without it) - 1, the search started near tau
            t = _first_true_near(lane.negative, lo_i, hi_i, tau[i] + 1) - 1
            if t >= hi_i:
                k = CONST_POS
            elif t < lo_i:
                k = CONST_NEG
            else:
                k = LE
        else:
            t = 0
            k = CONST_POS if lane.positive(lo_i) else CONST_NEG
        kind[i] = k
        if k == GE:
            thr[i], direction[i] = t, 1
        elif k == LE:
            thr[i], direction[i] = t, -1
        elif k == CONST_POS:
            thr[i], direction[i] = INT32_MIN, 1
        else:
            thr[i], direction[i] = INT32_MIN, -1
    return Thresholds(thr=thr, direction=direction, kind=kind, tau=tau)


# --------------------------------------------------------------------------- float thresholds

_F32_MAX_KEY = int(np.array(np.finfo(np.float32).max, np.float32).view(np.int32))


def _f32_from_key(k: int) -> float:
    """Inverse of the order-preserving map float32 -> int (negative floats get negative keys)."""
    bits = k if k >= 0 else ((-k) | 0x80000000)
    return float(np.array(bits & 0xFFFFFFFF, np.uint32).view(np.float32))


def f32_from_keys(keys: np.ndarray) -> np.ndarray:
    """:func:`_f32_from_key` on a whole int64 array at once (float32 result, same shape).

    The tie counts of the converter evaluate windows of up to ``2 * 4096 + 1`` keys per lane;
    one Python call per key made a layer of 2,000 lanes take a minute when one subnormal gamma
    widened every window to the maximum (PyTorch's float32 BN rounds such a channel far from
    the exact threshold). Vectorized, that worst case costs well under a second.
    """
    k = np.asarray(keys, np.int64)
    bits = np.where(k >= 0, k, (-k) | 0x80000000) & 0xFFFFFFFF
    return bits.astype(np.uint32).view(np.float32)


def f32_keys(x: np.ndarray) -> np.ndarray:
    """The order-preserving int64 key of every float32 in ``x`` (inverse of :func:`f32_from_keys`)."""
    k = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(k < 0, -(k & 0x7FFFFFFF), k)


def float_thresholds(
    bn: BNParams | None,
    *,
    relu: bool = False,
    channels: int | None = None,
    boundary: Fraction | Boundary | Sequence[Fraction | Boundary] = Fraction(0),
) -> Thresholds:
    """Float32 thresholds for ``sign(BN(pool(relu?(y))))`` on a float32 first-layer output ``y``.

    For ``gamma > 0`` ``thr`` is the smallest finite float32 ``f`` for which the exact predicate
    holds (then ``y >= f`` equals the exact decision for every float32 ``y``); for ``gamma < 0``
    the largest such ``f`` with direction -1. Constants: ``thr = -inf`` with direction +1 (always
    +1) or -1 (always -1 for finite ``y``). Searched by bisection over the ordered float32 values.
    ``boundary`` (one for all channels or one per channel) moves the decision to ``BN(...) >= b``
    (``> b`` for a strict :class:`Boundary`), as in :func:`int_thresholds`.
    """
    if channels is None:
        if bn is None:
            raise ValueError("channels is required when bn is None")
        channels = bn.channels
    lanes = _lanes(1.0, 0.0, bn, relu, channels, boundary)
    thr = np.empty(channels, np.float32)
    direction = np.empty(channels, np.int8)
    kind = np.empty(channels, np.int8)
    tau = np.empty(channels, np.float64)
    lo, hi = -_F32_MAX_KEY, _F32_MAX_KEY
    for i, lane in enumerate(lanes):
        tau[i] = lane.tau()

        def pred(k: int, lane: _Lane = lane) -> bool:
            return lane.positive(Fraction(_f32_from_key(k)))

        if lane.gamma > 0:
            t = _first_true(pred, lo, hi)
            k = CONST_POS if t <= lo else (CONST_NEG if t > hi else GE)
        elif lane.gamma < 0:
            t = _last_true(pred, lo, hi)
            k = CONST_POS if t >= hi else (CONST_NEG if t < lo else LE)
        else:
            t = 0
            k = CONST_POS if lane.positive(0) else CONST_NEG
        kind[i] = k
        if k in (GE, LE):
            thr[i], direction[i] = _f32_from_key(t), k
        else:
            thr[i], direction[i] = -np.inf, (1 if k == CONST_POS else -1)
    return Thresholds(thr=thr, direction=direction, kind=kind, tau=tau)


# --------------------------------------------------------------------------- multi-bit levels


@dataclass(frozen=True)
class LevelThresholds:
    """Per-channel thresholds of an ``M``-bit quantizer in the native ``threshold_planes`` form.

    ``thr`` int32 ``[O, L]`` sorted ascending per row, ``L = 2^M - 1``; ``direction`` int8
    ``[O]``: the level is ``v = 2q - L`` with ``q = #{l : x >= thr[o, l]}`` (direction +1) or
    ``q = #{l : x <= thr[o, l]}`` (direction -1). ``kind`` ``[O, L]`` holds GE / LE /
    CONST_POS / CONST_NEG of every boundary (boundary order, not sorted) for reports.
    """

    thr: np.ndarray
    direction: np.ndarray
    kind: np.ndarray

    @property
    def levels_count(self) -> int:
        return int(self.thr.shape[1])

    def counts(self, x: np.ndarray) -> np.ndarray:
        """``q`` for integer inputs ``x [..., O]`` (int64)."""
        xi = np.asarray(x, np.int64)[..., None]
        t = self.thr.astype(np.int64)
        ge = (xi >= t).sum(-1)
        le = (xi <= t).sum(-1)
        return np.where(self.direction > 0, ge, le).astype(np.int64)

    def levels(self, x: np.ndarray) -> np.ndarray:
        """Odd levels ``v = 2q - L`` for integer inputs ``x [..., O]`` (int64)."""
        return 2 * self.counts(x) - self.levels_count


def _check_boundaries(
    boundaries: Sequence[Fraction | Boundary | None],
) -> list[Boundary | None]:
    bs_ = [None if b is None else _as_boundary(b) for b in boundaries]
    n = len(bs_)
    if n < 1 or (n + 1) & n:
        raise ValueError(f"a multi-bit quantizer needs 2^M - 1 boundaries, got {n}")
    finite = [b for b in bs_ if b is not None]
    if any(b is None for b in bs_[len(bs_) - len(finite) :]) or any(
        b1 >= b2 for b1, b2 in zip(finite, finite[1:], strict=False)
    ):
        raise ValueError("boundaries must ascend strictly (None = -inf, only at the start)")
    return bs_


def level_int_thresholds(
    *,
    lo: np.ndarray | int,
    hi: np.ndarray | int,
    bn: BNParams | None,
    boundaries: Sequence[Fraction | Boundary | None],
    alpha: np.ndarray | float = 1.0,
    bias: np.ndarray | float = 0.0,
    relu: bool = False,
    channels: int | None = None,
) -> LevelThresholds:
    """Exact integer thresholds of ``v = Q_M(BN(pool(relu?(alpha x + bias))))`` per channel.

    ``Q_M`` is an ``M``-bit odd-level quantizer given by its ``2^M - 1`` ascending
    ``boundaries`` (exact rationals or :class:`Boundary`; ``None`` = ``-inf``, always passed), see "Multi-bit
    activations" in the module docstring: ``(**)`` per boundary, searched over the reachable
    integers ``[lo, hi]``. Returns the ``threshold_planes`` form (:class:`LevelThresholds`).
    """
    bl = _check_boundaries(boundaries)
    if channels is None:
        channels = bn.channels if bn is not None else int(np.size(alpha))
    his = _broadcast("hi", hi, channels, np.int64)
    los = _broadcast("lo", lo, channels, np.int64)
    if np.any(his >= INT32_MAX) or np.any(los <= INT32_MIN):
        raise ValueError(
            "reachable range must lie strictly inside int32 (the thresholds need hi + 1, lo - 1)"
        )
    gam = (bn.gamma if bn is not None else np.ones(channels, np.float32)).astype(np.float64)
    direction = np.where(gam < 0, -1, 1).astype(np.int8)
    n_l = len(bl)
    thr = np.empty((channels, n_l), np.int64)
    kind = np.empty((channels, n_l), np.int8)
    for l_, b in enumerate(bl):
        if b is None:
            kind[:, l_] = CONST_POS
        else:
            th = int_thresholds(
                lo=los,
                hi=his,
                bn=bn,
                alpha=alpha,
                bias=bias,
                relu=relu,
                channels=channels,
                boundary=b,
            )
            kind[:, l_] = th.kind
            thr[:, l_] = th.thr
        k = kind[:, l_]
        up = direction > 0
        thr[:, l_] = np.where(
            k == CONST_POS,
            np.where(up, INT32_MIN, INT32_MAX),
            np.where(k == CONST_NEG, np.where(up, his + 1, los - 1), thr[:, l_]),
        )
    if np.any((kind == GE) & (direction[:, None] < 0)) or np.any(
        (kind == LE) & (direction[:, None] > 0)
    ):
        raise AssertionError(
            "internal error: threshold kind disagrees with the sign of gamma"
        )  # pragma: no cover
    return LevelThresholds(
        thr=np.sort(thr, axis=1).astype(np.int32), direction=direction, kind=kind
    )


def level_float_thresholds(
    bn: BNParams | None,
    *,
    boundaries: Sequence[Fraction | Boundary | None],
    relu: bool = False,
    channels: int | None = None,
) -> Thresholds:
    """Float32 "thermometer" thresholds of ``Q_M(BN(pool(relu?(y))))`` on a float32 ``y``.

    Returns :class:`Thresholds` over ``channels * L`` lanes, lane ``c * L + l`` deciding
    ``BN(y_c) >= b_l`` (``+1`` iff passed): the sum of a channel's ``L`` thermometer bits is its
    level ``v = 2q - L`` (module docstring). Each lane is :func:`float_thresholds` with that
    boundary; a ``None`` (``-inf``) boundary is the constant +1.
    """
    bl = _check_boundaries(boundaries)
    if channels is None:
        if bn is None:
            raise ValueError("channels is required when bn is None")
        channels = bn.channels
    n_l = len(bl)
    parts: list[Thresholds] = []
    for b in bl:
        if b is None:
            parts.append(
                Thresholds(
                    thr=np.full(channels, -np.inf, np.float32),
                    direction=np.ones(channels, np.int8),
                    kind=np.full(channels, CONST_POS, np.int8),
                    tau=np.full(channels, np.nan),
                )
            )
        else:
            parts.append(float_thresholds(bn, relu=relu, channels=channels, boundary=b))

    def inter(name: str) -> np.ndarray:
        return np.stack([getattr(t, name) for t in parts], axis=1).reshape(channels * n_l)

    return Thresholds(
        thr=inter("thr"), direction=inter("direction"), kind=inter("kind"), tau=inter("tau")
    )


# --------------------------------------------------------------------------- reference forms


def paper_threshold(
    *,
    alpha: np.ndarray | float,
    bn: BNParams,
    lo: np.ndarray | int | None = None,
    hi: np.ndarray | int | None = None,
) -> Thresholds:
    """BitFlow-Net Eq. 13-17 *as printed* (no ReLU, no bias): kept to demonstrate their error.

    Eq. 13 normalises ``x`` with ``sqrt(Var[alpha x]/alpha^2 + eps)``: eps is not divided by
    ``alpha^2`` (the paper assumes ``BN(alpha x) = BN(x)``, Eq. 6). With
    ``f = sqrt(var/alpha^2 + eps) / gamma`` (Eq. 14), Eq. 16 is
    ``BS(x) = (x - mu/alpha + f beta) sign(gamma)``; writing ``-mu/alpha + f beta = A + B``
    (integer ``A``, fraction ``B``), Eq. 17 gives ``sign(x + A)`` when ``|x + A| >= 1`` and
    ``sign(B)`` at ``x = -A``, both times ``sign(gamma)``. For integer ``x`` that is
    ``sign((x - tau_p) sign(gamma))`` with ``tau_p = mu/alpha - f beta``, i.e. ``x >= ceil(tau_p)``
    for ``gamma > 0`` and ``x <= floor(tau_p)`` for ``gamma < 0`` (a tie ``x = tau_p`` follows
    Eq. 17's ``sign(B) sign(gamma)``, which we resolve like Eq. 2, ``sign(0) = +1``).
    Evaluated in float64. Not the exact rule: see the module docstring.
    """
    n = bn.channels
    al = _broadcast("alpha", alpha, n, np.float64)
    los = _broadcast("lo", INT32_MIN + 1 if lo is None else lo, n, np.int64)
    his = _broadcast("hi", INT32_MAX if hi is None else hi, n, np.int64)
    mu = bn.mean.astype(np.float64)
    var = bn.var.astype(np.float64)
    g = bn.gamma.astype(np.float64)
    b = bn.beta.astype(np.float64)
    thr = np.empty(n, np.int32)
    direction = np.empty(n, np.int8)
    kind = np.empty(n, np.int8)
    tau = np.full(n, np.nan)
    for i in range(n):
        if g[i] == 0:
            kind[i] = CONST_POS if b[i] >= 0 else CONST_NEG
        else:
            f = math.sqrt(var[i] / al[i] ** 2 + bn.eps) / g[i]
            tau[i] = mu[i] / al[i] - f * b[i]
            if g[i] > 0:
                t = math.ceil(tau[i])
                kind[i] = CONST_POS if t <= los[i] else (CONST_NEG if t > his[i] else GE)
            else:
                t = math.floor(tau[i])
                kind[i] = CONST_POS if t >= his[i] else (CONST_NEG if t < los[i] else LE)
        if kind[i] in (GE, LE):
            thr[i], direction[i] = t, kind[i]
        else:
            thr[i], direction[i] = INT32_MIN, (1 if kind[i] == CONST_POS else -1)
    return Thresholds(thr=thr, direction=direction, kind=kind, tau=tau)


__all__ = [
    "BNParams",
    "Boundary",
    "CONST_NEG",
    "CONST_POS",
    "GE",
    "INT32_MIN",
    "LE",
    "LevelThresholds",
    "Thresholds",
    "float_plane_thresholds",
    "float_thresholds",
    "int_thresholds",
    "level_float_thresholds",
    "level_int_thresholds",
    "paper_threshold",
    "sign_a_plus_b_sqrt",
]


def float_plane_thresholds(lanes: Thresholds, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The native ``threshold_f32_planes`` form of :func:`level_float_thresholds`' lanes.

    Returns ``thr`` float32 ``[C, L]`` (sorted ascending per channel) and ``direction`` int8
    ``[C]`` such that, for every finite float32 ``y``, ``q = #{l : not y < thr[c, l]}``
    (direction +1) or ``#{l : not y > thr[c, l]}`` (direction -1) equals the number of lanes
    ``c * L + l`` that pass, so the level ``2q - L`` is the exact ``Q_M(BN(y))``. All of a
    channel's non-constant lanes share the sign of its ``gamma`` (GE lanes for ``gamma > 0``, LE
    lanes for ``gamma < 0``); a constant lane becomes ``-inf`` / ``+inf`` (always / never
    passed by a finite ``y``). The count does not depend on the lanes' order, so they are
    sorted for the engine's check."""
    if lanes.thr.shape[0] % channels:
        raise ValueError(f"{lanes.thr.shape[0]} lanes do not split into {channels} channels")
    n_l = lanes.thr.shape[0] // channels
    kind = lanes.kind.reshape(channels, n_l)
    thr = lanes.thr.astype(np.float32).reshape(channels, n_l)
    up = ~np.any(kind == LE, axis=1)
    if np.any(np.any(kind == LE, axis=1) & np.any(kind == GE, axis=1)):
        raise AssertionError("internal error: a channel mixes >= and <= lanes")  # pragma: no cover
    inf = np.float32(np.inf)
    always = np.where(up, -inf, inf)[:, None]
    never = np.where(up, inf, -inf)[:, None]
    out = np.where(kind == CONST_POS, always, np.where(kind == CONST_NEG, never, thr)).astype(
        np.float32
    )
    return np.sort(out, axis=1), np.where(up, 1, -1).astype(np.int8)

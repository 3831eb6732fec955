"""Multi-bit binary networks (MBBN): the ``{-1, +1}`` encoding decomposition of Sun et al.

Reference: "Multi-precision quantized neural networks via encoding decomposition of {-1,+1}"
(MBBN paper, Sections III-V). This module holds the training side; the integer engine runs the
same arithmetic on packed bit planes (``bitflow._native.bgemm_planes`` / ``bconv2d_planes``).

Levels and planes
-----------------
An ``M``-bit value is an *odd* integer level ``v`` in ``{-(2^M-1), ..., -1, 1, ..., 2^M-1}``
(step 2). It is the sum of ``M`` planes ``c_m`` in ``{-1, +1}`` (Eq. 7, with ``m`` counted from 0
instead of the paper's 1)::

    v = sum_{m=0}^{M-1} 2^m c_m                                             (Eq. 7)

The plane convention is the engine's: with ``A = 2^M - 1`` and ``q = (v + A) / 2`` in
``0..A``, plane ``m`` is ``c_m = +1`` iff bit ``m`` of ``q`` is 1. (Proof: ``sum 2^m (2 b_m - 1)
= 2q - A = v``.) A packed engine bit is 1 iff the value is -1, so packed bit ``= 1 - bit m of q``.

A dot product of an ``M``-bit vector ``x`` and a ``K``-bit vector ``w`` decomposes into ``M*K``
binary dot products, each an xnor-popcount on packed bits::

    x . w = sum_{m<M} sum_{k<K} 2^(m+k) dot(c_m, d_k)                       (Eq. 8)
    dot(c, d) = N - 2 popcount(c_bits XOR d_bits)

and a layer rescales the integer result once: ``Op(x, w) = r / ((2^M-1)(2^K-1)) Op(EnC(x),
EnC(w))`` (Eq. 9, ``r = 1``). For comparison, the ``{0,1}`` code ``x^q = 2 x01 / (2^M-1) - 1``
(Eq. 17) needs the AND-popcount product plus two correction sums and a constant (Eq. 18);
:func:`zero_one_dot` computes it.

Training (Section IV)
---------------------
Algorithm 1 (train the multi-branch binary network directly):

- activations: :class:`MBitEncoder` (``"mbit_encoder"``): ``HTanh`` or ``HReLU`` (Table I), then
  the M-bit encoder of Eq. 10 (``sign`` of sines), whose value is the hard ladder
  ``v = nearest odd integer to A*x`` on ``[-1, 1]`` (proved in :func:`encoder_sine`), with the
  surrogate gradient of Eq. 13 (derivatives of the sines), or optionally the clipped STE.
- weights: :class:`MBitWeight` (``"mbit_weight"``): ``K = 1`` is exactly Eq. 14,
  ``w_b = sign(HTanh(w))``; for ``K > 1`` the same hard ladder on ``HTanh(w)`` with ``K`` planes
  (see the class docstring for why one latent tensor instead of Algorithm 1's ``K``).

Algorithm 2 (train a linear quantized network, then transform it exactly):

- :class:`OddLinearQuantizer` (``"odd_linear"``, activations) and :class:`OddLinearWeight`
  (``"odd_linear_weight"``): the odd-level form of Eq. 15 with a learned range ``t`` (the
  docstring of :func:`odd_linear_levels` derives it and explains why Eq. 15 as printed cannot be
  encoded exactly).

Layers
------
:class:`MBitConv2d` / :class:`MBitLinear` subclass the binary layers and compute

    Y = (levels_x (*) levels_w) * scale_x * scale_w

with an exact integer convolution: float32 while ``fan_in * (2^M-1) * (2^K-1) < 2^24`` (every
partial sum is then an integer that float32 represents exactly), float64 otherwise (exact below
2^53; the layer's ``accumulate_dtype`` says which one it uses).

Modules
-------
``encoding`` (levels <-> planes), ``packed`` (the packed-plane arithmetic in numpy: Eq. 8, 18,
the speed-up model), ``quantizers`` (Table I, Algorithms 1 and 2; registered by name),
``layers`` (:class:`MBitConv2d`, :class:`MBitLinear`), ``calibration`` (initialisation from a
higher-bit model, range calibration). Every public name is re-exported here:
``from bitflow.nn.mbbn import X`` keeps working.
"""

from __future__ import annotations

from .calibration import calibrate_ranges, init_from_higher
from .encoding import (
    MAX_BITS,
    decode,
    encode,
    levels_to_unsigned,
    max_level,
    odd_levels,
    unsigned_to_levels,
)
from .layers import MBitConv2d, MBitLinear, mbit_layers
from .packed import (
    accumulator_bound,
    encoded_dot,
    pack_bits,
    pack_planes,
    plane_gemm,
    popcount,
    speedup_theory,
    unsigned_plane_dot,
    xnor_popcount,
    zero_one_dot,
)
from .quantizers import (
    METHODS,
    MBitEncodeFn,
    MBitEncoder,
    MBitPlanesFn,
    MBitWeight,
    MultiBitInputQuantizer,
    OddLinearQuantizer,
    OddLinearWeight,
    encoder_grads,
    encoder_sine,
    hrelu,
    htanh,
    make_quantizers,
    odd_ladder,
    odd_linear_levels,
)

__all__ = [
    "MAX_BITS",
    "METHODS",
    "MBitConv2d",
    "MBitEncodeFn",
    "MBitEncoder",
    "MBitLinear",
    "MBitPlanesFn",
    "MBitWeight",
    "MultiBitInputQuantizer",
    "OddLinearQuantizer",
    "OddLinearWeight",
    "accumulator_bound",
    "calibrate_ranges",
    "decode",
    "encode",
    "encoded_dot",
    "encoder_grads",
    "encoder_sine",
    "hrelu",
    "htanh",
    "init_from_higher",
    "levels_to_unsigned",
    "make_quantizers",
    "max_level",
    "mbit_layers",
    "odd_ladder",
    "odd_levels",
    "odd_linear_levels",
    "pack_bits",
    "pack_planes",
    "plane_gemm",
    "popcount",
    "speedup_theory",
    "unsigned_plane_dot",
    "unsigned_to_levels",
    "xnor_popcount",
    "zero_one_dot",
]

// bitflow native core: conventions written down once (docs/architecture.md §2).
//
// Bit meaning. A packed bit is 1 iff the value is -1, i.e. iff the value is < 0. sign(0) = +1
//   (BitFlow-Net Eq. 2), so +0.0 and -0.0 both pack to bit 0. Bits are never derived from the
//   float sign bit alone. NaN is not < 0, so NaN packs to bit 0 (+1); the float threshold
//   transform follows the same rule (a NaN is never on the -1 side), see transforms below.
// Bit order. LSB first: channel c sits at bit c % 64 of word c / 64. The padding bits of the
//   last word of a row are 0. Every kernel relies on that: padding bits are 0 in both operands,
//   so they never count in a popcount of a XOR.
// Dot product. For N real positions, dot(a, b) = N - 2 * popcount(a XOR b)
//   (sum_c a_c b_c over +-1 values: equal signs add 1, different signs subtract 1).
// Layout. Activations NHWC, channels packed along the innermost axis: uint64 [N, H, W, Cw],
//   Cw = words_for(C). Weights uint64 [O, kh, kw, Cw]. Accumulators are int32.
// Planes (MBBN). An M-bit activation is M {-1,+1} planes c_0..c_{M-1} with value
//   v = sum_m 2^m c_m (odd levels in [-(2^M - 1), 2^M - 1]). Planes are a leading axis:
//   activations uint64 [Pa, N, H, W, Cw], weights uint64 [Pw, O, kh, kw, Cw]. The plane
//   product is acc = sum_{i<Pa} sum_{j<Pw} 2^(i+j) dot(x_i, w_j) (MBBN paper Eq. 8 without
//   the scale factors). BitFlow-Net is Pa = Pw = 1.
// Zero padding in a binary convolution. A float model pads the binarized activations with
//   0, which no bit can represent. Padded taps are packed as +1 (bit 0) and a precomputed
//   correction sum_{padded taps} (C - 2 popcount(w[o, tap])) is subtracted per (output
//   position, output channel), which makes the result exact. One-padding (pad_value = 1)
//   keeps the +1 taps in the dot and needs no correction.
// Output transforms are separate from accumulation (as in Larq Compute Engine):
//   bits:   bit 1 (-1) iff acc < thr (direction +1) or acc > thr (direction -1);
//           equivalently +1 iff acc >= thr, resp. acc <= thr.
//   planes: q = #{l : acc >= thr[l]} (direction +1) or #{l : acc <= thr[l]} (direction -1),
//           v = 2q - L with L = 2^M - 1, plane m packs bit 1 - ((q >> m) & 1).
//   float:  y = float(acc) * scale + bias, two float32 roundings, never contracted to an FMA.
#pragma once
#include <cstddef>
#include <cstdint>

namespace bitflow {

inline constexpr int kWordBits = 64;

/// Number of 64-bit words holding `bits` bits: ceil(bits / 64).
constexpr std::int64_t words_for(std::int64_t bits) { return (bits + kWordBits - 1) / kWordBits; }

/// Output size of a convolution / pooling window along one axis (PyTorch floor mode,
/// dilation 1): floor((in + 2 pad - k) / stride) + 1. Returns <= 0 when no window fits.
constexpr std::int64_t conv_out_size(std::int64_t in, std::int64_t k, std::int64_t stride,
                                     std::int64_t pad) {
  const std::int64_t span = in + 2 * pad - k;
  return span < 0 ? 0 : span / stride + 1;
}

}  // namespace bitflow

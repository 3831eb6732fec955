// Ops of the survey's methods (issue 12; the reference is bitflow/ir/ops/survey.py). Shapes
// are validated by the caller (python/bindings.cc); buffers are C-contiguous.
//   rprelu_f32: ReActNet RPReLU per channel c (last axis): t = x - gamma[c];
//               u = t > 0 ? t : slope[c] * t; y = u + zeta[c], each step rounded in float32.
//   conv2d_f32b1: +-1 weights (packed bits, bit 1 = -1) over float32 activations (BinaryConnect,
//               BWN): every output is a float32 sum of +-x taken in the order (ky, kx, c), each
//               partial sum rounded, from +0.0; taps in the zero padding are skipped (adding
//               +-0 to a sum that is never -0 changes nothing). Fixed order: bit-identical to
//               the reference on every machine (the library is built with -ffp-contract=off).
//   threshold_u8 / threshold_f32_u8: x [rows, o] -> uint8 levels q = #{l : x >= thr[c, l]}
//               (direction +1) or #{l : x <= thr[c, l]} (-1), thr [o, L] (L <= 255); written as
//               !(x < thr) / !(x > thr), so a NaN passes every threshold (as threshold_planes).
//   threshold_bits_hw: x int32 [n, hw, o] -> packed bits [n, hw, ceil(o/64)], bit 1 (= -1) iff
//               x < thr[p, c] (direction[p, c] = +1) or x > thr[p, c] (-1): one threshold per
//               (position, channel) (XNOR-Net++'s per-position scale); padding bits 0.
//   scale_hw: x int32 [n, hw, o] -> float32 y = float(x) * s[p, c], one rounding of the product
//               per value (XNOR-Net++'s Gamma before a float value: a residual add, a float layer).
#pragma once
#include <cstdint>

#include "bitflow/ops.h"

namespace bitflow::ops {

void rprelu_f32(const float* x, std::int64_t rows, std::int64_t cols, const float* gamma, const float* slope,
                const float* zeta, float* out, int threads = 1);

void threshold_u8(const std::int32_t* x, std::int64_t rows, std::int64_t o, const std::int32_t* thr,
                  std::int64_t levels, const std::int8_t* dir, std::uint8_t* out, int threads = 1);
void threshold_f32_u8(const float* x, std::int64_t rows, std::int64_t o, const float* thr, std::int64_t levels,
                      const std::int8_t* dir, std::uint8_t* out, int threads = 1);

void threshold_bits_hw(const std::int32_t* x, std::int64_t n, std::int64_t hw, std::int64_t o,
                       const std::int32_t* thr, const std::int8_t* dir, std::uint64_t* out, int threads = 1);

void scale_hw(const std::int32_t* x, std::int64_t n, std::int64_t hwo, const float* s, float* out,
              int threads = 1);

void conv2d_f32b1(const float* x, const std::uint64_t* w, const ConvGeom& g, float* out, int threads = 1);

}  // namespace bitflow::ops

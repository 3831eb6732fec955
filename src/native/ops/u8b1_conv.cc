// conv2d_u8b1: +-1 weights (packed bits, bit 1 = -1) over uint8 activations, exact in int32
// (MCN deployed with uint8 activations; bitflow.ir.ops.w1). The bits are expanded to +-1 int8
// rows once per call and the exact uint8 x int8 convolution of conv2d_u8i8 runs them, so every
// kernel set (ref, scalar, AVX2, AVX-512 VNNI, NEON) gives the same integers.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "bitflow/ops.h"

namespace bitflow::ops {

std::vector<std::int8_t> unpack_pm1_weights(const std::uint64_t* w, std::int64_t rows, std::int64_t c) {
  const std::int64_t words = (c + 63) / 64;
  std::vector<std::int8_t> out(static_cast<std::size_t>(rows * c));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::uint64_t* src = w + r * words;
    std::int8_t* dst = out.data() + r * c;
    for (std::int64_t i = 0; i < c; ++i) dst[i] = ((src[i >> 6] >> (i & 63)) & 1u) ? -1 : 1;
  }
  return out;
}

void conv2d_u8b1(const KernelSet& ks, int threads, const std::uint8_t* x, const std::uint64_t* w,
                 const ConvGeom& g, std::int32_t* out) {
  const std::vector<std::int8_t> w8 = unpack_pm1_weights(w, g.o * g.kh * g.kw, g.c);
  conv2d_u8i8(ks, threads, x, w8.data(), g, out);
}

namespace {

// q = #{l : x >= t[l]} (dir +1) or #{l : x <= t[l]} (dir -1) over the L ascending thresholds t:
// one binary search (upper_bound counts t[l] <= x, lower_bound counts t[l] < x).
template <class T>
std::uint8_t count_passed(T x, const T* t, std::int64_t L, std::int8_t dir) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(x)) return static_cast<std::uint8_t>(L);  // NaN passes every threshold
  }
  if (dir > 0) return static_cast<std::uint8_t>(std::upper_bound(t, t + L, x) - t);
  return static_cast<std::uint8_t>(L - (std::lower_bound(t, t + L, x) - t));
}

template <class T>
void threshold_u8_impl(const T* x, std::int64_t rows, std::int64_t o, const T* thr, std::int64_t L,
                       const std::int8_t* dir, std::uint8_t* out) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* a = x + r * o;
    std::uint8_t* dst = out + r * o;
    for (std::int64_t c = 0; c < o; ++c) dst[c] = count_passed(a[c], thr + c * L, L, dir[c]);
  }
}

}  // namespace

void threshold_u8(const std::int32_t* acc, std::int64_t rows, std::int64_t o, const std::int32_t* thr,
                  std::int64_t L, const std::int8_t* dir, std::uint8_t* out) {
  threshold_u8_impl(acc, rows, o, thr, L, dir, out);
}

void threshold_f32_u8(const float* y, std::int64_t rows, std::int64_t o, const float* thr, std::int64_t L,
                      const std::int8_t* dir, std::uint8_t* out) {
  threshold_u8_impl(y, rows, o, thr, L, dir, out);
}

}  // namespace bitflow::ops

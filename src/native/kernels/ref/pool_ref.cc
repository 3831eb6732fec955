// Max pooling (definitions), PyTorch semantics: windows start at -padding, padded positions
// are ignored (PyTorch pads with -inf), floor mode, dilation 1.
#include <cmath>

#include "bitflow/ops.h"

namespace bitflow::ops {
namespace {

template <class T, class Combine>
void pool(const T* x, const PoolGeom& g, T* out, Combine combine) {
  const std::int64_t ho = g.ho(), wo = g.wo();
  for (std::int64_t n = 0; n < g.n; ++n)
    for (std::int64_t oh = 0; oh < ho; ++oh)
      for (std::int64_t ow = 0; ow < wo; ++ow) {
        T* dst = out + ((n * ho + oh) * wo + ow) * g.c;
        bool first = true;
        for (std::int64_t i = 0; i < g.kh; ++i) {
          const std::int64_t ih = oh * g.sh - g.ph + i;
          if (ih < 0 || ih >= g.h) continue;
          for (std::int64_t j = 0; j < g.kw; ++j) {
            const std::int64_t iw = ow * g.sw - g.pw + j;
            if (iw < 0 || iw >= g.w) continue;
            const T* src = x + ((n * g.h + ih) * g.w + iw) * g.c;
            if (first) {
              for (std::int64_t c = 0; c < g.c; ++c) dst[c] = src[c];
              first = false;
            } else {
              for (std::int64_t c = 0; c < g.c; ++c) dst[c] = combine(dst[c], src[c]);
            }
          }
        }
      }
}

}  // namespace

void maxpool_bits(const std::uint64_t* x, const PoolGeom& g, bool and_op, std::uint64_t* out) {
  if (and_op)
    pool(x, g, out, [](std::uint64_t a, std::uint64_t b) { return a & b; });
  else
    pool(x, g, out, [](std::uint64_t a, std::uint64_t b) { return a | b; });
}

void maxpool_i32(const std::int32_t* x, const PoolGeom& g, std::int32_t* out) {
  pool(x, g, out, [](std::int32_t a, std::int32_t b) { return b > a ? b : a; });
}

void maxpool_f32(const float* x, const PoolGeom& g, float* out) {
  // Keep the first maximum; a NaN, once seen, stays (torch: val > max || isnan(val)).
  pool(x, g, out, [](float a, float b) {
    if (std::isnan(a)) return a;
    return (b > a || std::isnan(b)) ? b : a;
  });
}

}  // namespace bitflow::ops

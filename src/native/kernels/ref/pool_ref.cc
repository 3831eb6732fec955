// Max pooling (definitions), PyTorch semantics: windows start at -padding, padded positions
// are ignored (PyTorch pads with -inf), floor mode, dilation 1.
#include <cmath>

#include "../../ops/parallel.h"
#include "bitflow/ops.h"

namespace bitflow::ops {
namespace {

// Output rows [r0, r1) (a row is one (n, oh) pair) of the pool.
template <class T, class Combine>
void pool_rows(const T* x, const PoolGeom& g, T* out, std::int64_t r0, std::int64_t r1,
               Combine combine) {
  const std::int64_t ho = g.ho(), wo = g.wo();
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::int64_t n = r / ho, oh = r % ho;
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
}

// Rows split over threads by work size (every output element is written by one thread with
// the same instructions: identical results for any thread count).
template <class T, class Combine>
void pool(const T* x, const PoolGeom& g, T* out, int threads, Combine combine) {
  const double ns_per_row = 0.3 * static_cast<double>(g.wo() * g.kh * g.kw * g.c);
  parallel_rows(g.n * g.ho(), ns_per_row, threads,
                [&](std::int64_t r0, std::int64_t r1) { pool_rows(x, g, out, r0, r1, combine); });
}

}  // namespace

void maxpool_bits_rows(const std::uint64_t* x, const PoolGeom& g, bool and_op,
                       std::uint64_t* out, std::int64_t r0, std::int64_t r1) {
  if (and_op)
    pool_rows(x, g, out, r0, r1, [](std::uint64_t a, std::uint64_t b) { return a & b; });
  else
    pool_rows(x, g, out, r0, r1, [](std::uint64_t a, std::uint64_t b) { return a | b; });
}

void maxpool_bits(const std::uint64_t* x, const PoolGeom& g, bool and_op, std::uint64_t* out,
                  int threads) {
  if (and_op)
    pool(x, g, out, threads, [](std::uint64_t a, std::uint64_t b) { return a & b; });
  else
    pool(x, g, out, threads, [](std::uint64_t a, std::uint64_t b) { return a | b; });
}

void maxpool_i32(const std::int32_t* x, const PoolGeom& g, std::int32_t* out, int threads) {
  pool(x, g, out, threads, [](std::int32_t a, std::int32_t b) { return b > a ? b : a; });
}

void maxpool_f32(const float* x, const PoolGeom& g, float* out, int threads) {
  // Keep the first maximum; a NaN, once seen, stays (torch: val > max || isnan(val)).
  pool(x, g, out, threads, [](float a, float b) {
    if (std::isnan(a)) return a;
    return (b > a || std::isnan(b)) ? b : a;
  });
}

}  // namespace bitflow::ops

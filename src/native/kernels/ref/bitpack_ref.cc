// Bit packing: the definition (bit = value < 0, LSB first, padding bits 0). NaN < 0 is
// false, so NaN packs to bit 0 (+1), like sign(0) = +1. Each word is built in a register
// from 64 comparisons; rows are split over threads. float32 packing dispatches to the
// kernel set (compare-to-mask instructions on x86); int32 packing is this loop.
#include <algorithm>

#include "../../ops/parallel.h"
#include "bitflow/ops.h"

namespace bitflow::ops {
namespace {

template <class T>
void pack_rows(const T* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out,
               int threads) {
  const std::int64_t nw = words_for(cols);
  parallel_rows(rows, 0.5 * static_cast<double>(cols), threads, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const T* in = x + r * cols;
      std::uint64_t* dst = out + r * nw;
      for (std::int64_t wd = 0; wd < nw; ++wd) {
        const std::int64_t c0 = wd * kWordBits;
        const int n = static_cast<int>(std::min<std::int64_t>(kWordBits, cols - c0));
        std::uint64_t word = 0;
        for (int b = 0; b < n; ++b)
          word |= static_cast<std::uint64_t>(in[c0 + b] < T{0}) << b;
        dst[wd] = word;
      }
    }
  });
}

}  // namespace

void bitpack_f32(const KernelSet& ks, const float* x, std::int64_t rows, std::int64_t cols,
                 std::uint64_t* out, int threads) {
  const std::int64_t nw = words_for(cols);
  parallel_rows(rows, 0.2 * static_cast<double>(cols), threads, [&](std::int64_t r0, std::int64_t r1) {
    ks.bitpack_f32(x + r0 * cols, r1 - r0, cols, out + r0 * nw);
  });
}

void bitpack_i32(const std::int32_t* x, std::int64_t rows, std::int64_t cols,
                 std::uint64_t* out, int threads) {
  pack_rows(x, rows, cols, out, threads);
}

}  // namespace bitflow::ops

namespace bitflow::ref {
void bitpack_f32(const float* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out) {
  const std::int64_t nw = words_for(cols);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    for (std::int64_t wd = 0; wd < nw; ++wd) {
      const std::int64_t c0 = wd * kWordBits;
      const int n = static_cast<int>(std::min<std::int64_t>(kWordBits, cols - c0));
      std::uint64_t word = 0;
      for (int b = 0; b < n; ++b) word |= static_cast<std::uint64_t>(in[c0 + b] < 0.0f) << b;
      out[r * nw + wd] = word;
    }
  }
}
}  // namespace bitflow::ref

// bitpack_f32__avx2: 8 floats per vcmpps (ordered less-than zero: NaN and -0.0 give 0) and
// vmovmskps, eight masks make one 64-bit word; the partial last word uses vmaskmovps
// zero-filled loads, so its padding bits are 0. Built with -mavx2 -mfma.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/common.h"

namespace bitflow::avx2 {

void bitpack_f32__avx2(const float* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out) {
  const std::int64_t nw = words_for(cols);
  const __m256 zero = _mm256_setzero_ps();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    std::uint64_t* dst = out + r * nw;
    for (std::int64_t wd = 0; wd < nw; ++wd) {
      std::uint64_t word = 0;
      const bool full = (wd + 1) * 64 <= cols;
      for (int g = 0; g < 8; ++g) {
        const std::int64_t c0 = wd * 64 + g * 8;
        if (c0 >= cols) break;
        __m256 v;
        if (full) {
          v = _mm256_loadu_ps(in + c0);
        } else {
          const __m256i lm = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols - c0)), lane);
          v = _mm256_maskload_ps(in + c0, lm);
        }
        const auto m = static_cast<std::uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ)));
        word |= m << (8 * g);
      }
      dst[wd] = word;
    }
  }
}

}  // namespace bitflow::avx2

// bitpack_f32__avx512: 16 floats per vcmpps into a mask register (ordered less-than zero:
// NaN and -0.0 give 0), four masks make one 64-bit word. The partial last word uses masked
// zero-filled loads, so its padding bits are 0. Built with the AVX-512 flags.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/common.h"

namespace bitflow::avx512 {

void bitpack_f32__avx512(const float* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out) {
  const std::int64_t nw = words_for(cols);
  const __m512 zero = _mm512_setzero_ps();
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    std::uint64_t* dst = out + r * nw;
    std::int64_t wd = 0;
    for (; (wd + 1) * 64 <= cols; ++wd) {
      const float* p = in + wd * 64;
      const std::uint64_t m0 = _mm512_cmp_ps_mask(_mm512_loadu_ps(p), zero, _CMP_LT_OQ);
      const std::uint64_t m1 = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + 16), zero, _CMP_LT_OQ);
      const std::uint64_t m2 = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + 32), zero, _CMP_LT_OQ);
      const std::uint64_t m3 = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + 48), zero, _CMP_LT_OQ);
      dst[wd] = m0 | (m1 << 16) | (m2 << 32) | (m3 << 48);
    }
    if (wd < nw) {
      std::uint64_t word = 0;
      for (int g = 0; g < 4; ++g) {
        const std::int64_t c0 = wd * 64 + g * 16;
        if (c0 >= cols) break;
        const std::int64_t n = cols - c0 < 16 ? cols - c0 : 16;
        const __mmask16 lm = static_cast<__mmask16>((1u << n) - 1u);
        const std::uint64_t m = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(lm, in + c0), zero, _CMP_LT_OQ);
        word |= m << (16 * g);
      }
      dst[wd] = word;
    }
  }
}

}  // namespace bitflow::avx512

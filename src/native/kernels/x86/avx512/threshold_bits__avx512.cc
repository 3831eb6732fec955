// threshold_bits__avx512: the range form of the bits transform (ThresholdBitsFn in
// bitflow/kernels.h). 16 accumulators per step: two vpcmpd against the per-channel bounds
// give "below lo" and "above hi" masks whose OR is 16 output bits; four steps make one 64-bit
// word. The last partial word uses masked zero-filling loads and a masked compare, so its
// padding bits are 0. Built with the AVX-512 flags.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/common.h"

namespace bitflow::avx512 {

void threshold_bits__avx512(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                            const std::int32_t* lo, const std::int32_t* hi, std::uint64_t* out) {
  const std::int64_t nw = words_for(o);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* a = acc + r * o;
    std::uint64_t* dst = out + r * nw;
    for (std::int64_t wd = 0; wd < nw; ++wd) {
      std::uint64_t word = 0;
      for (int g = 0; g < 4; ++g) {
        const std::int64_t c0 = wd * 64 + g * 16;
        if (c0 >= o) break;
        const std::int64_t n = o - c0 < 16 ? o - c0 : 16;
        const __mmask16 lm = static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1u);
        const __m512i v = _mm512_maskz_loadu_epi32(lm, a + c0);
        const __mmask16 below = _mm512_mask_cmplt_epi32_mask(lm, v, _mm512_maskz_loadu_epi32(lm, lo + c0));
        const __mmask16 above = _mm512_mask_cmpgt_epi32_mask(lm, v, _mm512_maskz_loadu_epi32(lm, hi + c0));
        word |= static_cast<std::uint64_t>(static_cast<std::uint16_t>(below | above)) << (16 * g);
      }
      dst[wd] = word;
    }
  }
}

}  // namespace bitflow::avx512

// threshold_bits__avx2: the range form of the bits transform (ThresholdBitsFn in
// bitflow/kernels.h). 8 accumulators per step: two vpcmpgtd against the per-channel bounds
// give "below lo" (lo > acc) and "above hi" (acc > hi) lanes whose OR, gathered by vmovmskps,
// is 8 output bits; eight steps make one 64-bit word. A partial last group of a row loads with
// vpmaskmovd (lanes past o are neither read nor counted) and keeps only its valid bits, so the
// padding bits of the last word are 0. Signed 32-bit compares, as the definition's. Built with
// -mavx2 -mfma -mpopcnt.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/common.h"

namespace bitflow::avx2 {
namespace {

inline std::uint64_t group_bits(__m256i v, __m256i lo, __m256i hi) {
  const __m256i neg = _mm256_or_si256(_mm256_cmpgt_epi32(lo, v), _mm256_cmpgt_epi32(v, hi));
  return static_cast<std::uint64_t>(
      static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(neg))));
}

inline __m256i load8(const std::int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

}  // namespace

void threshold_bits__avx2(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                          const std::int32_t* lo, const std::int32_t* hi, std::uint64_t* out) {
  const std::int64_t nw = words_for(o);
  const std::int64_t full = o / 8;  // whole groups of 8 channels
  const int tail = static_cast<int>(o % 8);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i tail_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lane);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* a = acc + r * o;
    std::uint64_t* dst = out + r * nw;
    for (std::int64_t wd = 0; wd < nw; ++wd) dst[wd] = 0;
    for (std::int64_t g = 0; g < full; ++g) {
      const std::int64_t c = 8 * g;
      dst[c / 64] |= group_bits(load8(a + c), load8(lo + c), load8(hi + c)) << (c % 64);
    }
    if (tail != 0) {
      const std::int64_t c = 8 * full;
      const __m256i v = _mm256_maskload_epi32(a + c, tail_mask);
      const __m256i l = _mm256_maskload_epi32(lo + c, tail_mask);
      const __m256i h = _mm256_maskload_epi32(hi + c, tail_mask);
      const std::uint64_t bits = group_bits(v, l, h) & ((std::uint64_t{1} << tail) - 1);
      dst[c / 64] |= bits << (c % 64);
    }
  }
}

}  // namespace bitflow::avx2

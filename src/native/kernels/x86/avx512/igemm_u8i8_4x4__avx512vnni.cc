// igemm_u8i8_4x4__avx512vnni: exact uint8 x int8 GEMM with vpdpbusd (4 u8*i8 products summed
// into each int32 lane, no saturation), 4x4 tile, 64 bytes of K per step, masked zero-filled
// loads for the tail only, one shuffle tree per row of 4 outputs. Exact while K * 255 * 128 < 2^31 (checked by the caller).
// Built with -mavx512f -mavx512bw -mavx512vl -mavx512vnni.
#include <immintrin.h>

#include "../x86_kernels.h"

namespace bitflow::avx512 {
namespace {

// Sums of the 16 int32 lanes of each of v0..v3 as [sum v0, sum v1, sum v2, sum v3]
// (exact; wrap-around cannot occur because the caller bounds |sum| < 2^31).
inline __m128i reduce4_epi32(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
  const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
  const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(v2, v3), _mm512_unpackhi_epi32(v2, v3));
  const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

template <int MR, int NR>
void tile(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
          std::int64_t K, std::int32_t* C, std::int64_t ldc) {
  __m512i acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  const __mmask64 tail = (K % 64) ? (~0ULL) >> (64 - K % 64) : ~0ULL;
  for (std::int64_t k = 0; k < K; k += 64) {
    __m512i a[MR], b[NR];
    if (__builtin_expect(k + 64 <= K, 1)) {
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) a[i] = _mm512_loadu_si512(A + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) b[j] = _mm512_loadu_si512(B + j * ldb + k);
    } else {
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) a[i] = _mm512_maskz_loadu_epi8(tail, A + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) b[j] = _mm512_maskz_loadu_epi8(tail, B + j * ldb + k);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a[i], b[j]);
  }
  const __m512i zero = _mm512_setzero_si512();
  const __mmask8 nmask = static_cast<__mmask8>((1u << NR) - 1u);
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    const __m128i sums = reduce4_epi32(acc[i][0], NR > 1 ? acc[i][NR > 1 ? 1 : 0] : zero,
                                       NR > 2 ? acc[i][NR > 2 ? 2 : 0] : zero,
                                       NR > 3 ? acc[i][NR > 3 ? 3 : 0] : zero);
    _mm_mask_storeu_epi32(C + i * ldc, nmask, sums);
  }
}

using TileFn = void (*)(const std::uint8_t*, std::int64_t, const std::int8_t*, std::int64_t,
                        std::int64_t, std::int32_t*, std::int64_t);
constexpr int kMR = 4, kNR = 4;
const TileFn kTiles[kMR][kNR] = {
    {tile<1, 1>, tile<1, 2>, tile<1, 3>, tile<1, 4>},
    {tile<2, 1>, tile<2, 2>, tile<2, 3>, tile<2, 4>},
    {tile<3, 1>, tile<3, 2>, tile<3, 3>, tile<3, 4>},
    {tile<4, 1>, tile<4, 2>, tile<4, 3>, tile<4, 4>},
};

}  // namespace

void igemm_u8i8_4x4__avx512vnni(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B,
                                std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t K,
                                std::int32_t* C, std::int64_t ldc) {
  for (std::int64_t n = 0; n < N; n += kNR) {
    const int nr = static_cast<int>(N - n < kNR ? N - n : kNR);
    for (std::int64_t m = 0; m < M; m += kMR) {
      const int mr = static_cast<int>(M - m < kMR ? M - m : kMR);
      kTiles[mr - 1][nr - 1](A + m * lda, lda, B + n * ldb, ldb, K, C + m * ldc + n, ldc);
    }
  }
}

}  // namespace bitflow::avx512

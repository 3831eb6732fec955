// igemm_u8i8_2x4__avx2: exact uint8 x int8 GEMM. 16 bytes of K per step are widened to
// int16 (vpmovzxbw / vpmovsxbw) and multiplied pairwise into int32 with vpmaddwd, which is
// exact (|u8 * i8| <= 255 * 128, a pair sum <= 65280 fits int32; vpmaddubsw would saturate
// int16). The K tail (< 16) is summed with scalar code. Built with -mavx2 -mfma.
#include <immintrin.h>

#include "../x86_kernels.h"

namespace bitflow::avx2 {
namespace {

inline std::int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

template <int MR, int NR>
void tile(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
          std::int64_t K, std::int32_t* C, std::int64_t ldc) {
  __m256i acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
  std::int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m256i a[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
      a[i] = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(A + i * lda + k)));
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m256i b =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B + j * ldb + k)));
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(a[i], b));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      std::int32_t s = hsum_epi32(acc[i][j]);
      for (std::int64_t t = k; t < K; ++t)
        s += static_cast<std::int32_t>(A[i * lda + t]) * static_cast<std::int32_t>(B[j * ldb + t]);
      C[i * ldc + j] = s;
    }
}

using TileFn = void (*)(const std::uint8_t*, std::int64_t, const std::int8_t*, std::int64_t,
                        std::int64_t, std::int32_t*, std::int64_t);
constexpr int kMR = 2, kNR = 4;
const TileFn kTiles[kMR][kNR] = {
    {tile<1, 1>, tile<1, 2>, tile<1, 3>, tile<1, 4>},
    {tile<2, 1>, tile<2, 2>, tile<2, 3>, tile<2, 4>},
};

}  // namespace

void igemm_u8i8_2x4__avx2(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B,
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

}  // namespace bitflow::avx2

// sgemm_2x4__avx2fma: float GEMM, 2x4 tile of ymm accumulators, 8 floats of K per FMA step,
// vmaskmovps zero-filled loads for the K tail. Each output sums 8 lane partial sums in a
// fixed tree order (same for every tile shape and thread count).
// Built with -mavx2 -mfma.
#include <immintrin.h>

#include "../x86_kernels.h"

namespace bitflow::avx2 {
namespace {

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int MR, int NR>
void tile(const float* A, std::int64_t lda, const float* B, std::int64_t ldb, std::int64_t K,
          const float* bias, float* C, std::int64_t ldc) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  std::int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 a[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) a[i] = _mm256_loadu_ps(A + i * lda + k);
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m256 b = _mm256_loadu_ps(B + j * ldb + k);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(a[i], b, acc[i][j]);
    }
  }
  if (k < K) {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(K - k)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 a[MR];
    for (int i = 0; i < MR; ++i) a[i] = _mm256_maskload_ps(A + i * lda + k, mask);
    for (int j = 0; j < NR; ++j) {
      const __m256 b = _mm256_maskload_ps(B + j * ldb + k, mask);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(a[i], b, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float s = hsum_ps(acc[i][j]);
      C[i * ldc + j] = bias != nullptr ? s + bias[j] : s;
    }
}

using TileFn = void (*)(const float*, std::int64_t, const float*, std::int64_t, std::int64_t,
                        const float*, float*, std::int64_t);
constexpr int kMR = 2, kNR = 4;
const TileFn kTiles[kMR][kNR] = {
    {tile<1, 1>, tile<1, 2>, tile<1, 3>, tile<1, 4>},
    {tile<2, 1>, tile<2, 2>, tile<2, 3>, tile<2, 4>},
};

}  // namespace

void sgemm_2x4__avx2fma(const float* A, std::int64_t lda, const float* B, std::int64_t ldb,
                        std::int64_t M, std::int64_t N, std::int64_t K, const float* bias,
                        float* C, std::int64_t ldc) {
  for (std::int64_t n = 0; n < N; n += kNR) {
    const int nr = static_cast<int>(N - n < kNR ? N - n : kNR);
    for (std::int64_t m = 0; m < M; m += kMR) {
      const int mr = static_cast<int>(M - m < kMR ? M - m : kMR);
      kTiles[mr - 1][nr - 1](A + m * lda, lda, B + n * ldb, ldb, K,
                             bias != nullptr ? bias + n : nullptr, C + m * ldc + n, ldc);
    }
  }
}

}  // namespace bitflow::avx2

// sgemm_4x4__avx512fma: float GEMM, 4x4 tile of zmm accumulators, 16 floats of K per step
// with FMA, masked zero-filled loads for the K tail only. Each output is the sum of 16 lane
// partial sums (lane l holds sum over k = l mod 16, each an FMA chain), reduced by one
// fixed shuffle tree per row of 4 outputs; the order is the same for every tile shape and
// thread count.
// Built with -mavx512f -mavx512bw -mavx512vl -mfma.
#include <immintrin.h>

#include "../x86_kernels.h"

namespace bitflow::avx512 {
namespace {

// Sums of the 16 lanes of each of v0..v3 as [sum v0, sum v1, sum v2, sum v3], by a fixed
// shuffle tree (the same order for every tile, so results never depend on the tiling).
inline __m128 reduce4_ps(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  // Per 128-bit lane: s01 = [v0_0 + v0_2, v1_0 + v1_2, v0_1 + v0_3, v1_1 + v1_3].
  const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(v0, v1), _mm512_unpackhi_ps(v0, v1));
  const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(v2, v3), _mm512_unpackhi_ps(v2, v3));
  // Per 128-bit lane: t = [v0 part, v1 part, v2 part, v3 part].
  const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
  // Add the four 128-bit lanes.
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), _mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(t), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

template <int MR, int NR>
void tile(const float* A, std::int64_t lda, const float* B, std::int64_t ldb, std::int64_t K,
          const float* bias, float* C, std::int64_t ldc) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const __mmask16 tail = static_cast<__mmask16>((1u << (K % 16)) - 1u);
  for (std::int64_t k = 0; k < K; k += 16) {
    __m512 a[MR], b[NR];
    if (__builtin_expect(k + 16 <= K, 1)) {
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) a[i] = _mm512_loadu_ps(A + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) b[j] = _mm512_loadu_ps(B + j * ldb + k);
    } else {
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) a[i] = _mm512_maskz_loadu_ps(tail, A + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) b[j] = _mm512_maskz_loadu_ps(tail, B + j * ldb + k);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(a[i], b[j], acc[i][j]);
  }
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    alignas(16) float sums[4];
    _mm_store_ps(sums, reduce4_ps(acc[i][0], NR > 1 ? acc[i][NR > 1 ? 1 : 0] : zero,
                                  NR > 2 ? acc[i][NR > 2 ? 2 : 0] : zero, NR > 3 ? acc[i][NR > 3 ? 3 : 0] : zero));
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) C[i * ldc + j] = bias != nullptr ? sums[j] + bias[j] : sums[j];
  }
}

using TileFn = void (*)(const float*, std::int64_t, const float*, std::int64_t, std::int64_t,
                        const float*, float*, std::int64_t);
constexpr int kMR = 4, kNR = 4;
const TileFn kTiles[kMR][kNR] = {
    {tile<1, 1>, tile<1, 2>, tile<1, 3>, tile<1, 4>},
    {tile<2, 1>, tile<2, 2>, tile<2, 3>, tile<2, 4>},
    {tile<3, 1>, tile<3, 2>, tile<3, 3>, tile<3, 4>},
    {tile<4, 1>, tile<4, 2>, tile<4, 3>, tile<4, 4>},
};

}  // namespace

void sgemm_4x4__avx512fma(const float* A, std::int64_t lda, const float* B, std::int64_t ldb,
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

}  // namespace bitflow::avx512

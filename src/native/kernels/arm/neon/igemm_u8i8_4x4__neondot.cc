// Exact uint8 x int8 GEMM with SDOT (FEAT_DotProd; this file is built with +dotprod and
// selected only when the CPU reports it). SDOT multiplies signed bytes, so the unsigned
// activations are shifted into int8 range: a = (a - 128) + 128, hence
//   sum_k a_k b_k = sum_k (a_k - 128) b_k + 128 sum_k b_k,
// with (a_k - 128) in [-128, 127] (an XOR with 0x80 of the byte). Both sums are exact in
// int32 under the caller's bound K * 255 * 128 < 2^31. A 4x4 tile keeps 16 int32x4
// accumulators; K runs 16 bytes per step, the last K % 16 bytes in scalar code.
#include <arm_neon.h>

#include "../arm_kernels.h"

namespace bitflow::neon {
namespace {

template <int MR, int NR>
void tile(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
          std::int64_t K, std::int32_t* C, std::int64_t ldc) {
  int32x4_t acc[MR][NR];
  int32x4_t bsum[NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = vdupq_n_s32(0);
  for (int j = 0; j < NR; ++j) bsum[j] = vdupq_n_s32(0);
  const uint8x16_t flip = vdupq_n_u8(0x80);
  const int8x16_t ones = vdupq_n_s8(1);
  std::int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    int8x16_t a[MR], b[NR];
    for (int i = 0; i < MR; ++i) a[i] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(A + i * lda + k), flip));
    for (int j = 0; j < NR; ++j) {
      b[j] = vld1q_s8(B + j * ldb + k);
      bsum[j] = vdotq_s32(bsum[j], b[j], ones);
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = vdotq_s32(acc[i][j], a[i], b[j]);
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      std::int32_t v = vaddvq_s32(acc[i][j]) + 128 * vaddvq_s32(bsum[j]);
      for (std::int64_t t = k; t < K; ++t)
        v += static_cast<std::int32_t>(A[i * lda + t]) * static_cast<std::int32_t>(B[j * ldb + t]);
      C[i * ldc + j] = v;
    }
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

void igemm_u8i8_4x4__neondot(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B,
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

}  // namespace bitflow::neon

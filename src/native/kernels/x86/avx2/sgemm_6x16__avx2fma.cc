// sgemm_6x16__avx2fma: float GEMM against packed weights (SgemmPackedFn, kernels.h) for CPUs
// with AVX2 + FMA but no AVX-512. A tile is 6 A rows x one weight block of 16 output channels
// (two ymm vectors): 12 ymm accumulators, one lane per output channel. Each k loads the
// block's 2 vectors Bp[k][16] and, per A row, broadcasts A[m][k] (vbroadcastss from memory)
// into one FMA with each: every output is summed in order k = 0..K-1 with one rounding per
// step, then the bias is added (one rounding) - the same operations as the AVX-512 packed
// kernel, so both give the same bits. No horizontal reductions; a partial last block is
// stored with lane masks. Built with -mavx2 -mfma.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx2 {
namespace {

template <int MR>
inline __attribute__((always_inline)) void tile(const float* A, std::int64_t lda, const float* B,
                                                std::int64_t K, const float* bias, float* C,
                                                std::int64_t ldc, std::int64_t nvalid) {
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(B + k * kPackedF32NR);
    const __m256 b1 = _mm256_loadu_ps(B + k * kPackedF32NR + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * lda + k);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#pragma GCC unroll 2
  for (int j = 0; j < 2; ++j) {
    const std::int64_t left = nvalid - 8 * j;
    if (left <= 0) break;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left >= 8 ? 8 : left)), lane);
    const __m256 bv = bias != nullptr ? _mm256_maskload_ps(bias + 8 * j, mask) : _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 v = bias != nullptr ? _mm256_add_ps(acc[i][j], bv) : acc[i][j];
      if (left >= 8)
        _mm256_storeu_ps(C + i * ldc + 8 * j, v);
      else
        _mm256_maskstore_ps(C + i * ldc + 8 * j, mask, v);
    }
  }
}

}  // namespace

void sgemm_6x16__avx2fma(const float* A, std::int64_t lda, const float* Bp, std::int64_t M,
                         std::int64_t N, std::int64_t K, const float* bias, float* C,
                         std::int64_t ldc) {
  // One weight block (K * 64 bytes) stays in L1 while the A rows stream past it.
  for (std::int64_t n0 = 0; n0 < N; n0 += kPackedF32NR) {
    const float* B = Bp + (n0 / kPackedF32NR) * K * kPackedF32NR;
    const float* bn = bias != nullptr ? bias + n0 : nullptr;
    const std::int64_t nvalid = N - n0 < kPackedF32NR ? N - n0 : kPackedF32NR;
    float* Cn = C + n0;
    std::int64_t m = 0;
    for (; m + 6 <= M; m += 6) tile<6>(A + m * lda, lda, B, K, bn, Cn + m * ldc, ldc, nvalid);
    switch (M - m) {
      case 5: tile<5>(A + m * lda, lda, B, K, bn, Cn + m * ldc, ldc, nvalid); break;
      case 4: tile<4>(A + m * lda, lda, B, K, bn, Cn + m * ldc, ldc, nvalid); break;
      case 3: tile<3>(A + m * lda, lda, B, K, bn, Cn + m * ldc, ldc, nvalid); break;
      case 2: tile<2>(A + m * lda, lda, B, K, bn, Cn + m * ldc, ldc, nvalid); break;
      case 1: tile<1>(A + m * lda, lda, B, K, bn, Cn + m * ldc, ldc, nvalid); break;
      default: break;
    }
  }
}

}  // namespace bitflow::avx2

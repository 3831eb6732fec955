// sgemm_gather_4x48__avx512fma: float GEMM against packed weights with the A rows gathered in
// place (SgemmGatherFn, kernels.h): row m is the base pointer A[m] and its element k is
// A[m][koff[k]] (the implicit-GEMM form of a float convolution: no im2col matrix). Otherwise
// sgemm_4x48__avx512fma: 4 rows x 3 blocks of 16 output channels (4 x 64 for a 49-64 channel
// rest), one lane per output channel; each k loads the block vectors Bp[k][16] and per row
// broadcasts its element into one FMA with each, so every output is summed in order
// k = 0..K-1 with one rounding per step, then the bias is added (one rounding): the same
// operations in the same order as sgemm_4x48 on im2col rows, the same values bit for bit.
// Built with -mavx512f -mfma.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx512 {
namespace {

template <int MR, int NV>
inline __attribute__((always_inline)) void tile(const float* const* A, const std::int64_t* koff, const float* B,
                                                std::int64_t block_stride, std::int64_t K,
                                                const float* bias, float* C, std::int64_t ldc,
                                                std::int64_t nvalid) {
  const float* a_row[MR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) a_row[i] = A[i];
  __m512 acc[MR][NV];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (std::int64_t k = 0; k < K; ++k) {
    const std::int64_t off = koff[k];
    __m512 b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_ps(B + j * block_stride + k * kPackedF32NR);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(a_row[i][off]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const std::int64_t left = nvalid - 16 * j;
    if (left <= 0) break;
    const __mmask16 mask = static_cast<__mmask16>(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
    const __m512 bv = bias != nullptr ? _mm512_maskz_loadu_ps(mask, bias + 16 * j) : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m512 v = bias != nullptr ? _mm512_add_ps(acc[i][j], bv) : acc[i][j];
      _mm512_mask_storeu_ps(C + i * ldc + 16 * j, mask, v);
    }
  }
}

template <int NV>
void columns(const float* const* A, const std::int64_t* koff, const float* B, std::int64_t block_stride,
             std::int64_t M, std::int64_t K, const float* bias, float* C, std::int64_t ldc,
             std::int64_t nvalid) {
  std::int64_t m = 0;
  for (; m + 4 <= M; m += 4) tile<4, NV>(A + m, koff, B, block_stride, K, bias, C + m * ldc, ldc, nvalid);
  switch (M - m) {
    case 3: tile<3, NV>(A + m, koff, B, block_stride, K, bias, C + m * ldc, ldc, nvalid); break;
    case 2: tile<2, NV>(A + m, koff, B, block_stride, K, bias, C + m * ldc, ldc, nvalid); break;
    case 1: tile<1, NV>(A + m, koff, B, block_stride, K, bias, C + m * ldc, ldc, nvalid); break;
    default: break;
  }
}

}  // namespace

void sgemm_gather_4x48__avx512fma(const float* const* A, const std::int64_t* koff, const float* Bp, std::int64_t M,
                           std::int64_t N, std::int64_t K, const float* bias, float* C,
                           std::int64_t ldc) {
  const std::int64_t block_stride = K * kPackedF32NR;  // floats per 16-channel block
  for (std::int64_t n0 = 0; n0 < N;) {
    const float* B = Bp + (n0 / kPackedF32NR) * block_stride;
    const float* bn = bias != nullptr ? bias + n0 : nullptr;
    if (N - n0 > 3 * kPackedF32NR) {
      // 4 blocks (64 channels, 16 accumulators): a 64-channel layer in one pass over A
      const std::int64_t nvalid = N - n0 < 4 * kPackedF32NR ? N - n0 : 4 * kPackedF32NR;
      columns<4>(A, koff, B, block_stride, M, K, bn, C + n0, ldc, nvalid);
      n0 += 4 * kPackedF32NR;
      continue;
    }
    const std::int64_t nvalid = N - n0;
    if (nvalid > 2 * kPackedF32NR)
      columns<3>(A, koff, B, block_stride, M, K, bn, C + n0, ldc, nvalid);
    else if (nvalid > kPackedF32NR)
      columns<2>(A, koff, B, block_stride, M, K, bn, C + n0, ldc, nvalid);
    else
      columns<1>(A, koff, B, block_stride, M, K, bn, C + n0, ldc, nvalid);
    n0 = N;
  }
}

}  // namespace bitflow::avx512

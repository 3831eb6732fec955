// igemm_u8i8_6x48__avx512vnni: exact uint8 x int8 GEMM against packed weights
// (IgemmPackedFn, kernels.h). A tile is 6 A rows x 3 weight blocks of 16 output channels:
// 18 zmm accumulators of 16 int32 lanes, one lane per output channel. Each step over 4 bytes
// of K loads the 3 block vectors Bp[q][16 rows][4 bytes] and, per A row, broadcasts the row's
// 4 bytes A[m][4q..4q+4) (vpbroadcastd) into vpdpbusd with each of them: every lane adds the
// 4 products u8 * s8 of its channel (non-saturating, exact while K * 255 * 128 < 2^31, which
// the caller checks). No horizontal reduction: the accumulators are the outputs, stored with
// a lane mask for a partial last block. Built with -mavx512f -mavx512bw -mavx512vl -mavx512vnni.
#include <immintrin.h>

#include <cstring>

#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx512 {
namespace {

inline __m512i bcast4(const std::uint8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <int MR, int NV>
inline __attribute__((always_inline)) void tile(const std::uint8_t* A, std::int64_t lda,
                                                const std::int8_t* B, std::int64_t block_stride,
                                                std::int64_t K4, std::int32_t* C, std::int64_t ldc,
                                                std::int64_t nvalid) {
  __m512i acc[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t q = 0; q < K4; ++q) {
    __m512i b[NV];
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_si512(B + j * block_stride + q * 64);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m512i a = bcast4(A + i * lda + 4 * q);
#pragma GCC unroll 3
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, b[j]);
    }
  }
#pragma GCC unroll 3
  for (int j = 0; j < NV; ++j) {
    const std::int64_t left = nvalid - 16 * j;
    if (left <= 0) break;
    const __mmask16 mask = static_cast<__mmask16>(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) _mm512_mask_storeu_epi32(C + i * ldc + 16 * j, mask, acc[i][j]);
  }
}

template <int NV>
void columns(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t block_stride,
             std::int64_t M, std::int64_t K4, std::int32_t* C, std::int64_t ldc, std::int64_t nvalid) {
  std::int64_t m = 0;
  for (; m + 4 <= M; m += 4) tile<4, NV>(A + m * lda, lda, B, block_stride, K4, C + m * ldc, ldc, nvalid);
  switch (M - m) {
    case 3: tile<3, NV>(A + m * lda, lda, B, block_stride, K4, C + m * ldc, ldc, nvalid); break;
    case 2: tile<2, NV>(A + m * lda, lda, B, block_stride, K4, C + m * ldc, ldc, nvalid); break;
    case 1: tile<1, NV>(A + m * lda, lda, B, block_stride, K4, C + m * ldc, ldc, nvalid); break;
    default: break;
  }
}

}  // namespace

void igemm_u8i8_6x48__avx512vnni(const std::uint8_t* A, std::int64_t lda, const std::int8_t* Bp,
                                 std::int64_t M, std::int64_t N, std::int64_t K4, std::int32_t* C,
                                 std::int64_t ldc) {
  const std::int64_t block_stride = K4 * kPackedI8NR * 4;  // bytes per 16-channel block
  for (std::int64_t n0 = 0; n0 < N; n0 += 3 * kPackedI8NR) {
    const std::int8_t* B = Bp + (n0 / kPackedI8NR) * block_stride;
    const std::int64_t nvalid = N - n0 < 3 * kPackedI8NR ? N - n0 : 3 * kPackedI8NR;
    if (nvalid > 2 * kPackedI8NR)
      columns<3>(A, lda, B, block_stride, M, K4, C + n0, ldc, nvalid);
    else if (nvalid > kPackedI8NR)
      columns<2>(A, lda, B, block_stride, M, K4, C + n0, ldc, nvalid);
    else
      columns<1>(A, lda, B, block_stride, M, K4, C + n0, ldc, nvalid);
  }
}

}  // namespace bitflow::avx512

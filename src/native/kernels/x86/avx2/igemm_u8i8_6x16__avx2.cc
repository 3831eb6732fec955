// igemm_u8i8_6x16__avx2: exact uint8 x int8 GEMM against weights packed as int16 pairs
// (IgemmPacked16Fn, kernels.h). A tile is 6 A rows x one block of 16 output channels: 12 ymm
// accumulators of 8 int32 lanes, one lane per output channel. Each step over 2 values of K
// loads the block's two vectors Bp[q][16 rows][2] (int16) and, per A row, broadcasts the row's
// int16 pair A[m][2q], A[m][2q+1] (vpbroadcastd) into vpmaddwd with both: every lane gets
// a0 * b0 + a1 * b1 of its channel, added to its int32 accumulator. No horizontal reduction.
//
// Exactness. Operands are int16 holding a uint8 (0..255) and an int8 (-128..127), so each
// vpmaddwd product is at most 255 * 128 = 32640 in magnitude and a pair sum at most 65280,
// exact in int32 (vpmaddwd saturates nothing: its only overflow case is both pairs equal to
// -32768 * -32768, which these ranges cannot reach). The running sums stay exact while
// K * 255 * 128 < 2^31, which the callers check (check_u8_fan_in). So every output equals the
// integer dot product, bit for bit the reference.
//
// Why not vpmaddubsw on the int8 bytes: it adds the two u8 * s8 products of a byte pair in
// int16 with saturation, and 255 * 127 + 255 * 127 = 64770 > 32767 (e.g. two bright input
// channels under two large weights), so it is not exact for the value ranges used; its
// saturation-free forms (a zero byte in every pair, or the input split into 7 low bits and the
// top bit) need two multiplies per 16 products, the same multiply-port work as vpmaddwd on
// int16 pairs (16 products per instruction) with more shuffling. Widening once, at packing
// (weights) and in im2col (activations), keeps the inner loop to loads, vpmaddwd and vpaddd.
// Built with -mavx2 -mfma -mpopcnt.
#include <immintrin.h>

#include <cstring>

#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx2 {
namespace {

inline __m256i bcast_pair(const std::int16_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

template <int MR>
inline __attribute__((always_inline)) void tile(const std::int16_t* A, std::int64_t lda,
                                                const std::int16_t* B, std::int64_t K2,
                                                std::int32_t* C, std::int64_t ldc,
                                                std::int64_t nvalid) {
  __m256i acc[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = _mm256_setzero_si256();
    acc[i][1] = _mm256_setzero_si256();
  }
  for (std::int64_t q = 0; q < K2; ++q) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + q * 32));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + q * 32 + 16));
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256i a = bcast_pair(A + i * lda + 2 * q);
      acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(a, b0));
      acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(a, b1));
    }
  }
  if (nvalid >= 16) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + i * ldc), acc[i][0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + i * ldc + 8), acc[i][1]);
    }
    return;
  }
  // a partial last block: lanes >= nvalid are not stored
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i n = _mm256_set1_epi32(static_cast<int>(nvalid));
  const __m256i m0 = _mm256_cmpgt_epi32(n, lane);
  const __m256i m1 = _mm256_cmpgt_epi32(n, _mm256_add_epi32(lane, _mm256_set1_epi32(8)));
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_maskstore_epi32(C + i * ldc, m0, acc[i][0]);
    _mm256_maskstore_epi32(C + i * ldc + 8, m1, acc[i][1]);
  }
}

}  // namespace

void igemm_u8i8_6x16__avx2(const std::int16_t* A, std::int64_t lda, const std::int16_t* Bp,
                           std::int64_t M, std::int64_t N, std::int64_t K2, std::int32_t* C,
                           std::int64_t ldc) {
  const std::int64_t block = K2 * kPackedI16NR * 2;  // int16 values per 16-channel block
  for (std::int64_t n0 = 0; n0 < N; n0 += kPackedI16NR) {
    const std::int16_t* B = Bp + (n0 / kPackedI16NR) * block;
    const std::int64_t nvalid = N - n0;
    std::int64_t m = 0;
    for (; m + 6 <= M; m += 6) tile<6>(A + m * lda, lda, B, K2, C + m * ldc + n0, ldc, nvalid);
    switch (M - m) {
      case 5: tile<5>(A + m * lda, lda, B, K2, C + m * ldc + n0, ldc, nvalid); break;
      case 4: tile<4>(A + m * lda, lda, B, K2, C + m * ldc + n0, ldc, nvalid); break;
      case 3: tile<3>(A + m * lda, lda, B, K2, C + m * ldc + n0, ldc, nvalid); break;
      case 2: tile<2>(A + m * lda, lda, B, K2, C + m * ldc + n0, ldc, nvalid); break;
      case 1: tile<1>(A + m * lda, lda, B, K2, C + m * ldc + n0, ldc, nvalid); break;
      default: break;
    }
  }
}

}  // namespace bitflow::avx2

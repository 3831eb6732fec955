// bgemm_4x32__avx512vpopcnt: binary GEMM against packed weights (BgemmPackedFn, kernels.h).
// A tile is 4 A rows x one 32-row weight block: 16 zmm accumulators of 8 int64 lanes, one
// lane per output channel. Each step over one 64-bit word k loads the block's 4 vectors
// Bp[k][0..32) and, per A row, broadcasts A[m][k] (a load-port broadcast) and does
// xor -> vpopcntq -> add into the 4 accumulators of that row: 3 vector ops per 512 bit
// pairs, as in the 4x4 kernel, but K advances in whole words (no masked tail step wasting
// lanes when Kw % 8 != 0) and the epilogue needs no horizontal reduction: vpmovqd narrows
// each accumulator to 8 int32 popcounts, C = k_bits - 2 * pop is stored with a lane mask
// for the last, partial block. Built with -mavx512f -mavx512bw -mavx512vl -mavx512vpopcntdq.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx512 {
namespace {

template <int MR>
inline __attribute__((always_inline)) void tile(const std::uint64_t* A, std::int64_t lda,
                                                const std::uint64_t* B, std::int64_t Kw,
                                                std::int32_t k_bits, std::int32_t* C,
                                                std::int64_t ldc, std::int64_t nvalid) {
  __m512i acc[MR][4];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t k = 0; k < Kw; ++k) {
    const std::uint64_t* bk = B + k * kPackedNR;
    const __m512i b0 = _mm512_loadu_si512(bk), b1 = _mm512_loadu_si512(bk + 8);
    const __m512i b2 = _mm512_loadu_si512(bk + 16), b3 = _mm512_loadu_si512(bk + 24);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(A[i * lda + k]));
      acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(a, b0)));
      acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(a, b1)));
      acc[i][2] = _mm512_add_epi64(acc[i][2], _mm512_popcnt_epi64(_mm512_xor_si512(a, b2)));
      acc[i][3] = _mm512_add_epi64(acc[i][3], _mm512_popcnt_epi64(_mm512_xor_si512(a, b3)));
    }
  }
  const __m256i kb = _mm256_set1_epi32(k_bits);
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const std::int64_t left = nvalid - 8 * j;
    if (left <= 0) break;
    const __mmask8 mask = static_cast<__mmask8>(left >= 8 ? 0xFF : (1u << left) - 1u);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      // popcount <= 64 * Kw fits int32 (the caller checked k_bits fits).
      const __m256i pop = _mm512_cvtepi64_epi32(acc[i][j]);
      const __m256i v = _mm256_sub_epi32(kb, _mm256_slli_epi32(pop, 1));
      _mm256_mask_storeu_epi32(C + i * ldc + 8 * j, mask, v);
    }
  }
}

}  // namespace

void bgemm_4x32__avx512vpopcnt(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* Bp,
                               std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
                               std::int32_t* C, std::int64_t ldc) {
  // The weight block (Kw * 256 bytes) stays in L1 while the A rows stream past it.
  for (std::int64_t n0 = 0; n0 < N; n0 += kPackedNR) {
    const std::uint64_t* B = Bp + (n0 / kPackedNR) * Kw * kPackedNR;
    const std::int64_t nvalid = N - n0 < kPackedNR ? N - n0 : kPackedNR;
    std::int64_t m = 0;
    for (; m + 4 <= M; m += 4) tile<4>(A + m * lda, lda, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid);
    switch (M - m) {
      case 3: tile<3>(A + m * lda, lda, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid); break;
      case 2: tile<2>(A + m * lda, lda, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid); break;
      case 1: tile<1>(A + m * lda, lda, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid); break;
      default: break;
    }
  }
}

}  // namespace bitflow::avx512

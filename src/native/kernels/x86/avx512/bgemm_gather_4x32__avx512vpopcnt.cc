// bgemm_gather_4x32__avx512vpopcnt: binary GEMM against packed weights with A rows gathered in
// place (BgemmGatherFn, kernels.h): the implicit-GEMM form of a binary convolution whose taps
// are whole words (C a multiple of 64), with no im2col matrix. Row m is the base pointer A[m]
// and its word k is A[m][koff[k]] (tap (i, j), word q of the zero-bordered input image). The
// tile is bgemm_4x32's: 4 rows x one 32-row weight block, 16 zmm accumulators of 8 int64
// lanes (one per output channel); each word step loads the block's 4 vectors and per row
// broadcasts its word into xor -> vpopcntq -> add; the epilogue narrows to int32 and stores
// C = k_bits - 2 * popcount with a lane mask for a partial block. Built with -mavx512f
// -mavx512bw -mavx512vl -mavx512vpopcntdq.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx512 {
namespace {

template <int MR>
inline __attribute__((always_inline)) void tile(const std::uint64_t* const* A,
                                                const std::int64_t* koff, const std::uint64_t* B,
                                                std::int64_t Kw, std::int32_t k_bits,
                                                std::int32_t* C, std::int64_t ldc,
                                                std::int64_t nvalid) {
  const std::uint64_t* a_row[MR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) a_row[i] = A[i];
  __m512i acc[MR][4];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t k = 0; k < Kw; ++k) {
    const std::int64_t off = koff[k];
    const std::uint64_t* bk = B + k * kPackedNR;
    const __m512i b0 = _mm512_loadu_si512(bk), b1 = _mm512_loadu_si512(bk + 8);
    const __m512i b2 = _mm512_loadu_si512(bk + 16), b3 = _mm512_loadu_si512(bk + 24);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(a_row[i][off]));
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

void bgemm_gather_4x32__avx512vpopcnt(const std::uint64_t* const* A, const std::int64_t* koff,
                                      const std::uint64_t* Bp, std::int64_t M, std::int64_t N,
                                      std::int64_t Kw, std::int32_t k_bits, std::int32_t* C,
                                      std::int64_t ldc) {
  // The weight block (Kw * 256 bytes) stays in L1 while the rows stream past it.
  for (std::int64_t n0 = 0; n0 < N; n0 += kPackedNR) {
    const std::uint64_t* B = Bp + (n0 / kPackedNR) * Kw * kPackedNR;
    const std::int64_t nvalid = N - n0 < kPackedNR ? N - n0 : kPackedNR;
    std::int64_t m = 0;
    for (; m + 4 <= M; m += 4) tile<4>(A + m, koff, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid);
    switch (M - m) {
      case 3: tile<3>(A + m, koff, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid); break;
      case 2: tile<2>(A + m, koff, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid); break;
      case 1: tile<1>(A + m, koff, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid); break;
      default: break;
    }
  }
}

}  // namespace bitflow::avx512

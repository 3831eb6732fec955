// bgemm_2x16__avx2: binary GEMM against packed weights (BgemmPackedFn, kernels.h) for CPUs
// with AVX2 but no VPOPCNTDQ. A tile is 2 A rows x one half (16 rows) of a 32-row weight
// block: 8 ymm accumulators of 32 byte counters, 4 output channels (64-bit lanes) per
// register. Each step over one 64-bit word k loads the half-block's 4 vectors Bp[k][h..h+16),
// broadcasts A[m][k] per row and does xor -> nibble-lookup popcount (vpshufb of a 16-entry
// table on the low and high nibbles, Mula's method) -> byte add: no horizontal reduction and
// no K tail (K advances in whole words). A byte counter grows by at most 8 per step, so runs
// of <= 31 steps (<= 248) never overflow; after a run vpsadbw sums each lane's 8 bytes into its
// 64-bit total. Epilogue: the low 32 bits of the 64-bit totals are gathered into 8 int32 lanes
// and C = k_bits - 2 * pop is stored (masked for the last, partial half-block).
// Built with -mavx2 -mfma -mpopcnt.
#include <immintrin.h>

#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx2 {
namespace {

constexpr std::int64_t kHalf = kPackedNR / 2;  // 16 output channels per tile
constexpr std::int64_t kRun = 31;              // steps per byte-counter run (31 * 8 <= 255)

inline __m256i popcount_bytes(__m256i x, __m256i lut, __m256i low4) {
  const __m256i lo = _mm256_and_si256(x, low4);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

// Two vectors of 4 64-bit totals (< 2^31) -> 8 int32 k_bits - 2 * total, in lane order.
inline __m256i finish(__m256i t_lo, __m256i t_hi, __m256i kb) {
  // per 128-bit lane: [lo.q0, lo.q1, hi.q0, hi.q1] (low dwords), then order the 64-bit chunks
  const __m256 s = _mm256_shuffle_ps(_mm256_castsi256_ps(t_lo), _mm256_castsi256_ps(t_hi),
                                     _MM_SHUFFLE(2, 0, 2, 0));
  const __m256i pop = _mm256_permute4x64_epi64(_mm256_castps_si256(s), _MM_SHUFFLE(3, 1, 2, 0));
  return _mm256_sub_epi32(kb, _mm256_slli_epi32(pop, 1));
}

template <int MR>
inline __attribute__((always_inline)) void tile(const std::uint64_t* A, std::int64_t lda,
                                                const std::uint64_t* B, std::int64_t Kw,
                                                std::int32_t k_bits, std::int32_t* C,
                                                std::int64_t ldc, std::int64_t nvalid) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                       1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  __m256i tot[MR][4];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) tot[i][j] = zero;
  std::int64_t k = 0;
  while (k < Kw) {
    const std::int64_t end = Kw - k > kRun ? k + kRun : Kw;
    __m256i acc[MR][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[i][j] = zero;
    for (; k < end; ++k) {
      const std::uint64_t* bk = B + k * kPackedNR;
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + 4));
      const __m256i b2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + 8));
      const __m256i b3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + 12));
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m256i a = _mm256_set1_epi64x(static_cast<long long>(A[i * lda + k]));
        acc[i][0] = _mm256_add_epi8(acc[i][0], popcount_bytes(_mm256_xor_si256(a, b0), lut, low4));
        acc[i][1] = _mm256_add_epi8(acc[i][1], popcount_bytes(_mm256_xor_si256(a, b1), lut, low4));
        acc[i][2] = _mm256_add_epi8(acc[i][2], popcount_bytes(_mm256_xor_si256(a, b2), lut, low4));
        acc[i][3] = _mm256_add_epi8(acc[i][3], popcount_bytes(_mm256_xor_si256(a, b3), lut, low4));
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) tot[i][j] = _mm256_add_epi64(tot[i][j], _mm256_sad_epu8(acc[i][j], zero));
  }
  const __m256i kb = _mm256_set1_epi32(k_bits);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const std::int64_t left = nvalid - 8 * h;
    if (left <= 0) break;
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      // popcount <= 64 * Kw fits int32 (the caller checked k_bits fits)
      const __m256i v = finish(tot[i][2 * h], tot[i][2 * h + 1], kb);
      std::int32_t* c = C + i * ldc + 8 * h;
      if (left >= 8)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), v);
      else
        _mm256_maskstore_epi32(c, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lane), v);
    }
  }
}

}  // namespace

void bgemm_2x16__avx2(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* Bp,
                      std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
                      std::int32_t* C, std::int64_t ldc) {
  // A half-block of weights (Kw * 128 bytes) stays in L1 while the A rows stream past it.
  for (std::int64_t n0 = 0; n0 < N; n0 += kHalf) {
    const std::uint64_t* B = Bp + (n0 / kPackedNR) * Kw * kPackedNR + n0 % kPackedNR;
    const std::int64_t nvalid = N - n0 < kHalf ? N - n0 : kHalf;
    std::int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile<2>(A + m * lda, lda, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid);
    if (m < M) tile<1>(A + m * lda, lda, B, Kw, k_bits, C + m * ldc + n0, ldc, nvalid);
  }
}

}  // namespace bitflow::avx2

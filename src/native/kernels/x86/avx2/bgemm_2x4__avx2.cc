// bgemm_2x4__avx2: binary GEMM with a 2x4 tile of ymm accumulators (16 ymm registers only).
// Popcount of 256 bits by nibble lookup (vpshufb of a 16-entry table on the low and high
// nibbles of every byte, Mula's method); the byte counts of up to 31 steps accumulate in
// bytes and are then summed into 64-bit totals with vpsadbw. K tail: vpmaskmovq loads that
// read zeros beyond Kw.
// Built with -mavx2 -mfma -mpopcnt.
#include <immintrin.h>


#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx2 {
namespace {

inline __m256i popcount_bytes(__m256i x, __m256i lut, __m256i low4) {
  const __m256i lo = _mm256_and_si256(x, low4);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline __m256i nibble_lut() {
  // popcount of 0..15, repeated in both 128-bit lanes (vpshufb looks up within a lane).
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3,
                          1, 2, 2, 3, 2, 3, 3, 4);
}

inline __m256i load_words(const std::uint64_t* p, std::int64_t n) {
  // Loads n (1..4) words and zeros for the rest.
  const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), idx);
  return _mm256_maskload_epi64(reinterpret_cast<const long long*>(p), mask);
}

inline std::int64_t hsum64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

template <int MR, int NR>
void tile(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B, std::int64_t ldb,
          std::int64_t Kw, std::int32_t k_bits, std::int32_t mult, bool accumulate,
          std::int32_t* C, std::int64_t ldc) {
  const __m256i lut = nibble_lut();
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  // Byte counters: a step adds at most 8 per byte, so 31 steps (<= 248) never overflow;
  // after each run of <= 31 steps they are summed into 64-bit totals with vpsadbw.
  constexpr std::int64_t kRun = 31;
  std::int64_t total[MR][NR] = {};
  std::int64_t k = 0;
  while (k < Kw) {
    __m256i acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
    const std::int64_t run_end = Kw - k > 4 * kRun ? k + 4 * kRun : Kw;
    for (; k < run_end; k += 4) {
      __m256i a[MR], b[NR];
      if (__builtin_expect(k + 4 <= Kw, 1)) {
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i)
          a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A + i * lda + k));
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j)
          b[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + j * ldb + k));
      } else {
        for (int i = 0; i < MR; ++i) a[i] = load_words(A + i * lda + k, Kw - k);
        for (int j = 0; j < NR; ++j) b[j] = load_words(B + j * ldb + k, Kw - k);
      }
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j)
          acc[i][j] = _mm256_add_epi8(acc[i][j], popcount_bytes(_mm256_xor_si256(a[i], b[j]), lut, low4));
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) total[i][j] += hsum64(_mm256_sad_epu8(acc[i][j], zero));
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      const std::int32_t v = mult * static_cast<std::int32_t>(k_bits - 2 * total[i][j]);
      std::int32_t& c = C[i * ldc + j];
      c = accumulate ? c + v : v;
    }
  }
}

using TileFn = void (*)(const std::uint64_t*, std::int64_t, const std::uint64_t*, std::int64_t,
                        std::int64_t, std::int32_t, std::int32_t, bool, std::int32_t*,
                        std::int64_t);
constexpr int kMR = 2, kNR = 4;
const TileFn kTiles[kMR][kNR] = {
    {tile<1, 1>, tile<1, 2>, tile<1, 3>, tile<1, 4>},
    {tile<2, 1>, tile<2, 2>, tile<2, 3>, tile<2, 4>},
};

}  // namespace

void bgemm_2x4__avx2(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B,
                     std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t Kw,
                     std::int32_t k_bits, std::int32_t mult, bool accumulate, std::int32_t* C,
                     std::int64_t ldc) {
  for (std::int64_t n = 0; n < N; n += kNR) {
    const int nr = static_cast<int>(N - n < kNR ? N - n : kNR);
    for (std::int64_t m = 0; m < M; m += kMR) {
      const int mr = static_cast<int>(M - m < kMR ? M - m : kMR);
      kTiles[mr - 1][nr - 1](A + m * lda, lda, B + n * ldb, ldb, Kw, k_bits, mult, accumulate,
                             C + m * ldc + n, ldc);
    }
  }
}

double peak_probe__avx2(double seconds) {
  // 8 independent xor -> nibble-lookup popcount -> vpsadbw -> add chains (256 MACs each);
  // named variables stay in ymm registers, the empty asm prevents hoisting.
  const __m256i lut = nibble_lut();
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i b = _mm256_set1_epi64x(static_cast<long long>(0xa5a5a5a5a5a5a5a5ULL));
#define BF_DECL(i)                                                     \
  __m256i a##i = _mm256_set1_epi64x(0x0123456789abcdefLL * (i + 1)); \
  __m256i c##i = _mm256_setzero_si256();
  BF_DECL(0) BF_DECL(1) BF_DECL(2) BF_DECL(3)
#undef BF_DECL
  const double t0 = thread_cpu_seconds();
  std::int64_t iters = 0;
  double elapsed = 0.0;
  constexpr int kInner = 4096;
  do {
    for (int r = 0; r < kInner; ++r) {
      __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3));
#define BF_STEP(i) \
  c##i = _mm256_add_epi64(c##i, _mm256_sad_epu8(popcount_bytes(_mm256_xor_si256(a##i, b), lut, low4), zero));
      BF_STEP(0) BF_STEP(1) BF_STEP(2) BF_STEP(3)
#undef BF_STEP
    }
    iters += kInner;
    elapsed = thread_cpu_seconds() - t0;
  } while (elapsed < seconds);
  const std::int64_t total = hsum64(_mm256_add_epi64(_mm256_add_epi64(c0, c1), _mm256_add_epi64(c2, c3)));
  __asm__ volatile("" : : "r"(total));
  return static_cast<double>(iters) * 4 * 256.0 / elapsed;
}

}  // namespace bitflow::avx2

// bgemm_4x4__avx512vpopcnt: binary GEMM with a 4x4 register tile of zmm accumulators.
// Each step loads 8 words (512 bits) of 4 A rows and 4 B rows, and for the 16 pairs does
// xor -> vpopcntq -> add into 64-bit lanes; the K tail (Kw % 8 words) uses masked loads
// that read zeros, and zeros xor zeros count nothing. After the K loop, each row of 4
// accumulators is reduced to 4 int64 sums with a shuffle tree (for Kw < 1024 the 16 sums
// are packed as 16-bit fields and reduced together), then
// C = (accumulate ? C : 0) + mult * (k_bits - 2 * popcount).
// Built with -mavx512f -mavx512bw -mavx512vl -mavx512vpopcntdq.
#include <immintrin.h>


#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx512 {
namespace {

// Sums of the 8 lanes of each of v0..v3, as 4 int64 lanes [sum v0, sum v1, sum v2, sum v3].
inline __m256i reduce4(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
  // Per 128-bit lane L: s01.L = [v0[2L] + v0[2L+1], v1[2L] + v1[2L+1]].
  const __m512i s01 = _mm512_add_epi64(_mm512_unpacklo_epi64(v0, v1), _mm512_unpackhi_epi64(v0, v1));
  const __m512i s23 = _mm512_add_epi64(_mm512_unpacklo_epi64(v2, v3), _mm512_unpackhi_epi64(v2, v3));
  // t = [s01.L0 + s01.L1, s01.L2 + s01.L3, s23.L0 + s23.L1, s23.L2 + s23.L3].
  const __m512i t = _mm512_add_epi64(_mm512_shuffle_i64x2(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_i64x2(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
  // u.L0 = [sum v0, sum v1], u.L2 = [sum v2, sum v3].
  const __m512i u = _mm512_add_epi64(t, _mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castsi512_si256(_mm512_shuffle_i64x2(u, u, _MM_SHUFFLE(0, 0, 2, 0)));
}

template <int MR, int NR>
inline __attribute__((always_inline)) void tile(const std::uint64_t* A, std::int64_t lda,
                                                const std::uint64_t* B, std::int64_t ldb,
                                                std::int64_t Kw, std::int32_t k_bits,
                                                std::int32_t mult, bool accumulate,
                                                std::int32_t* C, std::int64_t ldc) {
  __m512i acc[MR][4];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_si512();
  // Unmasked loads in the body (a zero-masking load costs an extra ALU uop on some cores);
  // masked zero-filling loads only on the last, partial step. Keeping both in one loop lets
  // the accumulators stay in the same registers (no copies between a body and a tail).
  const __mmask8 tail = static_cast<__mmask8>((1u << (Kw % 8)) - 1u);
  for (std::int64_t k = 0; k < Kw; k += 8) {
    __m512i a[MR], b[NR];
    if (__builtin_expect(k + 8 <= Kw, 1)) {
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) a[i] = _mm512_loadu_si512(A + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) b[j] = _mm512_loadu_si512(B + j * ldb + k);
    } else {
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) a[i] = _mm512_maskz_loadu_epi64(tail, A + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) b[j] = _mm512_maskz_loadu_epi64(tail, B + j * ldb + k);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j)
        acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(a[i], b[j])));
  }
  const __mmask8 nmask = static_cast<__mmask8>((1u << NR) - 1u);
  if (Kw < 1024) {
    // Packed epilogue. The total popcount of a pair is <= 64 * Kw < 2^16, so the four
    // accumulators of a row fit as 16-bit fields of one vector (acc_j << 16 j): summing its
    // 8 lanes never carries between fields. One shuffle tree then reduces all 4 rows and
    // vpmovzxwd yields the 16 tile sums as int32 in row-major order.
    __m512i packed[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      if (i < MR) {
        packed[i] = _mm512_or_si512(
            _mm512_ternarylogic_epi64(acc[i][0], _mm512_slli_epi64(acc[i][1], 16),
                                      _mm512_slli_epi64(acc[i][2], 32), 0xFE),
            _mm512_slli_epi64(acc[i][3], 48));
      } else {
        packed[i] = _mm512_setzero_si512();
      }
    }
    const __m512i pop = _mm512_cvtepu16_epi32(reduce4(packed[0], packed[1], packed[2], packed[3]));
    const __m512i v = _mm512_mullo_epi32(
        _mm512_sub_epi32(_mm512_set1_epi32(k_bits), _mm512_slli_epi32(pop, 1)), _mm512_set1_epi32(mult));
    alignas(64) std::int32_t buf[16];
    _mm512_store_si512(buf, v);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      __m128i vi = _mm_load_si128(reinterpret_cast<const __m128i*>(buf + 4 * i));
      std::int32_t* c = C + i * ldc;
      if (accumulate) vi = _mm_add_epi32(vi, _mm_maskz_loadu_epi32(nmask, c));
      _mm_mask_storeu_epi32(c, nmask, vi);
    }
    return;
  }
  const __m128i kb = _mm_set1_epi32(k_bits);
  const __m128i mu = _mm_set1_epi32(mult);
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    const __m128i pop = _mm256_cvtepi64_epi32(reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    __m128i v = _mm_mullo_epi32(_mm_sub_epi32(kb, _mm_slli_epi32(pop, 1)), mu);
    std::int32_t* c = C + i * ldc;
    if (accumulate) v = _mm_add_epi32(v, _mm_maskz_loadu_epi32(nmask, c));
    _mm_mask_storeu_epi32(c, nmask, v);
  }
}

using TileFn = void (*)(const std::uint64_t*, std::int64_t, const std::uint64_t*, std::int64_t,
                        std::int64_t, std::int32_t, std::int32_t, bool, std::int32_t*,
                        std::int64_t);
constexpr int kMR = 4, kNR = 4;
const TileFn kTiles[kMR][kNR] = {
    {tile<1, 1>, tile<1, 2>, tile<1, 3>, tile<1, 4>},
    {tile<2, 1>, tile<2, 2>, tile<2, 3>, tile<2, 4>},
    {tile<3, 1>, tile<3, 2>, tile<3, 3>, tile<3, 4>},
    {tile<4, 1>, tile<4, 2>, tile<4, 3>, tile<4, 4>},
};

}  // namespace

void bgemm_4x4__avx512vpopcnt(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B,
                              std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t Kw,
                              std::int32_t k_bits, std::int32_t mult, bool accumulate,
                              std::int32_t* C, std::int64_t ldc) {
  // B tile (4 rows) stays in L1 while the A block streams past it. The next B tile is
  // prefetched while this one is used: with few A rows (batch-1 dense layers) the kernel
  // streams B from L3/DRAM and would otherwise wait on every first touch.
  for (std::int64_t n = 0; n < N; n += kNR) {
    const int nr = static_cast<int>(N - n < kNR ? N - n : kNR);
    if (n + kNR < N) {
      const std::int64_t next_rows = N - n - kNR < kNR ? N - n - kNR : kNR;
      for (std::int64_t r = 0; r < next_rows; ++r) {
        const char* row = reinterpret_cast<const char*>(B + (n + kNR + r) * ldb);
        for (std::int64_t off = 0; off < Kw * 8; off += 64) _mm_prefetch(row + off, _MM_HINT_T0);
      }
    }
    std::int64_t m = 0;
    if (nr == kNR) {
      // The common full tile, inlined into this loop.
      for (; m + kMR <= M; m += kMR)
        tile<kMR, kNR>(A + m * lda, lda, B + n * ldb, ldb, Kw, k_bits, mult, accumulate,
                       C + m * ldc + n, ldc);
    } else {
      for (; m + kMR <= M; m += kMR)
        kTiles[kMR - 1][nr - 1](A + m * lda, lda, B + n * ldb, ldb, Kw, k_bits, mult,
                                accumulate, C + m * ldc + n, ldc);
    }
    if (m < M)
      kTiles[M - m - 1][nr - 1](A + m * lda, lda, B + n * ldb, ldb, Kw, k_bits, mult,
                                accumulate, C + m * ldc + n, ldc);
  }
}

double peak_probe__avx512vpopcnt(double seconds) {
  // 12 independent xor -> vpopcntq -> add chains on register values (512 binary MACs each).
  // Named variables (not arrays) keep every chain in a zmm register; the empty asm marks
  // the inputs as changed each iteration so nothing is hoisted out of the loop.
  const __m512i b = _mm512_set1_epi64(static_cast<long long>(0xa5a5a5a5a5a5a5a5ULL));
#define BF_DECL(i)                                          \
  __m512i a##i = _mm512_set1_epi64(0x0123456789abcdefLL * (i + 1)); \
  __m512i c##i = _mm512_setzero_si512();
  BF_DECL(0) BF_DECL(1) BF_DECL(2) BF_DECL(3) BF_DECL(4) BF_DECL(5)
  BF_DECL(6) BF_DECL(7) BF_DECL(8) BF_DECL(9) BF_DECL(10) BF_DECL(11)
#undef BF_DECL
  const double t0 = thread_cpu_seconds();
  std::int64_t iters = 0;
  double elapsed = 0.0;
  constexpr int kInner = 4096;
  do {
    for (int r = 0; r < kInner; ++r) {
      __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
      __asm__ volatile("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
#define BF_STEP(i) c##i = _mm512_add_epi64(c##i, _mm512_popcnt_epi64(_mm512_xor_si512(a##i, b)));
      BF_STEP(0) BF_STEP(1) BF_STEP(2) BF_STEP(3) BF_STEP(4) BF_STEP(5)
      BF_STEP(6) BF_STEP(7) BF_STEP(8) BF_STEP(9) BF_STEP(10) BF_STEP(11)
#undef BF_STEP
    }
    iters += kInner;
    elapsed = thread_cpu_seconds() - t0;
  } while (elapsed < seconds);
  __m512i s = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(c0, c1), _mm512_add_epi64(c2, c3)),
                               _mm512_add_epi64(_mm512_add_epi64(c4, c5), _mm512_add_epi64(c6, c7)));
  s = _mm512_add_epi64(s, _mm512_add_epi64(_mm512_add_epi64(c8, c9), _mm512_add_epi64(c10, c11)));
  long long total = _mm512_reduce_add_epi64(s);
  __asm__ volatile("" : : "r"(total));
  return static_cast<double>(iters) * 12 * 512.0 / elapsed;
}

}  // namespace bitflow::avx512

// Binary GEMM on NEON: a 4x4 tile of output dots, K two words (128 bits) at a time:
// EOR (veorq_u64), CNT per byte (vcntq_u8), then UADALP (vpadalq_u8) folds the 16 byte
// counts pairwise into 8 uint16 lanes of the tile's accumulator. A uint16 lane grows by at
// most 16 per step, so every kFlush steps the lanes are folded (vpadalq_u16) into uint32
// totals before they could overflow. An odd last word uses a 64-bit CNT. The total popcount
// is the horizontal sum of a tile entry's lanes; dot = k_bits - 2 popcount (common.h).
#include <arm_neon.h>

#include "../arm_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::neon {
namespace {

// 16 per step per uint16 lane: 4095 steps fit; flush well before.
constexpr std::int64_t kFlush = 2048;

template <int MR, int NR>
void tile(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B, std::int64_t ldb,
          std::int64_t Kw, std::int32_t k_bits, std::int32_t mult, bool accumulate,
          std::int32_t* C, std::int64_t ldc) {
  uint32x4_t total[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) total[i][j] = vdupq_n_u32(0);
  const std::int64_t pairs = Kw / 2;
  for (std::int64_t k0 = 0; k0 < pairs; k0 += kFlush) {
    const std::int64_t k1 = k0 + kFlush < pairs ? k0 + kFlush : pairs;
    uint16x8_t acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = vdupq_n_u16(0);
    for (std::int64_t k = k0; k < k1; ++k) {
      uint64x2_t a[MR], b[NR];
      for (int i = 0; i < MR; ++i) a[i] = vld1q_u64(A + i * lda + 2 * k);
      for (int j = 0; j < NR; ++j) b[j] = vld1q_u64(B + j * ldb + 2 * k);
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j)
          acc[i][j] = vpadalq_u8(acc[i][j], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(a[i], b[j]))));
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) total[i][j] = vpadalq_u16(total[i][j], acc[i][j]);
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      std::int64_t pop = static_cast<std::int64_t>(vaddvq_u32(total[i][j]));
      if (Kw % 2 != 0) {
        const std::uint64_t x = A[i * lda + Kw - 1] ^ B[j * ldb + Kw - 1];
        pop += vaddv_u8(vcnt_u8(vcreate_u8(x)));
      }
      const std::int32_t v = mult * static_cast<std::int32_t>(k_bits - 2 * pop);
      std::int32_t& c = C[i * ldc + j];
      c = accumulate ? c + v : v;
    }
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

void bgemm_4x4__neon(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B,
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

double peak_probe__neon(double seconds) {
  // 8 independent EOR + CNT + UADALP chains on register values (128 binary MACs each per
  // step); the empty asm keeps the operands opaque so nothing is hoisted out of the loop.
  uint64x2_t a[8];
  for (int i = 0; i < 8; ++i) a[i] = vdupq_n_u64(0x0123456789abcdefULL * static_cast<std::uint64_t>(i + 1));
  const uint64x2_t b = vdupq_n_u64(0xa5a5a5a5a5a5a5a5ULL);
  uint32x4_t total = vdupq_n_u32(0);
  std::int64_t iters = 0;
  const double t0 = thread_cpu_seconds();
  double elapsed = 0.0;
  do {
    uint16x8_t acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = vdupq_n_u16(0);
    for (int r = 0; r < 1024; ++r) {
      for (int i = 0; i < 8; ++i) {
        __asm__ volatile("" : "+w"(a[i]));
        acc[i] = vpadalq_u8(acc[i], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(a[i], b))));
      }
    }
    for (int i = 0; i < 8; ++i) total = vpadalq_u16(total, acc[i]);
    iters += 1024;
    elapsed = thread_cpu_seconds() - t0;
  } while (elapsed < seconds);
  const std::uint32_t sink = vaddvq_u32(total);
  __asm__ volatile("" : : "r"(sink));
  return static_cast<double>(iters) * 8.0 * 128.0 / elapsed;
}

}  // namespace bitflow::neon

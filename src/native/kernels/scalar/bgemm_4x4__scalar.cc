// Portable 64-bit kernel set: 4x4 register tile of int64 popcount accumulators using
// __builtin_popcountll (on x86-64 compiled with -mpopcnt, so the set needs POPCNT there).
// Float and int8 GEMMs are the reference loops (there is no scalar speed-up to have there).

#include "bitflow/kernels.h"

namespace bitflow::scalar {
namespace {

template <int MR, int NR>
void tile(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B, std::int64_t ldb,
          std::int64_t Kw, std::int32_t k_bits, std::int32_t mult, bool accumulate,
          std::int32_t* C, std::int64_t ldc) {
  std::int64_t acc[MR][NR] = {};
  for (std::int64_t k = 0; k < Kw; ++k) {
    std::uint64_t a[MR], b[NR];
    for (int i = 0; i < MR; ++i) a[i] = A[i * lda + k];
    for (int j = 0; j < NR; ++j) b[j] = B[j * ldb + k];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] += __builtin_popcountll(a[i] ^ b[j]);
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      const std::int32_t v = mult * static_cast<std::int32_t>(k_bits - 2 * acc[i][j]);
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

void bgemm(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B, std::int64_t ldb,
           std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
           std::int32_t mult, bool accumulate, std::int32_t* C, std::int64_t ldc) {
  for (std::int64_t n = 0; n < N; n += kNR) {
    const int nr = static_cast<int>(N - n < kNR ? N - n : kNR);
    for (std::int64_t m = 0; m < M; m += kMR) {
      const int mr = static_cast<int>(M - m < kMR ? M - m : kMR);
      kTiles[mr - 1][nr - 1](A + m * lda, lda, B + n * ldb, ldb, Kw, k_bits, mult, accumulate,
                             C + m * ldc + n, ldc);
    }
  }
}

double peak_probe(double seconds) {
  // 8 independent xor + popcount + add chains on register values; named variables stay in
  // registers, and the empty asm marks the inputs as changed so nothing is hoisted.
  const std::uint64_t b = 0xa5a5a5a5a5a5a5a5ULL;
#define BF_DECL(i)                                          \
  std::uint64_t a##i = 0x0123456789abcdefULL * (i + 1); \
  std::uint64_t c##i = 0;
  BF_DECL(0) BF_DECL(1) BF_DECL(2) BF_DECL(3) BF_DECL(4) BF_DECL(5) BF_DECL(6) BF_DECL(7)
#undef BF_DECL
  const double t0 = thread_cpu_seconds();
  std::int64_t iters = 0;
  double elapsed = 0.0;
  constexpr int kInner = 4096;
  do {
    for (int r = 0; r < kInner; ++r) {
      __asm__ volatile("" : "+r"(a0), "+r"(a1), "+r"(a2), "+r"(a3));
      __asm__ volatile("" : "+r"(a4), "+r"(a5), "+r"(a6), "+r"(a7));
#define BF_STEP(i) c##i += static_cast<std::uint64_t>(__builtin_popcountll(a##i ^ b));
      BF_STEP(0) BF_STEP(1) BF_STEP(2) BF_STEP(3) BF_STEP(4) BF_STEP(5) BF_STEP(6) BF_STEP(7)
#undef BF_STEP
    }
    iters += kInner;
    elapsed = thread_cpu_seconds() - t0;
  } while (elapsed < seconds);
  const std::uint64_t total = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7;
  __asm__ volatile("" : : "r"(total));
  return static_cast<double>(iters) * 8.0 * 64.0 / elapsed;
}

bool supported([[maybe_unused]] const CpuFeatures& f) {
#if defined(__x86_64__) || defined(_M_X64)
  return f.popcnt;  // this file is built with -mpopcnt on x86-64
#else
  return true;  // plain C++: the compiler's own popcount lowering
#endif
}

// Only bgemm (and its peak probe) is this set's own; the other ops are the reference loops,
// which a per-op selection never prefers over the reference itself.
bool op_supported(KernelOp op, const CpuFeatures& f) { return op == KernelOp::kBgemm && supported(f); }

}  // namespace
}  // namespace bitflow::scalar

namespace bitflow {
const KernelSet kScalarKernels = {"scalar",
                                  "bgemm_4x4__scalar",
                                  "sgemm_1x1__ref",
                                  "igemm_u8i8_1x1__ref",
                                  "bitpack_f32__ref",
                                  &scalar::bgemm,
                                  &ref::sgemm,
                                  &ref::igemm_u8i8,
                                  &ref::bitpack_f32,
                                  &scalar::peak_probe,
                                  &scalar::supported,
                                  &ref::threshold_bits_range,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  "threshold_bits__ref",
                                  nullptr,
                                  nullptr,
                                  nullptr,  // igemm_gather
                                  nullptr,
                                  nullptr,  // bgemm_gather
                                  nullptr,
                                  nullptr,  // sgemm_gather
                                  nullptr,
                                  &scalar::op_supported};
}  // namespace bitflow

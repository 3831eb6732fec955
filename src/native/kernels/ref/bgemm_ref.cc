// Reference GEMMs: the definition every optimized kernel must reproduce (integers bit for
// bit; floats within the documented dot-product error bound).
// Compiled with -ffp-contract=off: sgemm sums in float32, in order k = 0, 1, ..., K-1, one
// rounding per multiply and per add, then adds the bias.

#include "bitflow/kernels.h"

namespace bitflow::ref {

namespace {
// Portable popcount (no instruction-set assumption): Wegner's loop would be slow, so use
// the SWAR bit-sum: pairs, nibbles, bytes, then a multiply gathers the byte sums.
inline int popcount64(std::uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int>((x * 0x0101010101010101ULL) >> 56);
}
}  // namespace

void bgemm(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B, std::int64_t ldb,
           std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
           std::int32_t mult, bool accumulate, std::int32_t* C, std::int64_t ldc) {
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t n = 0; n < N; ++n) {
      std::int64_t pop = 0;
      for (std::int64_t k = 0; k < Kw; ++k) pop += popcount64(A[m * lda + k] ^ B[n * ldb + k]);
      const std::int32_t v = mult * static_cast<std::int32_t>(k_bits - 2 * pop);
      C[m * ldc + n] = accumulate ? C[m * ldc + n] + v : v;
    }
  }
}

void bgemm_packed(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* Bp,
                  std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
                  std::int32_t* C, std::int64_t ldc) {
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t n = 0; n < N; ++n) {
      const std::uint64_t* b = Bp + (n / kPackedNR) * Kw * kPackedNR + n % kPackedNR;
      std::int64_t pop = 0;
      for (std::int64_t k = 0; k < Kw; ++k) pop += popcount64(A[m * lda + k] ^ b[k * kPackedNR]);
      C[m * ldc + n] = static_cast<std::int32_t>(k_bits - 2 * pop);
    }
  }
}

void igemm_packed(const std::uint8_t* A, std::int64_t lda, const std::int8_t* Bp, std::int64_t M,
                  std::int64_t N, std::int64_t K4, std::int32_t* C, std::int64_t ldc) {
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int8_t* b = Bp + ((n / kPackedI8NR) * K4 * kPackedI8NR + n % kPackedI8NR) * 4;
      std::int32_t acc = 0;
      for (std::int64_t q = 0; q < K4; ++q)
        for (int i = 0; i < 4; ++i)
          acc += static_cast<std::int32_t>(A[m * lda + 4 * q + i]) *
                 static_cast<std::int32_t>(b[q * kPackedI8NR * 4 + i]);
      C[m * ldc + n] = acc;
    }
  }
}

void sgemm(const float* A, std::int64_t lda, const float* B, std::int64_t ldb, std::int64_t M,
           std::int64_t N, std::int64_t K, const float* bias, float* C, std::int64_t ldc) {
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t n = 0; n < N; ++n) {
      float acc = 0.0f;
      for (std::int64_t k = 0; k < K; ++k) acc += A[m * lda + k] * B[n * ldb + k];
      C[m * ldc + n] = bias != nullptr ? acc + bias[n] : acc;
    }
  }
}

void igemm_u8i8(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
                std::int64_t M, std::int64_t N, std::int64_t K, std::int32_t* C,
                std::int64_t ldc) {
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t n = 0; n < N; ++n) {
      std::int32_t acc = 0;
      for (std::int64_t k = 0; k < K; ++k)
        acc += static_cast<std::int32_t>(A[m * lda + k]) * static_cast<std::int32_t>(B[n * ldb + k]);
      C[m * ldc + n] = acc;
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
#define BF_STEP(i) c##i += static_cast<std::uint64_t>(popcount64(a##i ^ b));
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

}  // namespace bitflow::ref

namespace bitflow {
namespace {
bool ref_supported(const CpuFeatures&) { return true; }
bool ref_op_supported(KernelOp, const CpuFeatures&) { return true; }
}  // namespace
const KernelSet kRefKernels = {"ref",
                               "bgemm_1x1__ref",
                               "sgemm_1x1__ref",
                               "igemm_u8i8_1x1__ref",
                               "bitpack_f32__ref",
                               &ref::bgemm,
                               &ref::sgemm,
                               &ref::igemm_u8i8,
                               &ref::bitpack_f32,
                               &ref::peak_probe,
                               &ref_supported,
                               &ref::threshold_bits_range,
                               "bgemm_packed_1x1__ref",
                               &ref::bgemm_packed,
                               "igemm_packed_1x1__ref",
                               &ref::igemm_packed,
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
                               &ref_op_supported};
}  // namespace bitflow

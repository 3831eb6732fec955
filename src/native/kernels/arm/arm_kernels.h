// Declarations of the aarch64 NEON kernels (each defined in its own file; the dot-product
// kernel is built with +dotprod and only selected when the CPU reports FEAT_DotProd).
// Signatures follow BgemmFn / BitpackF32Fn / ThresholdBitsFn / IgemmU8I8Fn in bitflow/kernels.h.
#pragma once
#include <cstdint>

namespace bitflow::neon {

void bgemm_4x4__neon(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B,
                     std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t Kw,
                     std::int32_t k_bits, std::int32_t mult, bool accumulate, std::int32_t* C,
                     std::int64_t ldc);
double peak_probe__neon(double seconds);
void bitpack_f32__neon(const float* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out);
void threshold_bits__neon(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                          const std::int32_t* lo, const std::int32_t* hi, std::uint64_t* out);
void igemm_u8i8_4x4__neondot(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B,
                             std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t K,
                             std::int32_t* C, std::int64_t ldc);

}  // namespace bitflow::neon

// Declarations of the x86 kernels (each defined in a file compiled with its own -m flags).
// Signatures follow BgemmFn / SgemmFn / IgemmU8I8Fn / PeakProbeFn in bitflow/kernels.h.
#pragma once
#include <cstdint>

namespace bitflow {

namespace avx512 {
void bgemm_4x4__avx512vpopcnt(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B,
                              std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t Kw,
                              std::int32_t k_bits, std::int32_t mult, bool accumulate,
                              std::int32_t* C, std::int64_t ldc);
double peak_probe__avx512vpopcnt(double seconds);
void sgemm_4x4__avx512fma(const float* A, std::int64_t lda, const float* B, std::int64_t ldb,
                          std::int64_t M, std::int64_t N, std::int64_t K, const float* bias,
                          float* C, std::int64_t ldc);
void igemm_u8i8_4x4__avx512vnni(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B,
                                std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t K,
                                std::int32_t* C, std::int64_t ldc);
void bitpack_f32__avx512(const float* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out);
void bgemm_4x32__avx512vpopcnt(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* Bp,
                               std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
                               std::int32_t* C, std::int64_t ldc);
void igemm_u8i8_6x48__avx512vnni(const std::uint8_t* A, std::int64_t lda, const std::int8_t* Bp,
                                 std::int64_t M, std::int64_t N, std::int64_t K4, std::int32_t* C,
                                 std::int64_t ldc);
void sgemm_4x48__avx512fma(const float* A, std::int64_t lda, const float* Bp, std::int64_t M,
                           std::int64_t N, std::int64_t K, const float* bias, float* C,
                           std::int64_t ldc);
void threshold_bits__avx512(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                            const std::int32_t* lo, const std::int32_t* hi, std::uint64_t* out);
void igemm_u8i8_gather_6x48__avx512vnni(const std::uint8_t* const* A, const std::int64_t* koff,
                                        const std::int8_t* Bp, std::int64_t M, std::int64_t N,
                                        std::int64_t K4, std::int32_t* C, std::int64_t ldc);
void bgemm_gather_4x32__avx512vpopcnt(const std::uint64_t* const* A, const std::int64_t* koff,
                                      const std::uint64_t* Bp, std::int64_t M, std::int64_t N,
                                      std::int64_t Kw, std::int32_t k_bits, std::int32_t* C,
                                      std::int64_t ldc);
void sgemm_gather_4x48__avx512fma(const float* const* A, const std::int64_t* koff, const float* Bp,
                                  std::int64_t M, std::int64_t N, std::int64_t K, const float* bias,
                                  float* C, std::int64_t ldc);
}  // namespace avx512

namespace avx2 {
void bgemm_2x4__avx2(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B,
                     std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t Kw,
                     std::int32_t k_bits, std::int32_t mult, bool accumulate, std::int32_t* C,
                     std::int64_t ldc);
double peak_probe__avx2(double seconds);
void sgemm_2x4__avx2fma(const float* A, std::int64_t lda, const float* B, std::int64_t ldb,
                        std::int64_t M, std::int64_t N, std::int64_t K, const float* bias,
                        float* C, std::int64_t ldc);
void igemm_u8i8_2x4__avx2(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B,
                          std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t K,
                          std::int32_t* C, std::int64_t ldc);
void bitpack_f32__avx2(const float* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out);
void bgemm_2x16__avx2(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* Bp,
                      std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
                      std::int32_t* C, std::int64_t ldc);
void igemm_u8i8_6x16__avx2(const std::int16_t* A, std::int64_t lda, const std::int16_t* Bp,
                           std::int64_t M, std::int64_t N, std::int64_t K2, std::int32_t* C,
                           std::int64_t ldc);
void threshold_bits__avx2(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                          const std::int32_t* lo, const std::int32_t* hi, std::uint64_t* out);
void sgemm_6x16__avx2fma(const float* A, std::int64_t lda, const float* Bp, std::int64_t M,
                         std::int64_t N, std::int64_t K, const float* bias, float* C,
                         std::int64_t ldc);
}  // namespace avx2

}  // namespace bitflow

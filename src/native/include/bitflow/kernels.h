// Kernel interfaces and the one list of kernel sets that drives dispatch, tests, benchmarks.
//
// A kernel set bundles the inner kernels of one instruction set: binary GEMM (xor-popcount),
// float GEMM (first/last layers), uint8 x int8 GEMM (fixed-point first layer), float32 bit
// packing, and a peak probe (the benchmark's roofline). The three GEMMs
// use the "both operands K-contiguous" layout: C[m, n] = sum_k A[m, k] op B[n, k], where A
// rows are im2col rows of NHWC activations and B rows are weight rows [O][kh][kw][C]. The
// ISA-independent drivers in ops/ do blocking, threading, im2col and padding corrections.
#pragma once
#include <time.h>

#include <cstdint>

#include "bitflow/common.h"
#include "bitflow/cpu.h"

namespace bitflow {

/// Binary GEMM on packed rows.
///   C[m * ldc + n] = (accumulate ? C[m * ldc + n] : 0) + mult * (k_bits - 2 * popcount(A[m] ^ B[n]))
/// A: M rows of Kw words (row stride lda words); B: N rows of Kw words (stride ldb).
/// The caller guarantees the result fits in int32.
using BgemmFn = void (*)(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B,
                         std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t Kw,
                         std::int32_t k_bits, std::int32_t mult, bool accumulate, std::int32_t* C,
                         std::int64_t ldc);

/// Float GEMM: C[m * ldc + n] = sum_k A[m * lda + k] * B[n * ldb + k] (+ bias[n] if bias).
/// The summation order is the kernel's own (see each kernel); results agree with the
/// reference within the float32 dot-product error bound documented in ops.h.
using SgemmFn = void (*)(const float* A, std::int64_t lda, const float* B, std::int64_t ldb,
                         std::int64_t M, std::int64_t N, std::int64_t K, const float* bias,
                         float* C, std::int64_t ldc);

/// Exact integer GEMM: C[m * ldc + n] = sum_k int32(A[m, k]) * int32(B[n, k]),
/// A uint8, B int8. The caller guarantees K * 255 * 128 < 2^31 (no overflow).
using IgemmU8I8Fn = void (*)(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B,
                             std::int64_t ldb, std::int64_t M, std::int64_t N, std::int64_t K,
                             std::int32_t* C, std::int64_t ldc);

/// Bit packing of float rows: out[r * words_for(cols) + c / 64] bit c % 64 = (x[r * cols + c] < 0)
/// for rows [0, rows); padding bits 0; NaN and -0.0 give 0 (ordered "less than" compare).
using BitpackF32Fn = void (*)(const float* x, std::int64_t rows, std::int64_t cols,
                              std::uint64_t* out);

/// Binary GEMM against pre-packed weights ("outer-product" form, no horizontal reductions).
/// Bp holds the N weight rows in blocks of kPackedNR = 32 rows, word-interleaved:
///   Bp[(nb * Kw + k) * 32 + r] = B[nb * 32 + r][k]   (rows >= N are zero),
/// see pack_bgemm_weights in ops.h. The call computes, for n in [0, N) (N may stop inside a
/// block; Bp points at the block of column 0):
///   C[m * ldc + n] = k_bits - 2 * popcount(A[m] ^ B[n])   over Kw words.
/// A kernel vectorizes over the 32 rows of a block (8 per 512-bit register, one broadcast A
/// word per step), so K is processed in whole 64-bit words with no tail and no reduction.
inline constexpr std::int64_t kPackedNR = 32;
using BgemmPackedFn = void (*)(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* Bp,
                               std::int64_t M, std::int64_t N, std::int64_t Kw,
                               std::int32_t k_bits, std::int32_t* C, std::int64_t ldc);

/// BgemmPackedFn with A rows gathered in place (the implicit-GEMM form of a binary convolution
/// whose taps are whole words): row m is the base pointer A[m] and its word k is
/// A[m][koff[k]]. For n in [0, N) (Bp points at column 0's block):
///   C[m * ldc + n] = k_bits - 2 * sum_k popcount(A[m][koff[k]] ^ B[n][k]).
using BgemmGatherFn = void (*)(const std::uint64_t* const* A, const std::int64_t* koff,
                               const std::uint64_t* Bp, std::int64_t M, std::int64_t N,
                               std::int64_t Kw, std::int32_t k_bits, std::int32_t* C,
                               std::int64_t ldc);

/// Exact uint8 x int8 GEMM against pre-packed weights (vpdpbusd "outer-product" form).
/// Bp holds N weight rows of K bytes in blocks of kPackedI8NR = 16 rows, 4 bytes of K at a
/// time:  Bp[((nb * K4 + q) * 16 + r) * 4 + b] = B[nb * 16 + r][4 q + b]  (zero for rows >= N
/// and bytes >= K; K4 = ceil(K / 4)), see pack_igemm_weights in ops.h. A rows have K4 * 4
/// bytes (zero beyond K). The call computes, for n in [0, N) (Bp points at column 0's block):
///   C[m * ldc + n] = sum_k int32(A[m, k]) * int32(B[n, k]).
inline constexpr std::int64_t kPackedI8NR = 16;
using IgemmPackedFn = void (*)(const std::uint8_t* A, std::int64_t lda, const std::int8_t* Bp,
                               std::int64_t M, std::int64_t N, std::int64_t K4, std::int32_t* C,
                               std::int64_t ldc);

/// Exact uint8 x int8 GEMM against pre-packed weights (the IgemmPackedFn layout, K4 groups of
/// 4 bytes) whose A rows are gathered in place: row m is the base pointer A[m] and its group q
/// is the 4 bytes at A[m] + koff[q] (the implicit-GEMM form of a convolution: a group is 4
/// bytes of one kernel row's contiguous run of input bytes, no im2col matrix). For n in [0, N)
/// (Bp points at column 0's block):
///   C[m * ldc + n] = sum_q sum_{b<4} int32(A[m][koff[q] + b]) * int32(B[n][4 q + b]).
using IgemmGatherFn = void (*)(const std::uint8_t* const* A, const std::int64_t* koff,
                               const std::int8_t* Bp, std::int64_t M, std::int64_t N,
                               std::int64_t K4, std::int32_t* C, std::int64_t ldc);

/// Exact uint8 x int8 GEMM with both operands widened to int16 (vpmaddwd "outer-product" form,
/// for ISAs without a u8 x s8 -> int32 dot-product instruction). Bp holds N weight rows of K
/// int8 values as int16, in blocks of kPackedI16NR = 16 rows, 2 values of K at a time:
///   Bp[((nb * K2 + q) * 16 + r) * 2 + b] = B[nb * 16 + r][2 q + b]  (zero for rows >= N and
/// values >= K; K2 = ceil(K / 2)), see pack_igemm16_weights in ops.h. A rows hold the uint8
/// activations as int16 (0..255), K2 * 2 values (zero beyond K). For n in [0, N) (Bp points
/// at column 0's block):  C[m * ldc + n] = sum_k int32(A[m, k]) * int32(B[n, k]).
inline constexpr std::int64_t kPackedI16NR = 16;
using IgemmPacked16Fn = void (*)(const std::int16_t* A, std::int64_t lda, const std::int16_t* Bp,
                                 std::int64_t M, std::int64_t N, std::int64_t K2, std::int32_t* C,
                                 std::int64_t ldc);

/// Float GEMM against pre-packed weights (FMA "outer-product" form) for convolutions.
/// Bp holds N weight rows of K floats in blocks of kPackedF32NR = 16 rows, k-major:
///   Bp[(nb * K + k) * 16 + r] = B[nb * 16 + r][k]   (zero for rows >= N),
/// see pack_sgemm_weights in ops.h. For n in [0, N) (Bp points at column 0's block):
///   C[m * ldc + n] = (sum_k A[m, k] * B[n, k]) + bias[n]  (bias optional),
/// the sum taken in order k = 0, 1, ..., K-1 with one fused multiply-add per k (one rounding
/// each), so |error| <= gamma_K sum |a b| (ops.h) and the result does not depend on threads.
inline constexpr std::int64_t kPackedF32NR = 16;
using SgemmPackedFn = void (*)(const float* A, std::int64_t lda, const float* Bp, std::int64_t M,
                               std::int64_t N, std::int64_t K, const float* bias, float* C,
                               std::int64_t ldc);

/// SgemmPackedFn with A rows gathered in place (the implicit-GEMM form of a float convolution):
/// row m is the base pointer A[m] and its element k is A[m][koff[k]]; otherwise as
/// SgemmPackedFn (the same summation order, k = 0..K-1, one FMA per k).
using SgemmGatherFn = void (*)(const float* const* A, const std::int64_t* koff, const float* Bp,
                               std::int64_t M, std::int64_t N, std::int64_t K, const float* bias,
                               float* C, std::int64_t ldc);

/// Threshold to packed bits with per-channel bounds (the "bits" output transform of
/// common.h in range form): the value is +1 iff lo[c] <= acc[r * o + c] <= hi[c], so
///   out[r * words_for(o) + c / 64] bit c % 64 = (acc < lo[c]) || (acc > hi[c]).
/// Direction +1 with threshold T is [lo, hi] = [T, INT32_MAX]; direction -1 is
/// [INT32_MIN, T]. Padding bits of the last word are 0.
using ThresholdBitsFn = void (*)(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                                 const std::int32_t* lo, const std::int32_t* hi,
                                 std::uint64_t* out);

/// CPU time consumed by the calling thread, in seconds (POSIX CLOCK_THREAD_CPUTIME_ID).
/// Peak probes use it so that other processes sharing the core do not lower the result.
inline double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Register-resident xor + popcount + add loop; returns binary MACs per second of thread
/// CPU time, measured over about `seconds` of thread CPU time (one thread).
using PeakProbeFn = double (*)(double seconds);

/// The ops of a kernel set that are selected one by one ("auto", see cpu.h). A packed kernel
/// (bgemm_packed, igemm_packed, sgemm_packed) and the peak probe come from the same set as
/// their base op (bgemm, igemm_u8i8, sgemm, bgemm), so a faster plain kernel is never
/// replaced by a slower set's packed one.
enum class KernelOp { kBgemm, kSgemm, kIgemm, kBitpackF32, kThresholdBits };
inline constexpr KernelOp kKernelOps[] = {KernelOp::kBgemm, KernelOp::kSgemm, KernelOp::kIgemm,
                                          KernelOp::kBitpackF32, KernelOp::kThresholdBits};

struct KernelSet {
  const char* name;         // "ref" | "scalar" | "avx2" | "avx512" | "neon" | "auto"
  const char* bgemm_name;   // e.g. "bgemm_4x4__avx512vpopcnt"
  const char* sgemm_name;   // e.g. "sgemm_4x4__avx512fma"
  const char* igemm_name;   // e.g. "igemm_u8i8_4x4__avx512vnni"
  const char* bitpack_name; // e.g. "bitpack_f32__avx512"
  BgemmFn bgemm;
  SgemmFn sgemm;
  IgemmU8I8Fn igemm_u8i8;
  BitpackF32Fn bitpack_f32;
  PeakProbeFn peak_probe;
  bool (*supported)(const CpuFeatures&);
  ThresholdBitsFn threshold_bits;  // fused output transform of the prepared layers
  // Packed-weight binary GEMM of the prepared layers (nullptr: they use bgemm instead).
  const char* bgemm_packed_name;
  BgemmPackedFn bgemm_packed;
  // Packed-weight uint8 x int8 GEMM of the fixed-point first layer (nullptr: igemm_u8i8).
  const char* igemm_packed_name;
  IgemmPackedFn igemm_packed;
  // Packed-weight float GEMM of the float convolutions (nullptr: sgemm).
  const char* sgemm_packed_name;
  SgemmPackedFn sgemm_packed;
  // Name of the fused threshold kernel.
  const char* threshold_name;
  // Packed-weight uint8 x int8 GEMM on int16 operands (nullptr: none). The prepared int8
  // layers use igemm_packed if set, else this, else igemm_u8i8.
  const char* igemm_packed16_name;
  IgemmPacked16Fn igemm_packed16;
  // Gathered-row (implicit-GEMM) form of igemm_packed for the fixed-point convolutions
  // (nullptr: they build im2col rows for igemm_packed / igemm_packed16 / igemm_u8i8).
  const char* igemm_gather_name;
  IgemmGatherFn igemm_gather;
  // Gathered-row form of bgemm_packed for binary convolutions with whole-word taps (nullptr:
  // they build im2col rows for bgemm_packed).
  const char* bgemm_gather_name;
  BgemmGatherFn bgemm_gather;
  // Gathered-row form of sgemm_packed for float convolutions (nullptr: im2col rows).
  const char* sgemm_gather_name;
  SgemmGatherFn sgemm_gather;
  // Per-op requirements: whether this set's kernel for `op` (with its packed form) runs on a
  // CPU with features f. `supported` (the whole set, for a forced BITFLOW_KERNELS=<set>) is
  // the conjunction over every op.
  bool (*op_supported)(KernelOp op, const CpuFeatures& f);
};

// Kernel sets (defined next to their kernels). Sets for ISAs the compiler cannot target are
// not declared: BITFLOW_HAVE_X86_KERNELS is set by the build for x86-64 GCC/Clang,
// BITFLOW_HAVE_NEON_KERNELS for aarch64 GCC/Clang.
extern const KernelSet kRefKernels;
extern const KernelSet kScalarKernels;
#if defined(BITFLOW_HAVE_X86_KERNELS)
extern const KernelSet kAvx2Kernels;
extern const KernelSet kAvx512Kernels;
#endif
#if defined(BITFLOW_HAVE_NEON_KERNELS)
extern const KernelSet kNeonKernels;
#endif

namespace ref {
// The reference definitions (plain loops).
void bgemm(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* B, std::int64_t ldb,
           std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
           std::int32_t mult, bool accumulate, std::int32_t* C, std::int64_t ldc);
void sgemm(const float* A, std::int64_t lda, const float* B, std::int64_t ldb, std::int64_t M,
           std::int64_t N, std::int64_t K, const float* bias, float* C, std::int64_t ldc);
void igemm_u8i8(const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
                std::int64_t M, std::int64_t N, std::int64_t K, std::int32_t* C,
                std::int64_t ldc);
double peak_probe(double seconds);
void bitpack_f32(const float* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out);
void threshold_bits_range(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                          const std::int32_t* lo, const std::int32_t* hi, std::uint64_t* out);
void bgemm_packed(const std::uint64_t* A, std::int64_t lda, const std::uint64_t* Bp,
                  std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
                  std::int32_t* C, std::int64_t ldc);
void igemm_packed(const std::uint8_t* A, std::int64_t lda, const std::int8_t* Bp, std::int64_t M,
                  std::int64_t N, std::int64_t K4, std::int32_t* C, std::int64_t ldc);
}  // namespace ref

}  // namespace bitflow

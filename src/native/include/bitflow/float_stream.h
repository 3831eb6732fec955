// The fused float stream of residual networks: the engine's one-pass form of
//
//   scale_bias / affine_f32 chains -> add_f32 -> threshold_f32_bits
//
// (Bi-Real units: y = BN(scale(bconv(bits))) + shortcut(x), then the next unit's sign). Each
// operand k is an int32 or float32 [rows, o] value taken through its affine stages
// v = (v * scale[c]) + bias[c] (two float32 roundings per stage, exactly scale_bias /
// affine_f32; an int32 operand is converted to float32 first, as scale_bias does), the
// operands are summed left to right in float32 (add_f32: every partial sum rounded), and the
// sum y is kept and / or thresholded to packed bits (threshold_f32_bits: bit 1 iff y < thr
// for direction +1, y > thr for -1; NaN gives 0). The library is built without FMA
// contraction and without reassociation, so the result equals the unfused ops bit for bit for
// any thread count (every row is computed by one thread with the same instructions).
//
// Operand 0 may be a float32 value read and overwritten in place (y = its own buffer: every
// element is read before it is written, row by row): the epilogue of a float convolution
// (conv2d_f32 -> affine_f32) then needs no second map.
//
// A FloatStream can also run as the epilogue of a prepared binary convolution
// (BinaryLayer::run_epilogue): operand 0 is then the convolution's int32 output, consumed
// block by block while it is still in the cache of the thread that computed it, and never
// written to a full-size buffer.
#pragma once
#include <cstdint>
#include <vector>

#include "bitflow/ops.h"

namespace bitflow::ops {

class FloatStream {
 public:
  struct Stage {
    std::vector<float> scale, bias;
  };
  struct Operand {
    bool i32 = false;  // int32 input (converted to float32 first), else float32
    std::vector<Stage> stages;
  };

  /// o channels (the last axis of every operand); thr / dir (o values each) may be null (no
  /// bits output); keep_y: store the sum y. wide: use the AVX-512 rows (the caller checked
  /// that they are built and that the CPU has AVX-512F; same results, bit for bit).
  /// avx2: use the AVX2 rows where wide is not taken (the caller checked likewise for AVX2).
  FloatStream(std::int64_t o, std::vector<Operand> operands, const float* thr,
              const std::int8_t* dir, bool keep_y, bool wide = false, bool avx2 = false);
  bool wide() const { return wide_; }
  bool avx2() const { return avx2_; }

  std::int64_t channels() const { return o_; }
  std::size_t operand_count() const { return operands_.size(); }
  const Operand& operand(std::size_t k) const { return operands_[k]; }
  bool has_threshold() const { return !thr_.empty(); }
  bool keeps_y() const { return keep_y_; }

  /// Rows [r0, r1): xs[k] is operand k's [rows, o] base pointer (int32 or float32); y
  /// [rows, o] (when keeps_y) and bits [rows, words_for(o)] (when has_threshold).
  void rows(const void* const* xs, std::int64_t r0, std::int64_t r1, float* y,
            std::uint64_t* bits) const;
  /// All rows, split over up to `threads` threads by work size.
  void run(int threads, const void* const* xs, std::int64_t rows, float* y,
           std::uint64_t* bits) const;
  /// Estimated nanoseconds of one row (for the thread split).
  double ns_per_row() const;

 private:
  std::int64_t o_;
  std::vector<Operand> operands_;
  std::vector<float> thr_;
  std::vector<std::uint32_t> pos_;  // per channel: all ones iff direction +1
  bool keep_y_;
  bool wide_;
  bool avx2_;
};

/// threshold_f32_bits of rows [0, rows) with per-channel all-ones masks for direction +1
/// (vectorized form of the definition in transforms_ref.cc; equal bit for bit).
void threshold_f32_bits_rows(const float* y, std::int64_t rows, std::int64_t o, const float* thr,
                             const std::uint32_t* pos, std::uint64_t* out);

/// maxpool_f32 (PyTorch semantics, the definition in pool_ref.cc: the first maximum of the
/// window in row-major order, padded positions ignored, a NaN once seen stays) with the
/// channel loop vectorized; equal bit for bit. Output rows ((n, oh) pairs) over threads.
void maxpool_f32_fast(const float* x, const PoolGeom& g, float* out, int threads, bool wide = false);
/// maxpool_i32 (the definition in pool_ref.cc) with the channel loop in AVX-512 registers when
/// `wide` (and the CPU runs them), else the definition; equal bit for bit.
void maxpool_i32_fast(const std::int32_t* x, const PoolGeom& g, std::int32_t* out, int threads,
                      bool wide = false);

/// Whether the AVX-512 float rows are built and this CPU runs them.
bool float_stream_wide_available();
/// Whether the AVX2 float rows are built and this CPU runs them.
bool float_stream_avx2_available();
/// The float rows (streams, float / int32 max-pools) that go with kernel set ks: the AVX-512
/// ones with a set whose bit packing is AVX-512 (the same ISA requirement), the AVX2 ones with
/// one whose bit packing is AVX2, so BITFLOW_KERNELS=avx2 / scalar / ref also force the
/// portable rows.
bool float_rows_wide_for(const KernelSet& ks);
bool float_rows_avx2_for(const KernelSet& ks);

}  // namespace bitflow::ops

#if defined(BITFLOW_HAVE_X86_KERNELS)
namespace bitflow::avx512 {
// kernels/x86/avx512/float_stream__avx512.cc (built with -mavx512f)
void float_stream_rows__avx512(const ops::FloatStream& fs, const float* thr,
                               const std::uint32_t* pos, const void* const* xs, std::int64_t r0,
                               std::int64_t r1, float* y, std::uint64_t* bits);
void maxpool_i32_rows__avx512(const std::int32_t* x, const ops::PoolGeom& g, std::int32_t* out,
                              std::int64_t r0, std::int64_t r1);
void maxpool_f32_rows__avx512(const float* x, const ops::PoolGeom& g, float* out,
                              std::int64_t r0, std::int64_t r1);
}  // namespace bitflow::avx512
namespace bitflow::avx2 {
// kernels/x86/avx2/float_stream__avx2.cc (built with -mavx2)
void float_stream_rows__avx2(const ops::FloatStream& fs, const float* thr,
                             const std::uint32_t* pos, const void* const* xs, std::int64_t r0,
                             std::int64_t r1, float* y, std::uint64_t* bits);
}  // namespace bitflow::avx2
#endif

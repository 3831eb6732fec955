// Elementwise, average-pooling and layout ops of DAG graphs (residual streams, shortcuts,
// concatenation). Shapes are validated by the caller (python/dag.cc); buffers are
// C-contiguous. Semantics (the reference is bitflow/ir/ops/elementwise.py):
//   add_f32: y = x_0 + x_1 + ... summed left to right in float32, every partial sum rounded
//            (no FMA, no reassociation: bit-identical to the reference).
//   add_i32: exact; saturated to [lo, hi] (the clamp attribute; the full int32 range without it);
//            returns false on int32 overflow of an unclamped sum (the caller raises).
//   requant_i32: y = clamp(floor((x * m[c] + b[c]) / 2^shift), lo, hi), exact (128-bit
//            intermediate); returns false when an unclamped result leaves int32.
//   affine_f32: y = (x * scale[c]) + bias[c], two float32 roundings (like scale_bias).
//   avgpool_f32 / global_avgpool_f32: window sums in double, divided by kh * kw (zero padding
//            counts, PyTorch's count_include_pad=True) resp. H * W, rounded once to float32.
//   concat: along the last axis; concat_bits: channel bits appended after each other.
//   gather_channels: y[r, o] = x[r, index[o]] on elem_size-byte items (a copy; index values are
//            checked by the caller to lie in [0, cols)).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "bitflow/ops.h"

namespace bitflow::ops {

void add_f32(const std::vector<const float*>& xs, std::int64_t size, float* out);
bool add_i32(const std::vector<const std::int32_t*>& xs, std::int64_t size, std::int64_t lo, std::int64_t hi,
             std::int32_t* out, int threads = 1);
/// requant_i32's parameters prepared once (the int64 / 128-bit choice): rows() computes n rows
/// of cols values, returning false when an unclamped result leaves int32.
struct Requant {
  Requant(const std::int64_t* m, const std::int64_t* b, std::int64_t cols, int shift, std::int64_t lo,
          std::int64_t hi);
  bool rows(const std::int32_t* x, std::int64_t n, std::int32_t* y) const;
  std::vector<std::int64_t> m, b;
  int shift;
  bool clamped = false, narrow = true;
  std::int64_t flo = 0, fhi = 0, xlim = 0;
  std::vector<std::int32_t> m32;
};
/// x [rows, cols] int32, m/b [cols] int64 -> [rows, cols] int32.
bool requant_i32(const std::int32_t* x, std::int64_t rows, std::int64_t cols, const std::int64_t* m,
                 const std::int64_t* b, int shift, std::int64_t lo, std::int64_t hi, std::int32_t* out,
                 int threads = 1);
/// The fused integer residual stream (the engine's one-pass form of requant_i32 -> add_i32 ->
/// threshold_bits, issue 10 section 3): per row of o channels, each operand is an int32 value
/// or its requant_i32, the operands are summed by add_i32 (with its clamp [lo, hi]; a single
/// operand is passed through), and the sum is kept and / or thresholded to bits (threshold_bits:
/// bit 1 iff y >= thr for direction +1, y <= thr for -1). The same integer operations as the
/// ops one by one, so the same integers and bits for any thread count. rows() and run()
/// return false when an unclamped requantization or sum leaves int32 (the ops' error). Like
/// FloatStream it can be the epilogue of a prepared binary convolution.
class IntStream {
 public:
  struct Operand {
    bool requant = false;
    std::shared_ptr<const Requant> rq;
  };
  IntStream(const KernelSet& ks, std::int64_t o, std::vector<Operand> operands, std::int64_t lo, std::int64_t hi,
            const std::int32_t* thr, const std::int8_t* dir, bool keep_y);
  std::int64_t channels() const { return o_; }
  std::size_t operand_count() const { return operands_.size(); }
  const Operand& operand(std::size_t k) const { return operands_[k]; }
  bool has_threshold() const { return !tlo_.empty(); }
  bool keeps_y() const { return keep_y_; }
  /// Rows [r0, r1): xs[k] is operand k's [rows, o] base pointer; y [rows, o] (when keeps_y),
  /// bits [rows, words_for(o)] (when has_threshold).
  bool rows(const std::int32_t* const* xs, std::int64_t r0, std::int64_t r1, std::int32_t* y,
            std::uint64_t* bits) const;
  bool run(int threads, const std::int32_t* const* xs, std::int64_t rows, std::int32_t* y,
           std::uint64_t* bits) const;

 private:
  const KernelSet* ks_;
  std::int64_t o_;
  std::vector<Operand> operands_;
  std::int64_t lo_, hi_;
  bool clamped_ = false;
  std::vector<std::int32_t> tlo_, thi_;
  bool keep_y_;
};

void affine_f32(const float* x, std::int64_t rows, std::int64_t cols, const float* scale, const float* bias,
                float* out);
void relu_f32(const float* x, std::int64_t size, float* out);
/// x [n, h, w, c] -> [n, ho, wo, c]; g.c counts channels.
void avgpool_f32(const float* x, const PoolGeom& g, float* out);
/// x [n, hw, c] -> [n, c].
void global_avgpool_f32(const float* x, std::int64_t n, std::int64_t hw, std::int64_t c, float* out);
/// rows x (sum of widths) from per-input [rows, width_i] blocks of elem_size-byte items.
void concat_bytes(const std::vector<const void*>& xs, const std::vector<std::int64_t>& widths,
                  std::int64_t rows, std::int64_t elem_size, void* out);
/// x [rows, cols] -> y [rows, o] with y[r, j] = x[r, index[j]], items of elem_size bytes (1, 4).
void gather_channels(const void* x, std::int64_t rows, std::int64_t cols, const std::int32_t* index,
                     std::int64_t o, std::int64_t elem_size, void* out);
/// Packed bits: per row, input i holds channels[i] bits in words_for(channels[i]) words; the
/// output row holds their concatenation in words_for(sum channels) words (padding bits 0).
void concat_bits(const std::vector<const std::uint64_t*>& xs, const std::vector<std::int64_t>& channels,
                 std::int64_t rows, std::uint64_t* out);

}  // namespace bitflow::ops

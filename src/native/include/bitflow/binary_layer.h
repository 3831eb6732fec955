// A prepared binary layer: the engine's fused "bconv2d [-> maxpool_i32] [-> threshold_bits]"
// (a binary dense layer is the 1x1 convolution of a 1x1 image). Everything that depends only
// on the weights is done once at construction (bit-dense weight rows, +1-tap dots of the
// zero-padding correction, threshold bounds); a call runs the convolution into a per-thread
// int32 scratch buffer, pools it and thresholds it straight to packed bits, so the int32
// activations never leave the native side. The results equal the unfused ops bit for bit:
// the same bconv2d_prepared, maxpool_i32 and the range form of the bits transform
// (ThresholdBitsFn, kernels.h), whose reference is tested against threshold_bits.
//
// With a per-channel threshold the pool runs on bits, after the threshold: for direction +1,
// bit = (acc < T) and max(acc) < T iff every acc < T, an AND of the window's bits; for
// direction -1, bit = (acc > T) and max(acc) > T iff some acc > T, an OR (docs/architecture.md
// §2, "pooling on bits", per channel). Padded window positions are skipped in both,
// as the int32 max-pool skips them, so this equals maxpool_i32 -> threshold_bits exactly.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "bitflow/ops.h"

namespace bitflow::ops {

class BinaryLayer {
 public:
  struct Pool {
    bool on = false;
    std::int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  };

  /// w [O, kh, kw, Cw] (one weight plane); filt gives o, kh, kw, c, stride and padding.
  /// thr / dir (thr_len values each, dir +-1) may be null: the layer then returns int32.
  /// thr_len = O: one threshold per channel; otherwise the output is flattened first
  /// ("flatten -> threshold_bits": thr_len = Ho * Wo * O of the pooled output, HWC order).
  /// index (index_len values in [0, O), may be null): the output channels are the
  /// convolution's rows gathered by index (gather_channels, y[..., j] = acc[..., index[j]]),
  /// done in the epilogue of every finished block of rows: the layer computes each of its O
  /// distinct rows once and has index_len output channels (thr / pool / the stream follow it).
  BinaryLayer(const KernelSet& ks, const std::uint64_t* w, const ConvGeom& filt, int pad_value,
              const std::int32_t* thr, const std::int8_t* dir, std::int64_t thr_len,
              const Pool& pool, const std::int32_t* index = nullptr, std::int64_t index_len = 0);
  /// The fixed-point first layer (conv2d_u8i8) with the same fused pool and threshold:
  /// w int8 [O, kh, kw, C], input uint8 [n, h, w, C].
  BinaryLayer(const KernelSet& ks, const std::int8_t* w, const ConvGeom& filt,
              const std::int32_t* thr, const std::int8_t* dir, std::int64_t thr_len,
              const Pool& pool);
  bool is_int8() const { return int8_; }
  /// How the weight rows are laid out (PreparedBconv, ops.h): "int8" (the fixed-point layer),
  /// "pairs" (paired last words, read in place), "dense" (bit-dense im2col) or "words"
  /// (whole words per tap).
  const char* weight_layout() const {
    return int8_ ? "int8" : prep_.pairs ? "pairs" : prep_.dense ? "dense" : "words";
  }

  /// Geometry of a call on an [n, h, w, Cw] input.
  ConvGeom geom(std::int64_t n, std::int64_t h, std::int64_t w) const;
  /// Output spatial size (after the pool, if any) for an h x w input.
  std::pair<std::int64_t, std::int64_t> out_hw(std::int64_t h, std::int64_t w) const;
  bool has_threshold() const { return !lo_.empty(); }
  /// Threshold over the flattened output (thr_len != O).
  bool flat_threshold() const { return has_threshold() && static_cast<std::int64_t>(lo_.size()) != out_channels(); }
  std::int64_t threshold_len() const { return static_cast<std::int64_t>(lo_.size()); }
  const Pool& pool() const { return pool_; }
  const KernelSet& kernels() const { return *ks_; }
  /// Output channels: the gather index's length, else the convolution's rows.
  std::int64_t out_channels() const { return index_.empty() ? filt_.o : static_cast<std::int64_t>(index_.size()); }

  /// x [n, h, w, Cw] (uint64 bits; uint8 [n, h, w, C] for the int8 layer) -> bits [n, Ho, Wo, words_for(O)] (per-channel threshold), bits
  /// [n, words_for(Ho * Wo * O)] (flat threshold) or int32 [n, Ho, Wo, O] (none); exactly one
  /// of out_bits / out_acc is used.
  void run(int threads, const void* x, std::int64_t n, std::int64_t h, std::int64_t w,
           std::uint64_t* out_bits, std::int32_t* out_acc) const;

  /// The convolution alone (a layer without pool and threshold) into a per-thread int32
  /// scratch [n * Ho * Wo, out_channels()] (gathered, with an index): every finished block of rows [m0, m1) is handed to
  /// epi(acc, m0, m1) (acc: the scratch base) on the thread that computed it, while it is in
  /// that thread's cache (e.g. a FloatStream, bitflow/float_stream.h). Same int32 values as run.
  using AccEpilogue = std::function<void(const std::int32_t* acc, std::int64_t m0, std::int64_t m1)>;
  void run_epilogue(int threads, const void* x, std::int64_t n, std::int64_t h, std::int64_t w,
                    const AccEpilogue& epi) const;

 private:
  const KernelSet* ks_;
  ConvGeom filt_;
  int pad_value_;
  void init_threshold(const std::int32_t* thr, const std::int8_t* dir, std::int64_t thr_len);
  bool int8_ = false;
  PreparedBconv prep_;
  PreparedU8Conv prep8_;
  std::vector<std::int32_t> index_;  // gather_channels of the rows (empty: none)
  std::vector<std::int32_t> lo_, hi_;
  std::vector<std::uint64_t> and_mask_;  // per output word: bit c set iff direction[c] = +1
  bool any_or_ = false;                  // some channel has direction -1
  Pool pool_;
  bool wide_rows_ = false;  // the int32 max-pool in AVX-512 rows (float_rows_wide_for)
};

}  // namespace bitflow::ops

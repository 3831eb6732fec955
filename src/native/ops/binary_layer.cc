// The prepared binary layer (see bitflow/binary_layer.h).
#include "bitflow/binary_layer.h"

#include <climits>
#include <utility>

#include "bitflow/float_stream.h"
#include "parallel.h"

namespace bitflow::ops {

BinaryLayer::BinaryLayer(const KernelSet& ks, const std::uint64_t* w, const ConvGeom& filt,
                         int pad_value, const std::int32_t* thr, const std::int8_t* dir,
                         std::int64_t thr_len, const Pool& pool, const std::int32_t* index,
                         std::int64_t index_len)
    : ks_(&ks), filt_(filt), pad_value_(pad_value), prep_(prepare_bconv(ks, w, 1, filt, /*allow_pairs=*/true)),
      pool_(pool), wide_rows_(float_rows_wide_for(ks)) {
  if (index != nullptr) index_.assign(index, index + index_len);
  init_threshold(thr, dir, thr_len);
}

namespace {
/// Rows [m0, m1) of the gathered accumulators: dst[m, j] = src[m, index[j]] (src has oc
/// columns, dst index.size()).
void gather_rows(const std::int32_t* src, std::int64_t oc, const std::vector<std::int32_t>& index,
                 std::int32_t* dst, std::int64_t m0, std::int64_t m1) {
  const auto o = static_cast<std::int64_t>(index.size());
  const std::int32_t* idx = index.data();
  for (std::int64_t m = m0; m < m1; ++m) {
    const std::int32_t* s = src + m * oc;
    std::int32_t* d = dst + m * o;
    for (std::int64_t j = 0; j < o; ++j) d[j] = s[idx[j]];
  }
}
}  // namespace

BinaryLayer::BinaryLayer(const KernelSet& ks, const std::int8_t* w, const ConvGeom& filt,
                         const std::int32_t* thr, const std::int8_t* dir, std::int64_t thr_len,
                         const Pool& pool)
    : ks_(&ks), filt_(filt), pad_value_(0), int8_(true), prep8_(prepare_u8i8(ks, w, filt)),
      pool_(pool), wide_rows_(float_rows_wide_for(ks)) {
  init_threshold(thr, dir, thr_len);
}

void BinaryLayer::init_threshold(const std::int32_t* thr, const std::int8_t* dir,
                                 std::int64_t thr_len) {
  if (thr == nullptr) return;
  // +1 iff acc >= T (direction +1) or acc <= T (direction -1): the range [lo, hi].
  lo_.resize(static_cast<std::size_t>(thr_len));
  hi_.resize(static_cast<std::size_t>(thr_len));
  for (std::int64_t c = 0; c < thr_len; ++c) {
    lo_[c] = dir[c] > 0 ? thr[c] : INT32_MIN;
    hi_[c] = dir[c] > 0 ? INT32_MAX : thr[c];
  }
  if (thr_len == out_channels()) {
    and_mask_.assign(static_cast<std::size_t>(words_for(thr_len)), 0);
    for (std::int64_t c = 0; c < thr_len; ++c) {
      if (dir[c] > 0)
        and_mask_[c / kWordBits] |= std::uint64_t{1} << (c % kWordBits);
      else
        any_or_ = true;
    }
  }
}

ConvGeom BinaryLayer::geom(std::int64_t n, std::int64_t h, std::int64_t w) const {
  ConvGeom g = filt_;
  g.n = n;
  g.h = h;
  g.w = w;
  return g;
}

std::pair<std::int64_t, std::int64_t> BinaryLayer::out_hw(std::int64_t h, std::int64_t w) const {
  const ConvGeom g = geom(1, h, w);
  std::int64_t ho = g.ho(), wo = g.wo();
  if (pool_.on) {
    ho = conv_out_size(ho, pool_.kh, pool_.sh, pool_.ph);
    wo = conv_out_size(wo, pool_.kw, pool_.sw, pool_.pw);
  }
  return {ho, wo};
}

void BinaryLayer::run(int threads, const void* x, std::int64_t n, std::int64_t h,
                      std::int64_t w, std::uint64_t* out_bits, std::int32_t* out_acc) const {
  const ConvGeom g = geom(n, h, w);
  const std::int64_t ho = g.ho(), wo = g.wo(), o = out_channels(), oc = g.o;
  // Per-thread scratch (one engine may run on several Python threads at once).
  thread_local std::vector<std::int32_t> acc_buf, pool_buf, rows_buf;
  thread_local std::vector<std::uint64_t> bits_buf, or_buf;
  const bool thr = has_threshold();
  const bool gather = !index_.empty();
  std::int32_t* acc = out_acc;
  if (thr || pool_.on) {
    acc_buf.resize(static_cast<std::size_t>(n * ho * wo * o));
    acc = acc_buf.data();
  }
  std::int64_t rows = n * ho * wo;
  // With a gather index the convolution writes its oc distinct rows to rows_buf and the
  // epilogue of every finished block gathers them into acc (o channels), then goes on as
  // without one.
  if (gather) rows_buf.resize(static_cast<std::size_t>(rows * oc));
  std::int32_t* const conv_dst = gather ? rows_buf.data() : acc;
  // A per-channel threshold runs in the convolution's epilogue: each finished block of rows
  // is thresholded to bits by the thread that computed it, while its int32 values are still
  // in that core's cache (to out_bits, or to the full-resolution bits that are pooled next).
  const bool fused = thr && !flat_threshold();
  const std::int64_t ow = words_for(o);
  if (fused && pool_.on) bits_buf.resize(static_cast<std::size_t>(rows * ow));
  std::uint64_t* const thr_dst = pool_.on ? bits_buf.data() : out_bits;  // raw pointers: see below
  std::int32_t* const acc_rows = acc;
  const RowsEpilogue epilogue = [&](std::int64_t m0, std::int64_t m1) {
    if (gather) gather_rows(conv_dst, oc, index_, acc_rows, m0, m1);
    if (fused) ks_->threshold_bits(acc_rows + m0 * o, m1 - m0, o, lo_.data(), hi_.data(), thr_dst + m0 * ow);
  };
  const RowsEpilogue* epi = (fused || gather) ? &epilogue : nullptr;
  if (int8_)
    conv2d_u8i8_prepared(*ks_, threads, static_cast<const std::uint8_t*>(x), prep8_, g, acc, epi);
  else
    bconv2d_prepared(*ks_, threads, static_cast<const std::uint64_t*>(x), 1, prep_, g, pad_value_, conv_dst, epi);
  if (fused && !pool_.on) return;
  const std::int32_t* cur = acc;
  // The pools and the flat threshold split their rows over the threads by work size (a
  // thread writes one contiguous range of rows: identical results for any thread count).
  if (fused) {
    // thresholded at full resolution (the epilogue above); pool the bits (AND / OR per
    // channel, see the header)
    PoolGeom pg;
    pg.n = n; pg.h = ho; pg.w = wo; pg.c = ow;
    pg.kh = pool_.kh; pg.kw = pool_.kw; pg.sh = pool_.sh; pg.sw = pool_.sw;
    pg.ph = pool_.ph; pg.pw = pool_.pw;
    const std::int64_t pwo = pg.wo(), row_words = pwo * ow;
    if (any_or_) or_buf.resize(static_cast<std::size_t>(n * pg.ho() * row_words));
    // raw pointers: a lambda naming a thread_local would use the helper thread's instance
    const std::uint64_t* bits = bits_buf.data();
    std::uint64_t* const orb = any_or_ ? or_buf.data() : nullptr;
    const double ns_per_row = 0.3 * static_cast<double>(pwo * pg.kh * pg.kw * ow) * (any_or_ ? 2 : 1);
    parallel_rows(n * pg.ho(), ns_per_row, threads, [&](std::int64_t r0, std::int64_t r1) {
      maxpool_bits_rows(bits, pg, true, out_bits, r0, r1);
      if (!any_or_) return;
      maxpool_bits_rows(bits, pg, false, orb, r0, r1);
      for (std::int64_t i = r0 * row_words; i < r1 * row_words; ++i) {
        const std::uint64_t m = and_mask_[i % ow];
        out_bits[i] = (out_bits[i] & m) | (orb[i] & ~m);
      }
    });
    return;
  }
  if (pool_.on) {
    PoolGeom pg;
    pg.n = n; pg.h = ho; pg.w = wo; pg.c = o;
    pg.kh = pool_.kh; pg.kw = pool_.kw; pg.sh = pool_.sh; pg.sw = pool_.sw;
    pg.ph = pool_.ph; pg.pw = pool_.pw;
    std::int32_t* dst = out_acc;
    if (thr) {
      pool_buf.resize(static_cast<std::size_t>(n * pg.ho() * pg.wo() * o));
      dst = pool_buf.data();
    }
    maxpool_i32_fast(cur, pg, dst, threads, wide_rows_);
    cur = dst;
    rows = n * pg.ho() * pg.wo();
  }
  if (!thr) return;
  // flat threshold: [n, Ho, Wo, O] int32 is [n, Ho * Wo * O] in memory (HWC order)
  const std::int64_t cols = rows / n * o, cw = words_for(cols);
  parallel_rows(n, 0.25 * static_cast<double>(cols), threads, [&](std::int64_t r0, std::int64_t r1) {
    ks_->threshold_bits(cur + r0 * cols, r1 - r0, cols, lo_.data(), hi_.data(), out_bits + r0 * cw);
  });
}

void BinaryLayer::run_epilogue(int threads, const void* x, std::int64_t n, std::int64_t h,
                               std::int64_t w, const AccEpilogue& epi) const {
  const ConvGeom g = geom(n, h, w);
  const std::int64_t rows = n * g.ho() * g.wo(), oc = g.o;
  const bool gather = !index_.empty();
  thread_local std::vector<std::int32_t> acc_buf, rows_buf;
  acc_buf.resize(static_cast<std::size_t>(rows * out_channels()));
  if (gather) rows_buf.resize(static_cast<std::size_t>(rows * oc));
  std::int32_t* const acc = acc_buf.data();  // raw pointers: the epilogue may run on helpers
  std::int32_t* const conv_dst = gather ? rows_buf.data() : acc;
  const RowsEpilogue epilogue = [&](std::int64_t m0, std::int64_t m1) {
    if (gather) gather_rows(conv_dst, oc, index_, acc, m0, m1);
    epi(acc, m0, m1);
  };
  if (int8_)
    conv2d_u8i8_prepared(*ks_, threads, static_cast<const std::uint8_t*>(x), prep8_, g, acc, &epilogue);
  else
    bconv2d_prepared(*ks_, threads, static_cast<const std::uint64_t*>(x), 1, prep_, g, pad_value_, conv_dst, &epilogue);
}

}  // namespace bitflow::ops

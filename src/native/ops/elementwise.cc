// Elementwise, average-pooling and layout ops (see bitflow/elementwise.h for the semantics).
#include "bitflow/elementwise.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

#include "bitflow/kernels.h"
#include "parallel.h"

namespace bitflow::ops {

void add_f32(const std::vector<const float*>& xs, std::int64_t size, float* out) {
  for (std::int64_t i = 0; i < size; ++i) {
    float s = xs[0][i];
    for (std::size_t k = 1; k < xs.size(); ++k) s = s + xs[k][i];  // left to right, rounded each time
    out[i] = s;
  }
}

namespace {
constexpr std::int64_t kI32Min = std::numeric_limits<std::int32_t>::min();
constexpr std::int64_t kI32Max = std::numeric_limits<std::int32_t>::max();

inline std::int64_t clamp64(std::int64_t v, std::int64_t lo, std::int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// One row of int64 requantization, q = (x m + b) >> shift clamped to [lo, hi]; returns nonzero
// when some q lay outside [lo, hi]. Inlined into each target clone below (M: int32 or int64).
template <class M>
inline __attribute__((always_inline)) std::int64_t requant_cols(const std::int32_t* __restrict xr, std::int64_t cols,
                                                                const M* __restrict m, const std::int64_t* __restrict b,
                                                                int shift, std::int64_t lo, std::int64_t hi,
                                                                std::int32_t* __restrict yr) {
  std::int64_t out_of_range = 0;
  for (std::int64_t c = 0; c < cols; ++c) {
    const std::int64_t q = (std::int64_t{xr[c]} * std::int64_t{m[c]} + b[c]) >> shift;
    out_of_range |= static_cast<std::int64_t>(q < lo) | static_cast<std::int64_t>(q > hi);
    yr[c] = static_cast<std::int32_t>(q < lo ? lo : (q > hi ? hi : q));
  }
  return out_of_range;
}

// Rows of the narrow requantization (|m| < 2^31: a 32 x 32 -> 64-bit product, exact in int64
// with |b| < 2^62), clamped to [lo, hi] (the int32 range when unclamped; the caller then checks
// the range separately). Built for AVX-512 / AVX2 / baseline and picked at load time (GCC
// target_clones): the same integer operations in every clone, so identical results.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
bool requant_rows_narrow(const std::int32_t* __restrict x, std::int64_t rows, std::int64_t cols,
                         const std::int32_t* __restrict m32, const std::int64_t* __restrict b, int shift,
                         std::int64_t lo, std::int64_t hi, std::int32_t* __restrict y) {
  std::int64_t out_of_range = 0;  // any q outside [lo, hi] (only an error when unclamped)
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* __restrict xr = x + r * cols;
    std::int32_t* __restrict yr = y + r * cols;
    out_of_range |= requant_cols(xr, cols, m32, b, shift, lo, hi, yr);
  }
  return out_of_range == 0;
}

// Rows with wide (int64) multipliers. A row whose |x| <= xlim (the caller's bound: then
// |x m| + |b| < 2^63) is computed in int64, vectorized (AVX-512 DQ has the 64 x 64-bit vector
// product vpmullq; the other clones emulate it, with identical results); any other row in 128
// bits. Returns as requant_rows_narrow.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
bool requant_rows_wide(const std::int32_t* __restrict x, std::int64_t rows, std::int64_t cols,
                       const std::int64_t* __restrict m, const std::int64_t* __restrict b, int shift,
                       std::int64_t lo, std::int64_t hi, std::int64_t xlim, std::int32_t* __restrict y) {
  std::int64_t out_of_range = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* __restrict xr = x + r * cols;
    std::int32_t* __restrict yr = y + r * cols;
    std::int64_t amax = 0;  // max |x| of the row (int64: |INT32_MIN| = 2^31)
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::int64_t v = xr[c];
      amax = std::max(amax, v < 0 ? -v : v);
    }
    if (amax <= xlim) {
      out_of_range |= requant_cols(xr, cols, m, b, shift, lo, hi, yr);
    } else {
      for (std::int64_t c = 0; c < cols; ++c) {
        const __int128 q = (static_cast<__int128>(xr[c]) * m[c] + b[c]) >> shift;
        out_of_range |= static_cast<std::int64_t>(q < lo) | static_cast<std::int64_t>(q > hi);
        yr[c] = static_cast<std::int32_t>(q < lo ? lo : (q > hi ? hi : q));
      }
    }
  }
  return out_of_range == 0;
}

// Two-input int32 sum saturated to [lo, hi] (within int32); returns whether every sum was in range.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
bool add2_i32(const std::int32_t* __restrict a, const std::int32_t* __restrict b, std::int64_t n, std::int64_t lo,
              std::int64_t hi, std::int32_t* __restrict y) {
  std::int64_t out_of_range = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t v = std::int64_t{a[i]} + std::int64_t{b[i]};
    out_of_range |= static_cast<std::int64_t>(v < lo) | static_cast<std::int64_t>(v > hi);
    y[i] = static_cast<std::int32_t>(v < lo ? lo : (v > hi ? hi : v));
  }
  return out_of_range == 0;
}
}  // namespace

bool add_i32(const std::vector<const std::int32_t*>& xs, std::int64_t size, std::int64_t lo, std::int64_t hi,
             std::int32_t* out, int threads) {
  const bool clamped = lo > kI32Min || hi < kI32Max;
  std::atomic<bool> ok{true};
  // chunks of 4096 elements as rows: each element is summed by one thread in the same order
  constexpr std::int64_t kChunk = 4096;
  const std::int64_t chunks = (size + kChunk - 1) / kChunk;
  parallel_rows(chunks, 0.3 * kChunk * static_cast<double>(xs.size()), threads, [&](std::int64_t r0, std::int64_t r1) {
    const std::int64_t i0 = r0 * kChunk, i1 = std::min(size, r1 * kChunk);
    bool good = true;
    if (xs.size() == 2) {  // the residual add: a vectorized loop
      const bool in_range = add2_i32(xs[0] + i0, xs[1] + i0, i1 - i0, clamped ? lo : kI32Min,
                                     clamped ? hi : kI32Max, out + i0);
      good &= clamped || in_range;
    } else {
      for (std::int64_t i = i0; i < i1; ++i) {
        std::int64_t v = 0;
        for (const std::int32_t* x : xs) v += x[i];
        if (clamped) v = clamp64(v, lo, hi);
        else good &= (v >= kI32Min) & (v <= kI32Max);
        out[i] = static_cast<std::int32_t>(v);
      }
    }
    if (!good) ok = false;
  });
  return ok;
}

Requant::Requant(const std::int64_t* m_, const std::int64_t* b_, std::int64_t cols, int shift_, std::int64_t lo,
                 std::int64_t hi)
    : m(m_, m_ + cols), b(b_, b_ + cols), shift(shift_) {
  clamped = lo > kI32Min || hi < kI32Max;
  flo = clamped ? lo : kI32Min;
  fhi = clamped ? hi : kI32Max;
  // int64 is exact when |x m| < 2^31 2^31 = 2^62 and |b| < 2^62 (sum < 2^63)
  narrow = true;
  for (std::int64_t c = 0; c < cols; ++c)
    narrow &= (m[c] > -(std::int64_t{1} << 31)) & (m[c] < (std::int64_t{1} << 31)) &
              (b[c] > -(std::int64_t{1} << 62)) & (b[c] < (std::int64_t{1} << 62));
  if (narrow) {
    m32.resize(static_cast<std::size_t>(cols));
    for (std::size_t c = 0; c < m32.size(); ++c) m32[c] = static_cast<std::int32_t>(m[c]);
    return;
  }
  // Wide multipliers: a row whose |x| <= xlim is still exact in int64, |x m| + |b| <= xlim max|m|
  // + max|b| < 2^63 (accumulators are small: a binary convolution's |x| <= its fan-in, while a
  // BatchNorm folded at 2^24 gives |m| ~ 2^32); other rows take 128 bits.
  __int128 mmax = 0, bmax = 0;
  for (std::int64_t c = 0; c < cols; ++c) {
    const __int128 mc = m[c], bc = b[c];
    mmax = std::max(mmax, mc < 0 ? -mc : mc);
    bmax = std::max(bmax, bc < 0 ? -bc : bc);
  }
  const __int128 room = static_cast<__int128>(std::numeric_limits<std::int64_t>::max()) - bmax;
  xlim = -1;  // no row fits int64
  if (room > 0)
    xlim = mmax == 0 ? kI32Max + 1 : static_cast<std::int64_t>(std::min<__int128>(room / mmax, kI32Max + 1));
}

bool Requant::rows(const std::int32_t* x, std::int64_t n, std::int32_t* y) const {
  const auto cols = static_cast<std::int64_t>(m.size());
  const bool in_range = narrow ? requant_rows_narrow(x, n, cols, m32.data(), b.data(), shift, flo, fhi, y)
                               : requant_rows_wide(x, n, cols, m.data(), b.data(), shift, flo, fhi, xlim, y);
  return clamped || in_range;
}

bool requant_i32(const std::int32_t* x, std::int64_t rows, std::int64_t cols, const std::int64_t* m,
                 const std::int64_t* b, int shift, std::int64_t lo, std::int64_t hi, std::int32_t* out,
                 int threads) {
  const Requant rq(m, b, cols, shift, lo, hi);
  std::atomic<bool> ok{true};
  parallel_rows(rows, (rq.narrow ? 0.5 : 1.0) * static_cast<double>(cols), threads, [&](std::int64_t r0, std::int64_t r1) {
    if (!rq.rows(x + r0 * cols, r1 - r0, out + r0 * cols)) ok = false;
  });
  return ok;
}

// ------------------------------------------------------------------------ the integer stream
IntStream::IntStream(const KernelSet& ks, std::int64_t o, std::vector<Operand> operands, std::int64_t lo,
                     std::int64_t hi, const std::int32_t* thr, const std::int8_t* dir, bool keep_y)
    : ks_(&ks), o_(o), operands_(std::move(operands)), lo_(lo), hi_(hi), keep_y_(keep_y) {
  clamped_ = lo > kI32Min || hi < kI32Max;
  if (thr != nullptr) {
    // +1 iff y >= T (direction +1) or y <= T (direction -1): the range [tlo, thi]
    tlo_.resize(static_cast<std::size_t>(o));
    thi_.resize(static_cast<std::size_t>(o));
    for (std::int64_t c = 0; c < o; ++c) {
      tlo_[c] = dir[c] > 0 ? thr[c] : INT32_MIN;
      thi_[c] = dir[c] > 0 ? INT32_MAX : thr[c];
    }
  }
}

bool IntStream::rows(const std::int32_t* const* xs, std::int64_t r0, std::int64_t r1, std::int32_t* y,
                     std::uint64_t* bits) const {
  // Blocks of up to kBlock rows: each op of the chain runs once over the block (no per-row
  // dispatch), on values still in the L1 / L2 cache.
  constexpr std::int64_t kBlock = 32;
  const std::int64_t o = o_, nw = words_for(o);
  const std::size_t n_ops = operands_.size();
  thread_local std::vector<std::int32_t> buf;
  buf.resize(static_cast<std::size_t>((n_ops + 1) * kBlock * o));
  std::int32_t* const scratch = buf.data();  // n_ops operand blocks, then one sum block
  std::vector<const std::int32_t*> v(n_ops);
  bool good = true;
  for (std::int64_t rb = r0; rb < r1; rb += kBlock) {
    const std::int64_t n = std::min(kBlock, r1 - rb), size = n * o;
    std::int32_t* const out = keep_y_ ? y + rb * o : scratch + n_ops * kBlock * o;
    for (std::size_t k = 0; k < n_ops; ++k) {
      const Operand& op = operands_[k];
      if (!op.requant) {
        v[k] = xs[k] + rb * o;
        continue;
      }
      std::int32_t* dst = n_ops == 1 ? out : scratch + k * kBlock * o;
      good &= op.rq->rows(xs[k] + rb * o, n, dst);
      v[k] = dst;
    }
    if (n_ops == 1) {
      if (v[0] != out) std::memcpy(out, v[0], sizeof(std::int32_t) * static_cast<std::size_t>(size));
    } else if (n_ops == 2) {
      // add_i32's two-input loop (saturated; its range flag only matters unclamped)
      const bool in_range = add2_i32(v[0], v[1], size, clamped_ ? lo_ : kI32Min, clamped_ ? hi_ : kI32Max, out);
      good &= clamped_ || in_range;
    } else {
      for (std::int64_t i = 0; i < size; ++i) {  // add_i32's int64 sums, in operand order
        std::int64_t s = 0;
        for (const std::int32_t* x : v) s += x[i];
        if (clamped_) s = clamp64(s, lo_, hi_);
        else good &= (s >= kI32Min) & (s <= kI32Max);
        out[i] = static_cast<std::int32_t>(s);
      }
    }
    if (!tlo_.empty()) ks_->threshold_bits(out, n, o, tlo_.data(), thi_.data(), bits + rb * nw);
  }
  return good;
}

bool IntStream::run(int threads, const std::int32_t* const* xs, std::int64_t rows, std::int32_t* y,
                    std::uint64_t* bits) const {
  std::atomic<bool> ok{true};
  parallel_rows(rows, 1.0 * static_cast<double>(o_ * static_cast<std::int64_t>(operands_.size())), threads,
                [&](std::int64_t r0, std::int64_t r1) {
                  if (!this->rows(xs, r0, r1, y, bits)) ok = false;
                });
  return ok;
}

void affine_f32(const float* x, std::int64_t rows, std::int64_t cols, const float* scale, const float* bias,
                float* out) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = out + r * cols;
    for (std::int64_t c = 0; c < cols; ++c) {
      const float p = xr[c] * scale[c];  // rounded (the library is built with -ffp-contract=off)
      yr[c] = p + bias[c];
    }
  }
}

void relu_f32(const float* x, std::int64_t size, float* out) {
  // max(x, 0) as numpy.maximum: NaN propagates
  for (std::int64_t i = 0; i < size; ++i) out[i] = (x[i] != x[i]) ? x[i] : (x[i] > 0.0f ? x[i] : 0.0f);
}

void avgpool_f32(const float* x, const PoolGeom& g, float* out) {
  const std::int64_t ho = g.ho(), wo = g.wo();
  const double inv = static_cast<double>(g.kh * g.kw);
  std::vector<double> acc(static_cast<std::size_t>(g.c));
  for (std::int64_t n = 0; n < g.n; ++n) {
    for (std::int64_t oy = 0; oy < ho; ++oy) {
      for (std::int64_t ox = 0; ox < wo; ++ox) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t i = 0; i < g.kh; ++i) {
          const std::int64_t y = oy * g.sh - g.ph + i;
          if (y < 0 || y >= g.h) continue;
          for (std::int64_t j = 0; j < g.kw; ++j) {
            const std::int64_t xx = ox * g.sw - g.pw + j;
            if (xx < 0 || xx >= g.w) continue;
            const float* px = x + ((n * g.h + y) * g.w + xx) * g.c;
            for (std::int64_t c = 0; c < g.c; ++c) acc[static_cast<std::size_t>(c)] += px[c];
          }
        }
        float* po = out + ((n * ho + oy) * wo + ox) * g.c;
        for (std::int64_t c = 0; c < g.c; ++c) po[c] = static_cast<float>(acc[static_cast<std::size_t>(c)] / inv);
      }
    }
  }
}

void global_avgpool_f32(const float* x, std::int64_t n, std::int64_t hw, std::int64_t c, float* out) {
  std::vector<double> acc(static_cast<std::size_t>(c));
  for (std::int64_t b = 0; b < n; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0);
    const float* xb = x + b * hw * c;
    for (std::int64_t p = 0; p < hw; ++p)
      for (std::int64_t k = 0; k < c; ++k) acc[static_cast<std::size_t>(k)] += xb[p * c + k];
    for (std::int64_t k = 0; k < c; ++k)
      out[b * c + k] = static_cast<float>(acc[static_cast<std::size_t>(k)] / static_cast<double>(hw));
  }
}

void concat_bytes(const std::vector<const void*>& xs, const std::vector<std::int64_t>& widths, std::int64_t rows,
                  std::int64_t elem_size, void* out) {
  std::int64_t total = 0;
  for (std::int64_t w : widths) total += w;
  auto* o = static_cast<unsigned char*>(out);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int64_t off = 0;
    for (std::size_t k = 0; k < xs.size(); ++k) {
      const auto* src = static_cast<const unsigned char*>(xs[k]) + r * widths[k] * elem_size;
      std::memcpy(o + (r * total + off) * elem_size, src, static_cast<std::size_t>(widths[k] * elem_size));
      off += widths[k];
    }
  }
}

namespace {
template <class T>
void gather_rows(const T* x, std::int64_t rows, std::int64_t cols, const std::int32_t* index, std::int64_t o,
                 T* out) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = out + r * o;
    for (std::int64_t j = 0; j < o; ++j) yr[j] = xr[index[j]];
  }
}
}  // namespace

void gather_channels(const void* x, std::int64_t rows, std::int64_t cols, const std::int32_t* index,
                     std::int64_t o, std::int64_t elem_size, void* out) {
  if (elem_size == 4) {
    gather_rows(static_cast<const std::uint32_t*>(x), rows, cols, index, o, static_cast<std::uint32_t*>(out));
  } else {
    gather_rows(static_cast<const std::uint8_t*>(x), rows, cols, index, o, static_cast<std::uint8_t*>(out));
  }
}

void concat_bits(const std::vector<const std::uint64_t*>& xs, const std::vector<std::int64_t>& channels,
                 std::int64_t rows, std::uint64_t* out) {
  std::int64_t total = 0;
  for (std::int64_t c : channels) total += c;
  const std::int64_t ow = words_for(total);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::uint64_t* o = out + r * ow;
    for (std::int64_t i = 0; i < ow; ++i) o[i] = 0;
    std::int64_t pos = 0;  // next output bit
    for (std::size_t k = 0; k < xs.size(); ++k) {
      const std::int64_t c = channels[k], iw = words_for(c);
      const std::uint64_t* src = xs[k] + r * iw;
      for (std::int64_t i = 0; i < iw; ++i) {
        const std::int64_t nbits = (i == iw - 1) ? c - 64 * i : 64;
        std::uint64_t v = src[i];
        if (nbits < 64) v &= (std::uint64_t{1} << nbits) - 1;  // drop padding bits
        const std::int64_t wi = pos / 64, sh = pos % 64;
        o[wi] |= v << sh;
        if (sh != 0 && sh + nbits > 64) o[wi + 1] |= v >> (64 - sh);
        pos += nbits;
      }
    }
  }
}

}  // namespace bitflow::ops

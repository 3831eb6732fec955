// The fused float stream and the vectorized float max-pool (see bitflow/float_stream.h).
//
// The float arithmetic is written as plain per-channel loops over L1-resident rows (the
// compiler vectorizes them; the library is built with -ffp-contract=off and without
// -ffast-math, so a vector multiply / add rounds exactly like the scalar one). The
// comparisons that pack bits and the max-pool's NaN-aware select use SSE2 (part of x86-64)
// where available, with a plain loop elsewhere.
#include "bitflow/float_stream.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

#include "bitflow/common.h"
#include "bitflow/cpu.h"
#include "parallel.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bitflow::ops {

bool float_stream_wide_available() {
#if defined(BITFLOW_HAVE_X86_KERNELS)
  return cpu_features().avx512f;
#else
  return false;
#endif
}

bool float_stream_avx2_available() {
#if defined(BITFLOW_HAVE_X86_KERNELS)
  return cpu_features().avx2;
#else
  return false;
#endif
}

bool float_rows_wide_for(const KernelSet& ks) {
  return std::string(ks.bitpack_name).find("avx512") != std::string::npos && float_stream_wide_available();
}

bool float_rows_avx2_for(const KernelSet& ks) {
  return std::string(ks.bitpack_name).find("avx2") != std::string::npos && float_stream_avx2_available();
}

FloatStream::FloatStream(std::int64_t o, std::vector<Operand> operands, const float* thr,
                         const std::int8_t* dir, bool keep_y, bool wide, bool avx2)
    : o_(o), operands_(std::move(operands)), keep_y_(keep_y), wide_(wide && float_stream_wide_available()),
      avx2_(!wide_ && avx2 && float_stream_avx2_available()) {
  if (operands_.empty()) throw std::invalid_argument("FloatStream: no operands");
  for (const Operand& op : operands_)
    for (const Stage& s : op.stages)
      if (static_cast<std::int64_t>(s.scale.size()) != o || static_cast<std::int64_t>(s.bias.size()) != o)
        throw std::invalid_argument("FloatStream: stage parameters must have o values");
  if (thr != nullptr) {
    thr_.assign(thr, thr + o);
    pos_.resize(static_cast<std::size_t>(o));
    for (std::int64_t c = 0; c < o; ++c) pos_[c] = dir[c] > 0 ? 0xFFFFFFFFu : 0u;
  }
  if (!keep_y_ && thr_.empty()) throw std::invalid_argument("FloatStream: nothing to output");
}

namespace {

// One row of threshold_f32_bits: bit c = (y < thr) for direction +1, (y > thr) for -1.
inline void threshold_row(const float* y, std::int64_t o, const float* thr,
                          const std::uint32_t* pos, std::uint64_t* out) {
  std::int64_t c0 = 0;
#if defined(__SSE2__)
  const std::int64_t full = o / kWordBits;
  for (std::int64_t wd = 0; wd < full; ++wd) {
    std::uint64_t word = 0;
    const std::int64_t base = wd * kWordBits;
    for (int j = 0; j < 16; ++j) {
      const std::int64_t c = base + 4 * j;
      const __m128 v = _mm_loadu_ps(y + c), t = _mm_loadu_ps(thr + c);
      const __m128 pm = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pos + c)));
      const __m128 neg = _mm_or_ps(_mm_and_ps(pm, _mm_cmplt_ps(v, t)), _mm_andnot_ps(pm, _mm_cmpgt_ps(v, t)));
      word |= static_cast<std::uint64_t>(_mm_movemask_ps(neg)) << (4 * j);
    }
    out[wd] = word;
  }
  c0 = full * kWordBits;
#endif
  for (std::int64_t wd = c0 / kWordBits; wd < words_for(o); ++wd) {
    std::uint64_t word = 0;
    const std::int64_t cb = wd * kWordBits, ce = std::min<std::int64_t>(o, cb + kWordBits);
    for (std::int64_t c = cb; c < ce; ++c) {
      const bool neg = pos[c] != 0 ? y[c] < thr[c] : y[c] > thr[c];
      word |= static_cast<std::uint64_t>(neg) << (c - cb);
    }
    out[wd] = word;
  }
}

// v = float(x) (int32) or x; then every stage v = (v * s) + b.
inline void load_operand(const FloatStream::Operand& op, const void* x, std::int64_t r,
                         std::int64_t o, float* v) {
  if (op.i32) {
    const std::int32_t* __restrict xi = static_cast<const std::int32_t*>(x) + r * o;
    for (std::int64_t c = 0; c < o; ++c) v[c] = static_cast<float>(xi[c]);
  } else {
    const float* xf = static_cast<const float*>(x) + r * o;
    if (xf != v) std::memcpy(v, xf, sizeof(float) * static_cast<std::size_t>(o));  // else in place
  }
  for (const FloatStream::Stage& s : op.stages) {
    const float* __restrict sc = s.scale.data();
    const float* __restrict bi = s.bias.data();
    for (std::int64_t c = 0; c < o; ++c) {
      const float p = v[c] * sc[c];  // rounded
      v[c] = p + bi[c];
    }
  }
}

}  // namespace

void threshold_f32_bits_rows(const float* y, std::int64_t rows, std::int64_t o, const float* thr,
                             const std::uint32_t* pos, std::uint64_t* out) {
  const std::int64_t nw = words_for(o);
  for (std::int64_t r = 0; r < rows; ++r) threshold_row(y + r * o, o, thr, pos, out + r * nw);
}

void FloatStream::rows(const void* const* xs, std::int64_t r0, std::int64_t r1, float* y,
                       std::uint64_t* bits) const {
#if defined(BITFLOW_HAVE_X86_KERNELS)
  if (wide_) {
    avx512::float_stream_rows__avx512(*this, thr_.empty() ? nullptr : thr_.data(), pos_.data(), xs, r0, r1, y, bits);
    return;
  }
  if (avx2_) {
    avx2::float_stream_rows__avx2(*this, thr_.empty() ? nullptr : thr_.data(), pos_.data(), xs, r0, r1, y, bits);
    return;
  }
#endif
  const std::int64_t o = o_, nw = words_for(o);
  thread_local std::vector<float> acc_buf, tmp_buf;
  if (acc_buf.size() < static_cast<std::size_t>(o)) acc_buf.resize(static_cast<std::size_t>(o));
  if (tmp_buf.size() < static_cast<std::size_t>(o)) tmp_buf.resize(static_cast<std::size_t>(o));
  float* const tmp_row = tmp_buf.data();
  float* const acc_row = acc_buf.data();
  for (std::int64_t r = r0; r < r1; ++r) {
    float* __restrict acc = keep_y_ ? y + r * o : acc_row;
    const float* sum = acc;
    if (operands_.size() == 1 && !operands_[0].i32 && operands_[0].stages.empty() && !keep_y_) {
      sum = static_cast<const float*>(xs[0]) + r * o;  // a plain threshold: no copy
    } else {
      load_operand(operands_[0], xs[0], r, o, acc);
      for (std::size_t k = 1; k < operands_.size(); ++k) {
        const Operand& op = operands_[k];
        const float* __restrict v;
        if (!op.i32 && op.stages.empty()) {
          v = static_cast<const float*>(xs[k]) + r * o;
        } else {
          load_operand(op, xs[k], r, o, tmp_row);
          v = tmp_row;
        }
        for (std::int64_t c = 0; c < o; ++c) acc[c] = acc[c] + v[c];  // left to right, rounded
      }
    }
    if (!thr_.empty()) threshold_row(sum, o, thr_.data(), pos_.data(), bits + r * nw);
  }
}

double FloatStream::ns_per_row() const {
  double per = 0.0;
  for (const Operand& op : operands_) per += 0.15 + 0.1 * static_cast<double>(op.stages.size());
  if (!thr_.empty()) per += 0.1;
  return per * static_cast<double>(o_) * (wide_ ? 0.3 : (avx2_ ? 0.5 : 1.0));
}

void FloatStream::run(int threads, const void* const* xs, std::int64_t rows, float* y,
                      std::uint64_t* bits) const {
  parallel_rows(rows, ns_per_row(), threads,
                [&](std::int64_t r0, std::int64_t r1) { this->rows(xs, r0, r1, y, bits); });
}

// ---------------------------------------------------------------------------------- max-pool
namespace {

// dst = combine(dst, src) over c channels: take src iff (src > dst or src is NaN) and dst is
// not NaN (the definition's lambda in pool_ref.cc).
inline void max_combine(float* dst, const float* src, std::int64_t c) {
  std::int64_t i = 0;
#if defined(__SSE2__)
  for (; i + 4 <= c; i += 4) {
    const __m128 a = _mm_loadu_ps(dst + i), b = _mm_loadu_ps(src + i);
    __m128 take = _mm_or_ps(_mm_cmpgt_ps(b, a), _mm_cmpunord_ps(b, b));
    take = _mm_andnot_ps(_mm_cmpunord_ps(a, a), take);
    _mm_storeu_ps(dst + i, _mm_or_ps(_mm_and_ps(take, b), _mm_andnot_ps(take, a)));
  }
#endif
  for (; i < c; ++i) {
    const float a = dst[i], b = src[i];
    if (a != a) continue;
    if (b > a || b != b) dst[i] = b;
  }
}

void maxpool_f32_rows(const float* x, const PoolGeom& g, float* out, std::int64_t r0,
                      std::int64_t r1) {
  const std::int64_t ho = g.ho(), wo = g.wo();
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::int64_t n = r / ho, oh = r % ho;
    for (std::int64_t ow = 0; ow < wo; ++ow) {
      float* dst = out + ((n * ho + oh) * wo + ow) * g.c;
      bool first = true;
      for (std::int64_t i = 0; i < g.kh; ++i) {
        const std::int64_t ih = oh * g.sh - g.ph + i;
        if (ih < 0 || ih >= g.h) continue;
        for (std::int64_t j = 0; j < g.kw; ++j) {
          const std::int64_t iw = ow * g.sw - g.pw + j;
          if (iw < 0 || iw >= g.w) continue;
          const float* src = x + ((n * g.h + ih) * g.w + iw) * g.c;
          if (first) {
            std::memcpy(dst, src, sizeof(float) * static_cast<std::size_t>(g.c));
            first = false;
          } else {
            max_combine(dst, src, g.c);
          }
        }
      }
    }
  }
}

}  // namespace

void maxpool_f32_fast(const float* x, const PoolGeom& g, float* out, int threads, bool wide) {
  wide = wide && float_stream_wide_available();
  const double ns_per_row = (wide ? 0.03 : 0.1) * static_cast<double>(g.wo() * g.kh * g.kw * g.c);
  parallel_rows(g.n * g.ho(), ns_per_row, threads, [&](std::int64_t r0, std::int64_t r1) {
#if defined(BITFLOW_HAVE_X86_KERNELS)
    if (wide) {
      avx512::maxpool_f32_rows__avx512(x, g, out, r0, r1);
      return;
    }
#endif
    maxpool_f32_rows(x, g, out, r0, r1);
  });
}

void maxpool_i32_fast(const std::int32_t* x, const PoolGeom& g, std::int32_t* out, int threads,
                      bool wide) {
#if defined(BITFLOW_HAVE_X86_KERNELS)
  if (wide && float_stream_wide_available()) {
    const double ns_per_row = 0.03 * static_cast<double>(g.wo() * g.kh * g.kw * g.c);
    parallel_rows(g.n * g.ho(), ns_per_row, threads, [&](std::int64_t r0, std::int64_t r1) {
      avx512::maxpool_i32_rows__avx512(x, g, out, r0, r1);
    });
    return;
  }
#endif
  (void)wide;
  maxpool_i32(x, g, out, threads);
}

}  // namespace bitflow::ops

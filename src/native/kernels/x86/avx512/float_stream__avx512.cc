// float_stream__avx512 and maxpool_f32__avx512: the fused float stream (bitflow/float_stream.h)
// and the float max-pool with 16 channels per zmm register. Every value of a row chunk stays in
// registers from the operand loads to the stored sum and its threshold bits (one pass over
// memory). The same float32 operations as the definitions, in the same order: int32 -> float32
// conversion (round to nearest), per stage a multiply then an add (separately rounded: built
// with -ffp-contract=off, intrinsics never fuse), left-to-right sums, ordered quiet compares
// (NaN is on the +1 side) - so the results equal the portable code bit for bit. Built with
// -mavx512f (and the AVX-512 set's other flags).
#include <immintrin.h>

#include <algorithm>

#include "bitflow/common.h"
#include "bitflow/float_stream.h"

namespace bitflow::avx512 {

using ops::FloatStream;

namespace {

inline __m512 load_operand(const FloatStream::Operand& op, const void* x, std::int64_t off,
                           std::int64_t c, __mmask16 m) {
  __m512 v;
  if (op.i32) {
    v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, static_cast<const std::int32_t*>(x) + off));
  } else {
    v = _mm512_maskz_loadu_ps(m, static_cast<const float*>(x) + off);
  }
  for (const FloatStream::Stage& s : op.stages) {
    v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, s.scale.data() + c));
    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, s.bias.data() + c));
  }
  return v;
}

}  // namespace

namespace {

// The operands of one call with their stage parameters hoisted out of the row loop (the
// std::vector fields of FloatStream are read once per call, not once per 16 channels).
constexpr int kMaxStages = 2;
struct OpView {
  const void* x;
  bool i32;
  int ns;
  const float* sc[kMaxStages];
  const float* bi[kMaxStages];
};

template <bool I32, int NS>
inline __attribute__((always_inline)) __m512 load_fixed(const OpView& op, std::int64_t off,
                                                        std::int64_t c, __mmask16 m) {
  __m512 v = I32 ? _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, static_cast<const std::int32_t*>(op.x) + off))
                 : _mm512_maskz_loadu_ps(m, static_cast<const float*>(op.x) + off);
#pragma GCC unroll 4
  for (int s = 0; s < NS; ++s) {
    v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, op.sc[s] + c));
    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, op.bi[s] + c));
  }
  return v;
}

// Rows of the common residual shapes with every operand's type and stage count fixed at
// compile time (NOPS = 1 or 2): the channel loop then has no inner loops or branches, and the
// threshold bits of 16 channels are written as one 16-bit field of their word.
template <int NOPS, bool I0, int S0, bool I1, int S1>
void rows_fixed(const OpView* ops, std::int64_t o, const float* thr, const std::uint32_t* pos,
                bool keep, std::int64_t r0, std::int64_t r1, float* y, std::uint64_t* bits) {
  const std::int64_t nw = words_for(o);
  for (std::int64_t r = r0; r < r1; ++r) {
    std::uint16_t* brow = bits != nullptr ? reinterpret_cast<std::uint16_t*>(bits + r * nw) : nullptr;
    if (brow != nullptr && o % kWordBits != 0) bits[r * nw + nw - 1] = 0;  // padding bits 0
    for (std::int64_t c = 0; c < o; c += 16) {
      const __mmask16 m = o - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                       : static_cast<__mmask16>((1u << (o - c)) - 1u);
      const std::int64_t off = r * o + c;
      __m512 acc = load_fixed<I0, S0>(ops[0], off, c, m);
      if constexpr (NOPS == 2) acc = _mm512_add_ps(acc, load_fixed<I1, S1>(ops[1], off, c, m));
      if (keep) _mm512_mask_storeu_ps(y + off, m, acc);
      if (brow != nullptr) {
        const __m512 t = _mm512_maskz_loadu_ps(m, thr + c);
        const __m512i p = _mm512_maskz_loadu_epi32(m, pos + c);
        const __mmask16 up = _mm512_test_epi32_mask(p, p);
        const __mmask16 lt = _mm512_mask_cmp_ps_mask(up, acc, t, _CMP_LT_OQ);
        const __mmask16 gt = _mm512_mask_cmp_ps_mask(static_cast<__mmask16>(~up & m), acc, t, _CMP_GT_OQ);
        brow[c / 16] = static_cast<std::uint16_t>(lt | gt);  // little endian: bits c..c+15
      }
    }
  }
}

using RowsFixedFn = void (*)(const OpView*, std::int64_t, const float*, const std::uint32_t*, bool,
                             std::int64_t, std::int64_t, float*, std::uint64_t*);

// The specialization for a stream's operand kinds, or nullptr (then the generic loop runs).
RowsFixedFn pick_fixed(int nops, const OpView* v) {
  const auto key = [](const OpView& a) { return (a.i32 ? 4 : 0) + a.ns; };  // ns <= 3
  if (nops == 1) {
    switch (key(v[0])) {
      case 0: return &rows_fixed<1, false, 0, false, 0>;
      case 1: return &rows_fixed<1, false, 1, false, 0>;
      case 2: return &rows_fixed<1, false, 2, false, 0>;
      case 4: return &rows_fixed<1, true, 0, false, 0>;
      case 5: return &rows_fixed<1, true, 1, false, 0>;
      case 6: return &rows_fixed<1, true, 2, false, 0>;
      default: return nullptr;
    }
  }
  if (nops == 2) {
    switch (key(v[0]) * 8 + key(v[1])) {
#define BF_CASE(a, b) case (a) * 8 + (b): return &rows_fixed<2, ((a) & 4) != 0, (a) & 3, ((b) & 4) != 0, (b) & 3>;
#define BF_ROW(a) BF_CASE(a, 0) BF_CASE(a, 1) BF_CASE(a, 2) BF_CASE(a, 4) BF_CASE(a, 5) BF_CASE(a, 6)
      BF_ROW(0) BF_ROW(1) BF_ROW(2) BF_ROW(4) BF_ROW(5) BF_ROW(6)
#undef BF_ROW
#undef BF_CASE
      default: return nullptr;
    }
  }
  return nullptr;
}

}  // namespace

void float_stream_rows__avx512(const FloatStream& fs, const float* thr, const std::uint32_t* pos,
                               const void* const* xs, std::int64_t r0, std::int64_t r1, float* y,
                               std::uint64_t* bits) {
  const std::int64_t o = fs.channels(), nw = words_for(o);
  const std::size_t n_ops = fs.operand_count();
  const bool keep = fs.keeps_y(), th = thr != nullptr;
  if (n_ops <= 2) {
    OpView v[2] = {};
    bool fits = true;
    for (std::size_t k = 0; k < n_ops; ++k) {
      const FloatStream::Operand& op = fs.operand(k);
      v[k].x = xs[k];
      v[k].i32 = op.i32;
      v[k].ns = static_cast<int>(op.stages.size());
      if (v[k].ns > 2) {
        fits = false;
        break;
      }
      for (int s = 0; s < v[k].ns; ++s) {
        v[k].sc[s] = op.stages[static_cast<std::size_t>(s)].scale.data();
        v[k].bi[s] = op.stages[static_cast<std::size_t>(s)].bias.data();
      }
    }
    const RowsFixedFn fn = fits ? pick_fixed(static_cast<int>(n_ops), v) : nullptr;
    if (fn != nullptr) {
      fn(v, o, thr, pos, keep, r0, r1, y, th ? bits : nullptr);
      return;
    }
  }
  for (std::int64_t r = r0; r < r1; ++r) {
    std::uint64_t word = 0;
    for (std::int64_t c = 0; c < o; c += 16) {
      const __mmask16 m = o - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                       : static_cast<__mmask16>((1u << (o - c)) - 1u);
      const std::int64_t off = r * o + c;
      __m512 acc = load_operand(fs.operand(0), xs[0], off, c, m);
      for (std::size_t k = 1; k < n_ops; ++k) acc = _mm512_add_ps(acc, load_operand(fs.operand(k), xs[k], off, c, m));
      if (keep) _mm512_mask_storeu_ps(y + off, m, acc);
      if (th) {
        const __m512 t = _mm512_maskz_loadu_ps(m, thr + c);
        const __m512i p = _mm512_maskz_loadu_epi32(m, pos + c);
        const __mmask16 up = _mm512_test_epi32_mask(p, p);
        const __mmask16 lt = _mm512_cmp_ps_mask(acc, t, _CMP_LT_OQ);
        const __mmask16 gt = _mm512_cmp_ps_mask(acc, t, _CMP_GT_OQ);
        const __mmask16 neg = static_cast<__mmask16>(((up & lt) | (~up & gt)) & m);
        word |= static_cast<std::uint64_t>(neg) << (c % kWordBits);
        if ((c + 16) % kWordBits == 0 || c + 16 >= o) {
          bits[r * nw + c / kWordBits] = word;
          word = 0;
        }
      }
    }
  }
}

namespace {

// The window of pooled output (row r = (n, oh), column ow), clipped to the input: valid taps
// [i0, i1) x [j0, j1) (padded ones skipped, as PyTorch does), the element offset of tap (0, 0)
// in the input (it may lie in the padding; only valid taps are read) and of the output pixel.
struct PoolWindow {
  bool valid;
  std::int64_t i0, i1, j0, j1, in, out;
};

inline PoolWindow pool_window(const ops::PoolGeom& g, std::int64_t r, std::int64_t ow) {
  const std::int64_t ho = g.ho(), n = r / ho, oh = r % ho;
  PoolWindow w;
  w.i0 = std::max<std::int64_t>(0, g.ph - oh * g.sh);
  w.i1 = std::min<std::int64_t>(g.kh, g.h + g.ph - oh * g.sh);
  w.j0 = std::max<std::int64_t>(0, g.pw - ow * g.sw);
  w.j1 = std::min<std::int64_t>(g.kw, g.w + g.pw - ow * g.sw);
  w.valid = w.i0 < w.i1 && w.j0 < w.j1;  // else no valid tap (excluded by the padding rule)
  w.in = ((n * g.h + oh * g.sh - g.ph) * g.w + ow * g.sw - g.pw) * g.c;
  w.out = (r * g.wo() + ow) * g.c;
  return w;
}

// One 16-channel block of a window by the definition's select, tap by tap: take b iff (b > a or
// b is NaN) and a is not NaN (pool_ref.cc). The fast loops below redo a block with it only when a
// later tap held a NaN.
inline __m512 max_block_exact(const float* base, std::int64_t w, std::int64_t cs, const PoolWindow& pw,
                              std::int64_t c, __mmask16 m) {
  const float* p0 = base + (pw.i0 * w + pw.j0) * cs + c;
  __m512 a = _mm512_maskz_loadu_ps(m, p0);
  for (std::int64_t i = pw.i0; i < pw.i1; ++i) {
    for (std::int64_t j = pw.j0; j < pw.j1; ++j) {
      const float* pb = base + (i * w + j) * cs + c;
      if (pb == p0) continue;
      const __m512 b = _mm512_maskz_loadu_ps(m, pb);
      const __mmask16 take = static_cast<__mmask16>(
          (_mm512_cmp_ps_mask(b, a, _CMP_GT_OQ) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q)) &
          ~_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q));
      a = _mm512_mask_mov_ps(a, take, b);
    }
  }
  return a;
}

}  // namespace

void maxpool_f32_rows__avx512(const float* x, const ops::PoolGeom& g, float* out, std::int64_t r0,
                              std::int64_t r1) {
  for (std::int64_t r = r0; r < r1; ++r) {
    for (std::int64_t ow = 0; ow < g.wo(); ++ow) {
      const PoolWindow pw = pool_window(g, r, ow);
      if (!pw.valid) continue;
      float* dst = out + pw.out;
      const float* base = x + pw.in;
      const std::int64_t i0 = pw.i0, i1 = pw.i1, j0 = pw.j0, j1 = pw.j1;
      // Taps in row-major order, padded ones skipped. vmaxps(b, a) is "b > a ? b : a", a kept
      // when either is NaN: the definition's first maximum, and a NaN in a (the first tap)
      // stays; only a NaN in a later tap needs the definition's "take it", so such taps are
      // noted and the block redone by max_block_exact (never on finite data). One vmaxps per
      // tap and channel block, 4 blocks side by side: the three-compare select per tap made
      // this loop latency-bound (0.30 -> 0.08 ms for the 112x112x64 ResNet-18 stem pool).
      std::int64_t c = 0;
      for (; c + 64 <= g.c; c += 64) {
        __m512 a[4];
        __mmask16 late_nan = 0;
        const float* p0 = base + (i0 * g.w + j0) * g.c + c;
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) a[k] = _mm512_loadu_ps(p0 + 16 * k);
        for (std::int64_t i = i0; i < i1; ++i) {
          for (std::int64_t j = j0; j < j1; ++j) {
            const float* pb = base + (i * g.w + j) * g.c + c;
            if (pb == p0) continue;
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
              const __m512 v = _mm512_loadu_ps(pb + 16 * k);
              late_nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
              a[k] = _mm512_max_ps(v, a[k]);
            }
          }
        }
        if (late_nan) [[unlikely]] {
#pragma GCC unroll 4
          for (int k = 0; k < 4; ++k) a[k] = max_block_exact(base, g.w, g.c, pw, c + 16 * k, 0xFFFF);
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) _mm512_storeu_ps(dst + c + 16 * k, a[k]);
      }
      for (; c < g.c; c += 16) {
        const __mmask16 m = g.c - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (g.c - c)) - 1u);
        const float* p0 = base + (i0 * g.w + j0) * g.c + c;
        __m512 a = _mm512_maskz_loadu_ps(m, p0);
        __mmask16 late_nan = 0;
        for (std::int64_t i = i0; i < i1; ++i) {
          for (std::int64_t j = j0; j < j1; ++j) {
            const float* pb = base + (i * g.w + j) * g.c + c;
            if (pb == p0) continue;
            const __m512 v = _mm512_maskz_loadu_ps(m, pb);
            late_nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            a = _mm512_max_ps(v, a);
          }
        }
        if (late_nan) [[unlikely]] a = max_block_exact(base, g.w, g.c, pw, c, m);
        _mm512_mask_storeu_ps(dst + c, m, a);
      }
    }
  }
}

void maxpool_i32_rows__avx512(const std::int32_t* x, const ops::PoolGeom& g, std::int32_t* out,
                              std::int64_t r0, std::int64_t r1) {
  for (std::int64_t r = r0; r < r1; ++r) {
    for (std::int64_t ow = 0; ow < g.wo(); ++ow) {
      const PoolWindow pw = pool_window(g, r, ow);
      if (!pw.valid) continue;
      std::int32_t* dst = out + pw.out;
      const std::int32_t* base = x + pw.in;
      const std::int64_t i0 = pw.i0, i1 = pw.i1, j0 = pw.j0, j1 = pw.j1;
      for (std::int64_t c = 0; c < g.c; c += 16) {
        const __mmask16 m = g.c - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (g.c - c)) - 1u);
        // the maximum over the valid taps (padded ones skipped; integers: order-free)
        __m512i a = _mm512_maskz_loadu_epi32(m, base + (i0 * g.w + j0) * g.c + c);
        for (std::int64_t i = i0; i < i1; ++i)
          for (std::int64_t j = j0; j < j1; ++j)
            a = _mm512_max_epi32(a, _mm512_maskz_loadu_epi32(m, base + (i * g.w + j) * g.c + c));
        _mm512_mask_storeu_epi32(dst + c, m, a);
      }
    }
  }
}

}  // namespace bitflow::avx512

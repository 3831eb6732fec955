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

void float_stream_rows__avx512(const FloatStream& fs, const float* thr, const std::uint32_t* pos,
                               const void* const* xs, std::int64_t r0, std::int64_t r1, float* y,
                               std::uint64_t* bits) {
  const std::int64_t o = fs.channels(), nw = words_for(o);
  const std::size_t n_ops = fs.operand_count();
  const bool keep = fs.keeps_y(), th = thr != nullptr;
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

void maxpool_f32_rows__avx512(const float* x, const ops::PoolGeom& g, float* out, std::int64_t r0,
                              std::int64_t r1) {
  const std::int64_t ho = g.ho(), wo = g.wo();
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::int64_t n = r / ho, oh = r % ho;
    const std::int64_t i0 = std::max<std::int64_t>(0, g.ph - oh * g.sh);
    const std::int64_t i1 = std::min<std::int64_t>(g.kh, g.h + g.ph - oh * g.sh);
    for (std::int64_t ow = 0; ow < wo; ++ow) {
      float* dst = out + ((n * ho + oh) * wo + ow) * g.c;
      const std::int64_t j0 = std::max<std::int64_t>(0, g.pw - ow * g.sw);
      const std::int64_t j1 = std::min<std::int64_t>(g.kw, g.w + g.pw - ow * g.sw);
      if (i0 >= i1 || j0 >= j1) continue;  // no valid tap (excluded by the padding rule)
      const float* base = x + ((n * g.h + oh * g.sh - g.ph) * g.w + ow * g.sw - g.pw) * g.c;
      for (std::int64_t c = 0; c < g.c; c += 16) {
        const __mmask16 m = g.c - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (g.c - c)) - 1u);
        // taps in row-major order, padded ones skipped: the first maximum, a NaN once seen stays
        __m512 a = _mm512_maskz_loadu_ps(m, base + (i0 * g.w + j0) * g.c + c);
        bool first = true;
        for (std::int64_t i = i0; i < i1; ++i) {
          for (std::int64_t j = j0; j < j1; ++j) {
            if (first) {
              first = false;
              continue;
            }
            const __m512 b = _mm512_maskz_loadu_ps(m, base + (i * g.w + j) * g.c + c);
            const __mmask16 take = static_cast<__mmask16>(
                (_mm512_cmp_ps_mask(b, a, _CMP_GT_OQ) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q)) &
                ~_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q));
            a = _mm512_mask_mov_ps(a, take, b);
          }
        }
        _mm512_mask_storeu_ps(dst + c, m, a);
      }
    }
  }
}

}  // namespace bitflow::avx512

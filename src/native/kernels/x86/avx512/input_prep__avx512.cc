// input_prep__avx512: the fixed-point first layer's input quantization (quantize_u8_nhwc,
// bitflow/ops.h) for 3-channel images, 16 pixels a step: the three channel runs of an NCHW
// row are quantized with the portable code's float32 operations (x * 255 rounded once,
// min(v, 255) then max(., 0) with the same NaN and -0.0 outcomes as its compares, rounding
// half to even by (v + 2^23) - 2^23), and the bytes are interleaved to NHWC in registers:
// each int32 lane takes its pixel's 3 bytes (c0 | c1 << 8 | c2 << 16), a byte shuffle packs
// the 4 pixels of a 128-bit lane into its first 12 bytes, and 12-byte masked stores write
// them. Equal to the portable loop byte for byte. Built with -mavx512f -mavx512bw -mavx512vl.
#include <immintrin.h>

#include <cstdint>

#include "bitflow/common.h"

namespace bitflow::avx512 {

std::uint32_t quantize_u8_rows_c3__avx512(const float* x, std::int64_t h, std::int64_t w,
                                          std::int64_t r0, std::int64_t r1, std::uint8_t* out) {
  const __m512 k255 = _mm512_set1_ps(255.0f), zero = _mm512_setzero_ps();
  const __m512 magic = _mm512_set1_ps(8388608.0f);  // 2^23
  const __m512i expo = _mm512_set1_epi32(0x7f800000);
  // per 128-bit lane: bytes 0-2 of each of its 4 int32 lanes, in order; the rest unused
  const __m512i pack = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
  __mmask16 bad = 0;
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::int64_t b = r / h, i = r % h;
    const float* src[3];
    for (int ch = 0; ch < 3; ++ch) src[ch] = x + ((b * 3 + ch) * h + i) * w;
    std::uint8_t* dst = out + r * w * 3;
    for (std::int64_t j = 0; j < w; j += 16) {
      const std::int64_t left = w - j;
      const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
      __m512i px = _mm512_setzero_si512();
      for (int ch = 0; ch < 3; ++ch) {
        const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, src[ch] + j), k255);
        bad |= _mm512_mask_cmpeq_epi32_mask(m, _mm512_and_si512(_mm512_castps_si512(v), expo), expo);
        const __m512 cl = _mm512_max_ps(_mm512_min_ps(v, k255), zero);  // v < 255 ? v : 255, then > 0
        const __m512 rv = _mm512_sub_ps(_mm512_add_ps(cl, magic), magic);
        px = _mm512_or_si512(px, _mm512_slli_epi32(_mm512_cvttps_epi32(rv), 8 * ch));
      }
      const __m512i packed = _mm512_shuffle_epi8(px, pack);
      // 12 bytes per 128-bit lane, lane L holding pixels j + 4L .. j + 4L + 3
      for (int lane = 0; lane < 4; ++lane) {
        const std::int64_t pix = left - 4 * lane;
        if (pix <= 0) break;
        const __mmask16 bm = static_cast<__mmask16>(pix >= 4 ? 0x0FFF : (1u << (3 * pix)) - 1u);
        __m128i v;
        switch (lane) {
          case 0: v = _mm512_castsi512_si128(packed); break;
          case 1: v = _mm512_extracti32x4_epi32(packed, 1); break;
          case 2: v = _mm512_extracti32x4_epi32(packed, 2); break;
          default: v = _mm512_extracti32x4_epi32(packed, 3); break;
        }
        _mm_mask_storeu_epi8(dst + 3 * (j + 4 * lane), bm, v);
      }
    }
  }
  return bad != 0 ? 1u : 0u;
}

}  // namespace bitflow::avx512
